"""Run a detector over image files: decode in a DataLoader, predict in batches, boxes in original pixels.

Written by hand: the file dataset (decode with `boxloop.images.load_rgb`, resize so the longer side
is `image_size`, hand uint8 to the main process so the host-to-device copy is 4x smaller and the
float conversion runs on the device), mapping boxes from the resized tensor back to the original
image, and halving the batch when the GPU runs out of memory. torch's DataLoader overlaps decoding
(in workers) with the model; the detector's own `predict` does batching, NMS and postprocessing.

The Detector protocol returns boxes in the coordinates of the tensor it was given (it may resize
internally but maps back); `Detections.image_size` says which frame that is, and we scale from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar, overload

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from boxloop.images import resized_size
from boxloop.detectors.base import Detector
from boxloop.predict.feature_cache import FeatureCache
from boxloop.structures import Boxes, Detections

__all__ = ["predict_paths", "resolve_device", "to_original", "model_device"]

log = logging.getLogger("boxloop")
K = TypeVar("K")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without CUDA is an error, not a silent cpu run."""
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                               "use --device cpu or auto, or install a CUDA build of torch")
        return torch.device(device if isinstance(device, torch.device) else name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def model_device(detector: Detector) -> torch.device:
    """The device of the detector's first parameter (cpu for a parameterless stand-in)."""
    params = getattr(detector, "parameters", None)
    if params is None:
        return torch.device("cpu")
    for p in params():
        return p.device
    return torch.device("cpu")


class _FileDataset(Dataset):
    """(uint8 CHW resized image, (orig_w, orig_h), index) or (None, error text, index) when decoding fails."""

    def __init__(self, paths: Sequence[Path], image_size: int, skip_errors: bool) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, tuple[int, int] | str, int]:
        from boxloop.images import ImageError, load_rgb

        try:
            pil = load_rgb(self.paths[index], reduce_to=self.image_size)
        except ImageError as e:
            if not self.skip_errors:
                raise
            return None, e.problem, index
        image = F.pil_to_tensor(pil)
        w, h = pil.info.get("original_size", pil.size)
        image = F.resize(image, list(resized_size(w, h, self.image_size)), antialias=True)
        return image, (w, h), index


def _collate(batch: list) -> list:
    return batch


def to_original(det: Detections, original_size: tuple[int, int]) -> Detections:
    """Scale boxes from the frame the detector answered in (det.image_size) to `original_size` (w, h)."""
    fw, fh = det.image_size
    ow, oh = original_size
    scale = np.array([ow / fw, oh / fh, ow / fw, oh / fh], dtype=np.float64)
    boxes = Boxes(det.boxes.xyxy * scale, (ow, oh)).clip()
    return Detections(boxes=boxes, labels=det.labels, scores=det.scores, class_probs=det.class_probs,
                      loc_quality=det.loc_quality, features=det.features)


def predict_batch(detector: Detector, images: list[Tensor], score_threshold: float,
                   state: dict[str, int]) -> list[Detections]:
    """Predict in chunks of state['chunk']; on CUDA out-of-memory halve the chunk and retry."""
    out: list[Detections] = []
    i = 0
    while i < len(images):
        chunk = images[i:i + state["chunk"]]
        try:
            out.extend(detector.predict(chunk, score_threshold=score_threshold))
        except torch.OutOfMemoryError:
            if state["chunk"] == 1:
                raise RuntimeError("out of GPU memory predicting a single image; lower image_size or use the cpu")
            state["chunk"] = max(1, state["chunk"] // 2)
            torch.cuda.empty_cache()
            log.warning("out of GPU memory in predict: batch halved to %d, retrying", state["chunk"])
            continue
        i += len(chunk)
    return out


@overload
def predict_paths(detector: Detector, paths: Sequence[str | Path], image_size: int, batch_size: int = 8,
                  device: str | torch.device | None = None, num_workers: int = 0,
                  score_threshold: float = 0.05, progress: bool = True,
                  skip_errors: bool = False, on_skip: Callable[[Path, str], None] | None = None, *,
                  keys: None = None, feature_cache: FeatureCache | None = None) -> Iterator[tuple[Path, Detections]]: ...


@overload
def predict_paths(detector: Detector, paths: Sequence[str | Path], image_size: int, batch_size: int = 8,
                  device: str | torch.device | None = None, num_workers: int = 0,
                  score_threshold: float = 0.05, progress: bool = True,
                  skip_errors: bool = False, on_skip: Callable[[Path, str], None] | None = None, *,
                  keys: Sequence[K], feature_cache: FeatureCache | None = None) -> Iterator[tuple[K, Detections]]: ...


def predict_paths(detector: Detector, paths: Sequence[str | Path], image_size: int, batch_size: int = 8,
                  device: str | torch.device | None = None, num_workers: int = 0,
                  score_threshold: float = 0.05, progress: bool = True,
                  skip_errors: bool = False, on_skip: Callable[[Path, str], None] | None = None, *,
                  keys: Sequence[Any] | None = None,
                  feature_cache: FeatureCache | None = None) -> Iterator[tuple[Any, Detections]]:
    """Yield (path, Detections in the original image's pixels), in the order of `paths`; with `keys`
    (one per path, e.g. the project's image keys) (key, Detections) instead: each result names its own
    image, so a skipped image never shifts the ones after it.

    `device` None keeps the detector where it is; otherwise it is moved there. Images that fail to
    decode raise `boxloop.images.ImageError`, or with `skip_errors` are logged and left out; with
    `on_skip` they are left out and handed to it as (path, problem). Truncated images are decoded
    as far as their data goes, with a warning naming them (`boxloop.images.load_rgb`). With a
    `feature_cache` and a detector whose body is frozen, images whose body maps are cached run only the
    neck and head (boxloop.predict.cached; decoding then happens in this process).
    """
    from boxloop.outputs import progress_bar

    paths = [Path(p) for p in paths]
    names: list[Any] = paths if keys is None else list(keys)
    if len(names) != len(paths):
        raise ValueError(f"keys must name every path: {len(names)} keys for {len(paths)} paths")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None:
        dev = resolve_device(device)
        detector.to(dev)
    else:
        dev = model_device(detector)
    was_training = bool(getattr(detector, "training", False))
    if hasattr(detector, "eval"):
        detector.eval()
    files = _FileDataset(paths, image_size, skip_errors or on_skip is not None)
    bound = None
    if feature_cache is not None:
        from boxloop.predict.cached import bind, predict_cached, predict_precision

        bound = bind(feature_cache, detector, predict_precision(detector, dev))
    if bound is not None:
        def skip(path: Path, problem: str) -> None:
            if on_skip is not None:
                on_skip(path, problem)
            else:
                log.warning("skipped %s: %s", path, problem)

        bar = progress_bar(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False)
        try:
            for name, det in predict_cached(detector, bound, paths, names, image_size, batch_size, score_threshold,
                                            skip, to_original, files.__getitem__):
                yield name, det
                bar.update(1)
        finally:
            bar.close()
            feature_cache.flush()
            if was_training and hasattr(detector, "train"):
                detector.train()
        return
    loader = DataLoader(files, batch_size=batch_size,
                        shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    state = {"chunk": batch_size}
    bar = progress_bar(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False)
    try:
        for batch in loader:
            good = [b for b in batch if b[0] is not None]
            for _, err, idx in (b for b in batch if b[0] is None):
                if on_skip is not None:
                    on_skip(paths[idx], err)  # type: ignore[arg-type]
                else:
                    log.warning("skipped %s: %s", paths[idx], err)
            images = [img.to(dev, non_blocking=True).float().div_(255.0) for img, _, _ in good]
            dets = predict_batch(detector, images, score_threshold, state) if images else []
            if len(dets) != len(images):
                raise RuntimeError(f"detector returned {len(dets)} results for {len(images)} images")
            for (img, orig, idx), det in zip(good, dets):
                yield names[idx], to_original(det, orig)  # type: ignore[arg-type]
            bar.update(len(batch))
    finally:
        bar.close()
        if was_training and hasattr(detector, "train"):
            detector.train()
