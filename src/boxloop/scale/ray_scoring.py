"""Pool scoring on Ray Data: the pool sharded over actors that each hold the model, detections
streamed back to one writer. Used by `boxloop predict --workers N` and the loop's predict step.

Delegated to Ray Data: sharding the pool into blocks, the actor pool (`concurrency=N`, each actor
loads the checkpoint once), streaming results back as blocks finish, backpressure, and restarting
an actor that died and re-running the task it had in flight. Written by hand:
- the batches: each Ray row is one batch of images exactly as the single-process path would form
  it (`batch_groups`), and the actor hands that batch to `inference.predict_paths` as one detector
  batch, so every image sees the same computation and the results equal the single-process ones;
- the one writer (`store_stream`): detections stream in, an image delivered twice (a retried task)
  is stored once, each `chunk` images go to the store in one transaction, images that never came
  back are scored again (`passes`), and a rerun skips what is stored (the caller's `todo`);
- the wire format: the store's own prediction blobs (`store.detections_to_bytes`).

Actors read the images and the checkpoint by path: on a cluster the project and the images must be
at the same path on every node (a shared file system).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from boxloop.structures import Detections

if TYPE_CHECKING:
    from boxloop.store import Project

__all__ = ["RayScoring", "StreamStats", "batch_groups", "score_paths", "store_stream", "predict_pool", "score_all"]

log = logging.getLogger("boxloop")


@dataclass(frozen=True)
class RayScoring:
    """Where pool scoring runs: `workers` actors on a local Ray, or on the cluster at `address`.

    `threads`: torch threads (and Ray CPUs) per actor; `batches_per_task`: detector batches per Ray
    task (larger: less overhead, coarser retry and streaming); `gpus`: GPUs per actor (0: CPU)."""

    workers: int = 2
    address: str | None = None
    threads: int = 1
    batches_per_task: int = 4
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1 or self.batches_per_task < 1:
            raise ValueError(f"workers, threads and batches_per_task must be >= 1, got {self}")

    @classmethod
    def from_cli(cls, workers: int | None, address: str | None, device: str = "auto") -> RayScoring | None:
        """None (score in this process) unless --workers or --ray-address; --device cuda: a GPU per actor."""
        if workers is None and address is None:
            return None
        return cls(workers=workers or 2, address=address, gpus=1.0 if device == "cuda" else 0.0)

    def score_all(self, checkpoint: str | Path | None, paths: Sequence[str | Path], image_size: int, batch_size: int,
                  score_threshold: float, device: str = "cpu",
                  on_skip: Callable[[Path, str], None] | None = None) -> list[tuple[Path, Detections]]:
        """`score_all` on this Ray: how predict.files asks for it without importing scale/."""
        return score_all(checkpoint, paths, image_size, batch_size, score_threshold, self, device, on_skip)


@dataclass
class StreamStats:
    """What the writer saw: stored images, deliveries of an already stored image, extra passes."""

    stored: int = 0
    duplicates: int = 0
    passes: int = 0
    errors: int = 0


def batch_groups(n: int, batch_size: int, chunk: int | None = None) -> list[list[int]]:
    """Indices 0..n-1 in detector batches: `batch_size` consecutive images, restarting at every
    `chunk` (the single-process predict step predicts chunk by chunk)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    step = chunk or n or 1
    return [list(range(j, min(j + batch_size, c + step, n)))
            for c in range(0, n, step) for j in range(c, min(c + step, n), batch_size)]


class _Scorer:
    """A Ray Data actor: the detector loaded once, then one detector batch per row."""

    def __init__(self, checkpoint: str, image_size: int, score_threshold: float, device: str, threads: int) -> None:
        import torch

        from boxloop.train.checkpoints import load_detector

        torch.set_num_threads(threads)
        logging.getLogger("boxloop").setLevel(logging.ERROR)  # skipped images are reported by the driver
        self.detector, _, _ = load_detector(checkpoint, device=device)
        self.image_size, self.score_threshold = image_size, score_threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from boxloop.images import ImageError, TruncatedImageWarning, load_rgb
        from boxloop.predict.inference import predict_paths
        from boxloop.store import detections_to_bytes

        index: list[int] = []
        blobs: list[bytes] = []
        errors: list[str] = []
        notes: list[str] = []
        for idx, paths in zip(batch["index"], batch["paths"]):
            idx, paths = [int(i) for i in idx], [str(p) for p in paths]
            with warnings.catch_warnings(record=True) as caught:  # truncated images: the driver warns
                warnings.simplefilter("always", TruncatedImageWarning)
                got = {str(p): d for p, d in predict_paths(self.detector, paths, self.image_size,
                                                           batch_size=len(paths), score_threshold=self.score_threshold,
                                                           progress=False, skip_errors=True)}
            said = [str(w.message) for w in caught if issubclass(w.category, TruncatedImageWarning)]
            for w in caught:
                if not issubclass(w.category, TruncatedImageWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            for i, p in zip(idx, paths):
                index.append(i)
                notes.append("\n".join(m for m in said if m.startswith(p + ":")))
                if p in got:
                    blobs.append(detections_to_bytes(got[p]))
                    errors.append("")
                else:  # predict_paths left it out: say why
                    try:
                        load_rgb(p)
                        msg = "not predicted\0run the command again"
                    except ImageError as e:
                        msg = f"{e.problem}\0{e.hint}"
                    blobs.append(b"")
                    errors.append(msg)
        return {"index": np.asarray(index, np.int64), "blob": np.asarray(blobs, dtype=object),
                "error": np.asarray(errors, dtype=object), "warning": np.asarray(notes, dtype=object)}


def score_paths(checkpoint: str | Path, paths: Sequence[str | Path], groups: Sequence[Sequence[int]], image_size: int,
                score_threshold: float, scoring: RayScoring, device: str = "cpu"
                ) -> Iterator[tuple[int, Detections | str]]:
    """Yield (index into `paths`, Detections in original pixels, or "problem\0hint" of an image that
    could not be read) as the actors finish, in no particular order; an index may come twice when
    Ray re-ran a task. Starts (and ends) a local Ray unless one is running."""
    from boxloop.images import TruncatedImageWarning
    from boxloop.scale.ray_session import ray_session, unwrap_remote_error
    from boxloop.store import detections_from_bytes

    if not groups:
        return
    rows = [{"index": list(g), "paths": [str(paths[i]) for i in g]} for g in groups]
    with ray_session(scoring.workers if scoring.address is None else None, scoring.address) as ray:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO/WARNING lines are progress chatter
        # at least a block per actor, else some actors idle on a small pool
        blocks = max(min(len(rows), scoring.workers), -(-len(rows) // scoring.batches_per_task))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        scored = ds.map_batches(
            _Scorer, batch_size=scoring.batches_per_task, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=scoring.workers), num_cpus=scoring.threads,
            num_gpus=scoring.gpus or None,
            fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).resolve()), "image_size": image_size,
                                   "score_threshold": score_threshold, "device": device, "threads": scoring.threads})
        warned: set[int] = set()
        try:
            for out in scored.iter_batches(batch_size=None, batch_format="numpy"):
                for i, blob, err, note in zip(out["index"], out["blob"], out["error"], out["warning"]):
                    if note and int(i) not in warned:  # as the single-process path warns (a retry: once)
                        warned.add(int(i))
                        for line in str(note).splitlines():
                            warnings.warn(line, TruncatedImageWarning, stacklevel=2)
                    yield int(i), (str(err) if err else detections_from_bytes(bytes(blob)))
        except Exception as e:
            cause = unwrap_remote_error(e)
            if cause is e:
                raise
            raise cause from None


def store_stream(project: Project, round_id: int, keys: Sequence[str],
                 stream: Iterator[tuple[int, Detections | str]], chunk: int = 256, skip_errors: bool = False,
                 model: str = "", stats: StreamStats | None = None,
                 on_skip: Callable[[str, str], None] | None = None) -> StreamStats:
    """The one writer: store streamed detections of `keys` (indices into it), `chunk` images per
    transaction; an image delivered twice is stored once. An unreadable image raises ImageError
    (after storing what came before it), or with `skip_errors` is logged and left out, or with
    `on_skip` is left out and handed to it as (key, problem) (what it raises stops the writer, after
    storing what came before)."""
    from boxloop.images import ImageError

    stats = stats or StreamStats()
    seen: set[int] = set()
    buf: dict[str, Detections] = {}

    def flush() -> None:
        nonlocal buf
        if buf:
            project.save_predictions(round_id, buf, model=model)
            stats.stored += len(buf)
            buf = {}

    for i, det in stream:
        if i in seen:
            stats.duplicates += 1
            continue
        seen.add(i)
        if isinstance(det, str):
            stats.errors += 1
            problem, _, hint = det.partition("\0")
            if on_skip is not None:
                try:
                    on_skip(keys[i], problem)
                except BaseException:
                    flush()
                    raise
                continue
            if not skip_errors:
                flush()
                raise ImageError(keys[i], problem, hint)
            log.warning("skipped %s: %s", keys[i], problem)
            continue
        buf[keys[i]] = det
        if len(buf) >= chunk:
            flush()
    flush()
    return stats


def predict_pool(project: Project, round_id: int, keys: Sequence[str], checkpoint: str | Path, image_size: int,
                 batch_size: int, score_threshold: float, scoring: RayScoring, device: str = "cpu",
                 group_chunk: int | None = 64, write_chunk: int = 256, passes: int = 2,
                 on_skip: Callable[[str, str], None] | None = None) -> StreamStats:
    """Score `keys` (project-relative paths) on Ray and store them for `round_id`; an image the
    stream never delivered (it should not happen; Ray re-runs lost tasks) is scored again in up to
    `passes` passes, then reported. An unreadable image raises ImageError, or with `on_skip` is
    handed to it as (key, problem) and left out (not scored again)."""
    root = project.image_root
    stats = StreamStats()
    todo = list(keys)
    skipped: set[str] = set()
    if on_skip is not None:
        user_skip = on_skip

        def on_skip(key: str, problem: str) -> None:
            user_skip(key, problem)
            skipped.add(key)
    for _ in range(passes):
        if not todo:
            break
        stats.passes += 1
        groups = batch_groups(len(todo), batch_size, group_chunk)
        stream = score_paths(checkpoint, [root / k for k in todo], groups, image_size, score_threshold, scoring,
                             device)
        with closing(stream):  # an error in the writer ends the local Ray now, not at garbage collection
            store_stream(project, round_id, todo, stream, chunk=write_chunk, stats=stats, on_skip=on_skip)
        done = _stored(project, round_id, todo)
        todo = [k for k in todo if k not in done and k not in skipped]
    if todo:
        raise RuntimeError(f"{len(todo)} pool images were not scored after {passes} passes (first: {todo[0]}); "
                           "run the command again to score them")
    return stats


def _stored(project: Project, round_id: int, keys: Sequence[str]) -> set[str]:
    return project.predicted_paths(round_id).intersection(keys)


def score_all(checkpoint: str | Path | None, paths: Sequence[str | Path], image_size: int, batch_size: int,
              score_threshold: float, scoring: RayScoring, device: str = "cpu",
              on_skip: Callable[[Path, str], None] | None = None) -> list[tuple[Path, Detections]]:
    """[(path, Detections)] of every path, in order (for `boxloop predict`): batches as
    `inference.predict_paths` forms them, an image delivered twice kept once. An unreadable image
    is an ImageError, or with `on_skip` is left out and handed to it as (path, problem), in the
    order of `paths` (as `inference.predict_paths` does)."""
    from boxloop.images import ImageError

    if checkpoint is None:
        raise ValueError("scoring on Ray needs the checkpoint's path (the actors load it)")
    got: dict[int, Detections] = {}
    failed: dict[int, str] = {}
    stream = score_paths(checkpoint, paths, batch_groups(len(paths), batch_size), image_size, score_threshold,
                         scoring, device)
    with closing(stream):
        for i, det in stream:
            if isinstance(det, str):
                if on_skip is None:
                    raise ImageError(paths[i], *det.split("\0", 1))
                failed.setdefault(i, det)
            else:
                got.setdefault(i, det)
    lost = [str(paths[i]) for i in range(len(paths)) if i not in got and i not in failed]
    if lost:
        raise RuntimeError(f"{len(lost)} images came back without predictions (first: {lost[0]}); run it again")
    for i in sorted(failed):
        if on_skip is not None:
            on_skip(Path(paths[i]), failed[i].split("\0", 1)[0])
    return [(Path(paths[i]), got[i]) for i in range(len(paths)) if i in got]
