"""LoopConfig: everything one round of the loop needs, checked when made and saved with every round.

Written by hand: the settings in five frozen groups (the detector, its training, prediction over the
pool, selection, pseudo-labels) and their defaults (the seeds' values, see docs/methods.md), the
checks of their values (each in the group that owns the field), the round's TrainConfig and
DetectorSpec derived from them (the detector's optimiser and learning rate from
`defaults.training_recipe`). The routing of flat setting names to their group (`make`, `with_`) and
the nested and flat layouts (`from_dict` reads the flat configs projects saved before the groups:
every round row stores its config) are GroupedSettings'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from boxloop.defaults import DETECTOR
from boxloop.grouped_settings import GroupedSettings

VAL_EVERY_EPOCHS = 2  # a round trained in epochs validates every this many

if TYPE_CHECKING:
    from boxloop.detectors import DetectorSpec
    from boxloop.train.config import TrainConfig


@dataclass(frozen=True)
class DetectorSettings:
    """The detector every round builds."""

    model: str = DETECTOR
    backbone: str = "efficientnet_lite0"
    pretrained_backbone: bool = True
    # more builder options, e.g. {"fpn_channels": 32, "head_convs": 1} or {"box_head": "interval"}
    detector_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSettings:
    """How a round trains (see train.TrainConfig); epochs per round."""

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
    # None: every VAL_EVERY_EPOCHS epochs, or ten times in a round counted in steps (train.step_val_every: every 2
    # steps would be a validation per step or two on a handful of images); a number: TrainConfig's unit
    val_every: int | None = None

    def __post_init__(self) -> None:
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a finite number > 0, got {self.lr}")
        for name in ("image_size", "batch_size", "epochs", "steps", "warm_steps", "val_every"):
            v = getattr(self, name)
            if v is not None and v < 1:  # 0 is no size and no schedule, never "the default"
                raise ValueError(f"{name.replace('_', ' ')} must be >= 1, got {v}")


@dataclass(frozen=True)
class PredictionSettings:
    """Prediction over the pool."""

    score_threshold: float = 0.05
    predict_batch_size: int = 8


@dataclass(frozen=True)
class SelectionSettings:
    """What a round asks the annotator about, and how the answers are split and shown."""

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

    def __post_init__(self) -> None:
        if self.unit not in ("images", "boxes"):
            raise ValueError(f"unit must be 'images' or 'boxes', got {self.unit!r}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if not 0 <= self.empty_share <= 1:  # NaN fails too
            raise ValueError(f"empty share must lie in [0, 1] (a share of the budget), got {self.empty_share}")
        from boxloop.strategies import STRATEGIES

        if self.strategy not in STRATEGIES[self.unit]:
            raise ValueError(f"unknown strategy {self.strategy!r} for unit {self.unit!r}; choose one of "
                             f"{', '.join(STRATEGIES[self.unit])}")


@dataclass(frozen=True)
class PseudoSettings:
    """The semi-supervised step after the oracle, and the guard that keeps pseudo-labels only when they help."""

    semi: str | None = None  # None | "autolabel" | "certainty"
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
        if self.semi not in (None, "autolabel", "certainty"):
            raise ValueError(f"semi must be None, 'autolabel' or 'certainty', got {self.semi!r}")


@dataclass(frozen=True)
class LoopConfig(GroupedSettings):
    """Everything one round needs. Saved with every round (the resolved config of the run). `make`,
    `with_`, `to_dict`, `from_dict`: see GroupedSettings."""

    GROUPS: ClassVar[dict[str, type]] = {"detector": DetectorSettings, "training": TrainingSettings,
                                         "prediction": PredictionSettings, "selection": SelectionSettings,
                                         "pseudo": PseudoSettings}

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    prediction: PredictionSettings = field(default_factory=PredictionSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    pseudo: PseudoSettings = field(default_factory=PseudoSettings)

    def train_config(self, round_id: int, warm: bool = False) -> TrainConfig:
        """The round's TrainConfig; `warm`: a round that starts from the previous round's model."""
        from boxloop.train.config import TrainConfig, short_warmup, step_val_every

        from boxloop.defaults import training_recipe

        t = self.training
        optimizer, lr = training_recipe(self.detector.model, t.optimizer, t.lr)
        epochs, steps, min_steps = t.epochs, t.steps, t.min_steps if t.steps is None else None
        if warm and t.warm_steps is not None:
            epochs, steps, min_steps = None, t.warm_steps, None
        return TrainConfig(epochs=epochs, steps=steps, min_steps=min_steps,
                           batch_size=t.batch_size,
                           image_size=t.image_size, lr=lr, optimizer=optimizer,
                           device=t.device, seed=t.seed + 1000 * round_id,
                           val_every=t.val_every or (VAL_EVERY_EPOCHS if steps is None else step_val_every(steps)),
                           warmup_steps=short_warmup(steps))

    def detector_spec(self) -> DetectorSpec:
        """The detector every round builds; certainty pseudo-labels (CertaintySSOD) need localization quality."""
        from boxloop.detectors import DetectorSpec

        d = self.detector
        return DetectorSpec.sized(d.model, d.backbone, d.pretrained_backbone, self.training.image_size,
                                  d.detector_options, loc_quality=self.pseudo.semi == "certainty")
