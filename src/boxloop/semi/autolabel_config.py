"""AutolabelConfig: the settings of one TSODA run (autolabel.py), checked when made and stored with the run.

Written by hand: the settings in three frozen groups (the detector: loop_config.DetectorSettings; the
TSODA schedule and threshold; training) with the defaults `autolabel` always had, the checks of their
values (each in the group that owns the field, with the messages `autolabel` always gave), and
`resolved`: the config a run stores (the step schedule scaled to the project, the detector's learning
rate and optimizer, the initial checkpoint's absolute path). The routing of flat setting names to
their group (`make`, `with_`) and the nested and flat layouts (`from_dict`: a run stored flat before
the groups still resumes) are GroupedSettings', shared with LoopConfig.

Not the loop's TrainingSettings: autolabel trains in steps with `warm_start` on and `val_every` a
tenth of the steps by default (the loop: epochs, no warm start, every 2), so its training group is its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from boxloop.grouped_settings import GroupedSettings
from boxloop.semi import pseudo
from boxloop.loop.config import DetectorSettings

__all__ = ["default_steps", "AutolabelConfig", "AutolabelTraining", "TsodaSettings"]


def default_steps(num_images: int, batch_size: int) -> tuple[int, int, int]:
    """TSODA's (first, increment, maximum) = (2,500, 1,500, 8,500) steps scaled by
    `pseudo.tsoda_scale(num_images, batch_size)`: the same number of passes over the data as the seed's
    1,100 images at (an assumed) batch 24. E.g. 364 images at batch 8: (2,482, 1,489, 8,438)."""
    scale = pseudo.tsoda_scale(max(1, num_images), batch_size)
    return (max(1, int(round(2500 * scale))), max(0, int(round(1500 * scale))),
            max(1, int(round(8500 * scale))))


@dataclass(frozen=True)
class TsodaSettings:
    """TSODA's threshold and schedule. Steps None: TSODA's 2,500/1,500/8,500 scaled to the project
    (default_steps); `iterations` None: until the pool is empty."""

    threshold: float | str = 0.8  # a score in (0, 1), or "auto": from validation precision
    target_precision: float = 0.9  # threshold "auto": the validation precision to reach
    iterations: int | None = None
    steps_first: int | None = None
    steps_increment: int | None = None
    steps_max: int | None = None
    train_ratio: float = 0.8  # of each iteration's new images; the rest form the pseudo test share
    warm_start: bool = True  # iteration i starts from iteration i-1's best weights
    initial_checkpoint: str | None = None  # iteration 1 uses this model instead of training one

    def __post_init__(self) -> None:

        threshold = self.threshold
        if isinstance(threshold, str) and threshold.strip().lower() == "auto":
            object.__setattr__(self, "threshold", "auto")
        else:
            thr = float(threshold)
            if not (0.0 < thr < 1.0) or math.isnan(thr):
                raise ValueError(f"threshold must lie strictly between 0 and 1 (it is compared with detection scores), "
                                 f"or be 'auto'; got {threshold!r}")
            object.__setattr__(self, "threshold", thr)
        pseudo.check_probability(self.target_precision, "target_precision")
        if self.initial_checkpoint is not None:
            object.__setattr__(self, "initial_checkpoint", str(self.initial_checkpoint))
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be >= 1 (or None: until the pool is empty), got {self.iterations}")
        if not (0.0 <= float(self.train_ratio) <= 1.0):
            raise ValueError(f"train_ratio must lie in [0, 1], got {self.train_ratio!r}")
        for name in ("steps_first", "steps_max"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.steps_increment is not None and self.steps_increment < 0:
            raise ValueError(f"steps_increment must be >= 0, got {self.steps_increment}")


@dataclass(frozen=True)
class AutolabelTraining:
    """How each iteration trains. `lr`/`optimizer` None: the detector's recipe
    (defaults.training_recipe; another optimizer without `lr`: 0.01 for SGD, else 0.001, as LoopConfig);
    `val_every` None: a tenth of the iteration's steps."""

    image_size: int = 320
    batch_size: int = 8
    device: str = "auto"
    seed: int = 0
    lr: float | None = None
    optimizer: str | None = None
    val_every: int | None = None

    def __post_init__(self) -> None:
        if self.val_every is not None and self.val_every < 1:
            raise ValueError(f"val_every must be >= 1 (steps), got {self.val_every}")


@dataclass(frozen=True)
class AutolabelConfig(GroupedSettings):
    """Everything a TSODA run needs; its `resolved` form is stored with the run and compared on resume.
    `make`, `with_`, `to_dict`, `flat`, `from_dict`: see GroupedSettings (a run stored before
    `target_precision` and `initial_checkpoint` reads back with 0.9 and None, their defaults)."""

    GROUPS: ClassVar[dict[str, type]] = {"detector": DetectorSettings, "tsoda": TsodaSettings,
                                         "training": AutolabelTraining}

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    tsoda: TsodaSettings = field(default_factory=TsodaSettings)
    training: AutolabelTraining = field(default_factory=AutolabelTraining)

    def resolved(self, num_images: int) -> AutolabelConfig:
        """The config a run on a project of `num_images` images stores: the steps TSODA's schedule
        scaled (default_steps) where not given, the detector's learning rate and optimizer
        (defaults.training_recipe) where not given, the initial checkpoint's absolute path, the detector
        options sorted by name and the numbers in their types."""
        from boxloop.defaults import training_recipe

        d, s, t = self.detector, self.tsoda, self.training
        first, inc, most = default_steps(num_images, t.batch_size)
        optimizer, lr = training_recipe(d.model, t.optimizer, t.lr)
        return AutolabelConfig(
            detector=DetectorSettings(model=d.model, backbone=d.backbone, pretrained_backbone=bool(d.pretrained_backbone),
                                      detector_options=dict(sorted((d.detector_options or {}).items()))),
            tsoda=TsodaSettings(
                threshold=s.threshold, target_precision=float(s.target_precision), iterations=s.iterations,
                steps_first=int(s.steps_first) if s.steps_first is not None else first,
                steps_increment=int(s.steps_increment) if s.steps_increment is not None else inc,
                steps_max=int(s.steps_max) if s.steps_max is not None else most,
                train_ratio=float(s.train_ratio), warm_start=bool(s.warm_start),
                initial_checkpoint=None if s.initial_checkpoint is None else str(Path(s.initial_checkpoint).resolve())),
            training=AutolabelTraining(
                image_size=int(t.image_size), batch_size=int(t.batch_size), device=t.device, seed=int(t.seed),
                lr=lr, optimizer=optimizer,
                val_every=None if t.val_every is None else int(t.val_every)))

    def steps(self, iteration: int) -> int:
        """Training steps of 1-based `iteration` under a resolved config (TSODA's schedule)."""

        s = self.tsoda
        return pseudo.tsoda_schedule(iteration - 1, first=s.steps_first, increment=s.steps_increment,
                                     maximum=s.steps_max)
