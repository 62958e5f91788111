"""Checkpoints: written crash-safe (temp file, fsync, rename; never NaN weights), read with checks
that say what is wrong, and turned back into the detector they were made with.

Split out of train.py so a reader of the training loop does not wade through file handling; train
re-exports every name. torch does the (de)serialisation (`weights_only`: a checkpoint cannot run
code); written here: the checks, the messages and the crash-safe write.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

from boxloop.detectors import create_detector, saved_config
from boxloop.detectors.base import Detector
from boxloop.predict.inference import resolve_device

log = logging.getLogger("boxloop")

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "TrainingDiverged", "save_checkpoint",
           "copy_checkpoint", "load_checkpoint", "load_detector"]

CHECKPOINT_FORMAT = "boxloop-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not boxloop's, or made for other classes/model."""


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN or infinite (such weights are never saved)."""


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file beside it, fsync, rename: never a half-written file, never NaN weights."""
    if bad := [k for k, v in (obj.get("model") or {}).items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise TrainingDiverged(f"training diverged: {len(bad)} of {len(obj['model'])} weight tensors hold NaN or inf "
                               f"({bad[0]}, ...); {Path(path).name} was not saved. Lower the learning rate and train again")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write (full disk, ...) as a RuntimeError raised from the OSError
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, OSError) and cause.errno and not cause.filename:
            raise OSError(cause.errno, f"cannot save a checkpoint: {os.strerror(cause.errno)}", str(path)) from e
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename is done either way
    finally:
        os.close(dir_fd)


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint beside `dst`, fsync, rename: a full disk or a kill never leaves a truncated `dst`."""
    import shutil

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".copying", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        if e.errno and not e.filename:  # a failed write (full disk, ...): name the file it was for
            raise OSError(e.errno, f"cannot copy a checkpoint: {os.strerror(e.errno)}", str(dst)) from e
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a boxloop checkpoint (weights_only: a checkpoint cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated, corrupt or not a torch "
                              f"checkpoint ({type(e).__name__}: {str(e).splitlines()[0].split('. ')[0] if str(e) else ''}); "
                              "train again or use another checkpoint") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a boxloop checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
                              "boxloop only loads checkpoints written by `boxloop train` / fit()")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, this boxloop reads up to "
                              f"{CHECKPOINT_VERSION}; upgrade boxloop")
    for key in ("detector_config", "class_names", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks the {key!r} entry; the checkpoint is incomplete")
    return ckpt


def check_checkpoint_classes(path: Path, have: Sequence[str], expect: Sequence[str]) -> None:
    if list(have) != list(expect):
        raise CheckpointError(f"checkpoint {path} was trained for classes {list(have)}, but the project has "
                              f"classes {list(expect)}; train a new model for this class list")


def load_detector(path: str | Path, expect_classes: Sequence[str] | None = None,
                  device: str | torch.device = "cpu") -> tuple[Detector, list[str], dict[str, Any]]:
    """Rebuild the detector a checkpoint was made with and load its weights.

    The detector predicts its IoU through the checkpoint's quality map (boxloop.metrics.calibration); one
    saved before the map existed loads as before, unmapped, with a one-line note.
    Returns (detector in eval mode on `device`, class names, the checkpoint's other entries:
    detector_config, train_config, step, epoch, history, best_map50...).
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    class_names = list(ckpt["class_names"])
    if expect_classes is not None:
        check_checkpoint_classes(path, class_names, expect_classes)
    cfg = dict(ckpt["detector_config"])
    name, num_classes = cfg.pop("name"), cfg.pop("num_classes")
    cfg = saved_config(name, cfg)
    if "pretrained_backbone" in cfg:
        cfg["pretrained_backbone"] = False  # the checkpoint holds every weight; don't fetch any
    detector = create_detector(name, num_classes, **cfg)
    try:
        detector.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model it names ({name}, "
                              f"{ckpt['detector_config']}): {str(e).splitlines()[0]}") from e
    detector.to(resolve_device(device)).eval()
    if ckpt.get("quality_map"):
        from boxloop.metrics.calibration import QualityMap

        detector.quality_map = QualityMap.from_dict(ckpt["quality_map"])
    elif "quality_map" not in ckpt and getattr(detector, "has_loc_quality", False):
        log.warning("%s was saved before the quality map: its predicted IoU is the raw quality branch's", path)
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")}
    return detector, class_names, meta
