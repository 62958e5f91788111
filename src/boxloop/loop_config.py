"""LoopConfig: everything one round of the loop needs, checked when made and saved with every round.

Written by hand: the settings and their defaults (the seeds' values, see docs/methods.md), the
checks of their values, and the round's TrainConfig and DetectorSpec derived from them (the
detector's optimiser and learning rate from `defaults.training_recipe`). boxloop.loop, which runs
the rounds, re-exports it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boxloop.defaults import DETECTOR

if TYPE_CHECKING:
    from boxloop.detectors import DetectorSpec


@dataclass(frozen=True)
class LoopConfig:
    """Everything one round needs. Saved with every round (the resolved config of the run)."""

    # detector
    model: str = DETECTOR
    backbone: str = "efficientnet_lite0"
    pretrained_backbone: bool = True
    # more builder options, e.g. {"fpn_channels": 32, "head_convs": 1} or {"box_head": "interval"}
    detector_options: dict = field(default_factory=dict)
    # training (see train.TrainConfig); epochs per round
    epochs: int | None = 12
    steps: int | None = None
    min_steps: int | None = None  # with epochs: at least this many steps (few-image rounds still learn)
    # warm start: a round after the first starts from the previous round's model and trains
    # `warm_steps` steps (None: the same schedule as a round from scratch)
    warm_start: bool = False
    warm_steps: int | None = None
    image_size: int = 320
    batch_size: int = 8
    lr: float | None = None  # None: the detector's recipe (defaults.training_recipe)
    optimizer: str | None = None
    device: str = "auto"
    seed: int = 0
    val_every: int = 2
    # prediction over the pool
    score_threshold: float = 0.05
    predict_batch_size: int = 8
    # selection
    strategy: str = "localization_aware"
    unit: str = "images"  # images | boxes
    budget: int = 20  # per round, images or boxes
    empty_share: float = 0.0
    t_d: float = 0.05  # box pool threshold (FineGrainedAL)
    lambda_d: float = 0.5  # weight of unchecked predicted boxes (FineGrainedAL eq. 3)
    # unchecked predicted boxes train as noisy labels from the lowest score at which the round's model's
    # validation detections are at least this precise (0.5: a noisy box is more often right than wrong);
    # None: every box of the box pool (score >= t_d), as FineGrainedAL does
    noisy_precision: float | None = 0.5
    take_all_last: bool = False  # the last round takes every image left (LocAwareAL §6.6)
    display_threshold: float = 0.3  # pre-annotations shown to the annotator score at least this
    val_fraction: float = 0.2  # share of newly labelled images that go to validation
    # semi-supervised step after the oracle: None | "autolabel" | "certainty"
    semi: str | None = None
    pseudo_threshold: float = 0.8  # TSODA (TSODA)
    tau: float = 0.7  # certainty-aware (CertaintySSOD)
    gamma1: float = 0.05
    gamma2: float = 0.6
    dynamic_threshold: bool = True
    reweight: bool = True
    # never worse with pseudo-labels: a round that has them also trains without them and keeps them
    # only when a paired bootstrap over the validation images says they help (compare.py, as semi's guard)
    pseudo_guard: bool = True
    guard_level: float = 0.9

    def __post_init__(self) -> None:
        if self.unit not in ("images", "boxes"):
            raise ValueError(f"unit must be 'images' or 'boxes', got {self.unit!r}")
        if self.semi not in (None, "autolabel", "certainty"):
            raise ValueError(f"semi must be None, 'autolabel' or 'certainty', got {self.semi!r}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if not 0 <= self.empty_share <= 1:  # NaN fails too
            raise ValueError(f"empty share must lie in [0, 1] (a share of the budget), got {self.empty_share}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr}")
        from boxloop.strategies import STRATEGIES

        if self.strategy not in STRATEGIES[self.unit]:
            raise ValueError(f"unknown strategy {self.strategy!r} for unit {self.unit!r}; choose one of "
                             f"{', '.join(STRATEGIES[self.unit])}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self, round_id: int, warm: bool = False):
        """The round's TrainConfig; `warm`: a round that starts from the previous round's model."""
        from boxloop.train import TrainConfig, short_warmup

        from boxloop.defaults import training_recipe

        optimizer, lr = training_recipe(self.model)
        if self.optimizer is not None and self.optimizer != optimizer and self.lr is None:
            lr = 0.01 if self.optimizer == "sgd" else 0.001  # another optimizer: its usual rate
        epochs, steps, min_steps = self.epochs, self.steps, self.min_steps if self.steps is None else None
        if warm and self.warm_steps is not None:
            epochs, steps, min_steps = None, self.warm_steps, None
        return TrainConfig(epochs=epochs, steps=steps, min_steps=min_steps,
                           batch_size=self.batch_size,
                           image_size=self.image_size, lr=self.lr if self.lr is not None else lr,
                           optimizer=self.optimizer or optimizer,
                           device=self.device, seed=self.seed + 1000 * round_id, val_every=self.val_every,
                           warmup_steps=short_warmup(steps))

    def detector_spec(self) -> DetectorSpec:
        """The detector every round builds; certainty pseudo-labels (CertaintySSOD) need localization quality."""
        from boxloop.detectors import DetectorSpec

        return DetectorSpec.sized(self.model, self.backbone, self.pretrained_backbone, self.image_size,
                                  self.detector_options, loc_quality=self.semi == "certainty")
