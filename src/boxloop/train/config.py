"""TrainConfig: how fit() trains (steps or epochs, batch, image size, optimiser, schedule, augmentation).

Its own module so that fit (train/fit.py), the optimiser step (train/step.py) and torchrun (train/ddp.py)
share it without importing each other.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainConfig", "short_warmup", "step_val_every", "RESUME_FIXED"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Give exactly one of `epochs` or `steps`.

    `min_steps` (with epochs) is a floor on the total steps: a round with few labelled images still
    gets enough updates to learn (20 images are 3 steps an epoch). `val_every` counts epochs when
    training in epochs, steps when training in steps; `patience`
    counts evaluations without a better validation mAP50 (None: no early stopping).
    `checkpoint_every` (steps) adds saves of last.pt between the ones at each epoch end and each
    validation. `strong`: CertaintySSOD's strong photometric augmentation (data.train_transform) on every
    training image, as a semi-supervised student and its supervised baseline train. `lr_milestones` are fractions of training where the 'step' schedule multiplies the
    learning rate by `lr_gamma`.
    """

    epochs: int | None = None
    steps: int | None = None
    min_steps: int | None = None
    batch_size: int = 8
    image_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 100
    schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = (2 / 3, 8 / 9)
    lr_gamma: float = 0.1
    amp: bool = True
    grad_clip: float | None = 10.0
    val_every: int = 1
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    checkpoint_every: int | None = None
    flip: bool = True
    scale_jitter: tuple[float, float] | None = (0.8, 1.2)
    color: bool = True
    strong: bool = False
    val_score_threshold: float = 0.05

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"give exactly one of epochs or steps (got epochs={self.epochs}, steps={self.steps})")
        for name in ("epochs", "steps", "min_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name in ("batch_size", "image_size", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise ValueError("warmup_steps and num_workers must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {self.checkpoint_every}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        if self.scale_jitter is not None:
            object.__setattr__(self, "scale_jitter", tuple(float(s) for s in self.scale_jitter))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def total_steps(self, train_images: int) -> int:
        """The optimiser steps a fit() on `train_images` labelled images makes (`steps`, or `epochs`
        of batches with the `min_steps` floor)."""
        if self.steps is not None:
            return self.steps
        steps = self.epochs * math.ceil(max(1, train_images) / self.batch_size)  # type: ignore[operator]
        return max(steps, self.min_steps or 0)

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of `lr` at `step`: linear warm-up from 0.001, then the schedule."""
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return 0.001 * (1 - alpha) + alpha
        if self.schedule == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
        if self.schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr_gamma ** sum(step >= m * total_steps for m in self.lr_milestones)


def short_warmup(steps: int | None) -> int:
    """Warm-up of the loop's and auto-labelling's short runs: 5 steps per 100 planned, at least 5
    (5 when the run counts epochs), at most 100; the default 100 would be most of such a run."""
    return min(100, 5 * max(1, (steps or 20) // 20))


def step_val_every(steps: int) -> int:
    """Validation interval of the loop's and auto-labelling's runs given in steps: ten validations
    (and one at the end), whatever the data; an interval in epochs would mean one every step or two
    on a handful of images (a run counted in steps knows no epoch before it sees the data)."""
    return max(1, steps // 10)


# Fields whose change makes a resumed run a different run.
RESUME_FIXED = ("epochs", "steps", "min_steps", "batch_size", "image_size", "optimizer", "lr", "weight_decay", "momentum",
                 "warmup_steps", "schedule", "lr_milestones", "lr_gamma", "seed", "flip", "scale_jitter", "color",
                 "strong")
