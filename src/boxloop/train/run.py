"""train_detector: build a detector from its spec and train it, on this process (fit) or on N through
torchrun (ddp.fit_distributed). Above both, so that neither imports the other's caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from boxloop.detectors import DetectorSpec
from boxloop.detectors.base import Detector
from boxloop.predict.feature_cache import FeatureCache
from boxloop.train.checkpoints import load_checkpoint
from boxloop.train.config import TrainConfig
from boxloop.train.data import Sample
from boxloop.train.ddp import fit_distributed
from boxloop.train.fit import FitResult, fit

__all__ = ["train_detector"]


def train_detector(spec: DetectorSpec, class_names: Sequence[str], train: Sequence[Sample], val: Sequence[Sample],
                   config: TrainConfig, out_dir: str | Path, init: str | Path | None = None, progress: bool = True,
                   resume: bool = True, nproc: int | None = None,
                   torchrun_args: Sequence[str] = (),
                   feature_cache: FeatureCache | None = None) -> tuple[Detector, FitResult]:
    """Build `spec`'s detector and fit() it: the one place a detector is built to be trained.

    Its random layers come from `config.seed` alone, so a resumed process builds the same model.
    `init`: a checkpoint whose weights it starts from (a warm start; a resumed fit() replaces them
    by its last.pt). `nproc`: train on that many processes through torchrun (boxloop.train.ddp).
    `feature_cache`: see fit(). Returns the detector, holding the best weights, and what fit() reported."""
    detector = spec.build(len(class_names), seed=config.seed)
    if init is not None:
        detector.load_state_dict(load_checkpoint(init)["model"])
    if nproc is not None:
        result = fit_distributed(detector, train, val, class_names, config, out_dir, nproc, progress=progress,
                                 resume=resume, torchrun_args=torchrun_args)
    else:
        result = fit(detector, train, val, class_names, config, out_dir, progress=progress, resume=resume,
                     feature_cache=feature_cache)
    return detector, result
