"""fit(): train one detector, validate, keep the best checkpoint, resume after an interruption.

Written by hand: the step loop (one global step counter; epoch and position in the epoch derive
from it, so resuming at any step is exact), the seeded per-epoch order and per-item augmentation
(see data.py), the warm-up + cosine/step learning-rate factor, validation mAP every `val_every`
with early stopping, the quality map fitted on validation at the end (boxloop.metrics.calibration), atomic checkpoints holding everything a resume needs, `load_detector` with its
checks. One optimiser step (micro-batches, the batch halved on CUDA out-of-memory) is
boxloop.train.step; torch does the optimisation (SGD/AdamW, LambdaLR, autocast, GradScaler,
clip_grad_norm_), boxloop.outputs.progress_bar the progress bar (or lines in a log), boxloop.metrics.evaluate the mAP, boxloop.predict.inference the
validation predictions. With `dist`
(boxloop.train.ddp, under torchrun) the same loop runs on every rank: each takes its share of every batch
(DistributedSampler over the same seeded order), DDP averages the gradients, rank 0 validates and
writes the checkpoints.

Determinism: on CPU the same seed gives the same weights, interrupted or not (tested). On CUDA,
some kernels are nondeterministic; results agree only approximately.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from boxloop.detectors.base import Detector
from boxloop.predict.feature_cache import FeatureCache
from boxloop.metrics.calibration import MAP_MIN_PAIRS, MAP_MIN_SCORE, QualityMap, matched_pairs
from boxloop.metrics.evaluate import evaluate
from boxloop.predict.inference import predict_paths, resolve_device
from boxloop.structures import Annotation
from boxloop.train.checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError,
                                       check_checkpoint_classes, load_checkpoint, save_checkpoint)
from boxloop.train.config import RESUME_FIXED, TrainConfig
from boxloop.train.data import DetectionDataset, Sample, collate, train_transform
from boxloop.train.hooks import Hook
# fit() calls the step by this module's name for it, so a test can wrap boxloop.train.fit._train_step
from boxloop.train.step import Optimisation, build_optimisation, train_step as _train_step

if TYPE_CHECKING:
    from boxloop.train.ddp import DistContext

__all__ = ["FitResult", "fit", "epoch_order", "validation_map50", "validation_predictions", "fit_quality_map"]

log = logging.getLogger("boxloop")

@dataclass
class FitResult:
    best_checkpoint: Path
    last_checkpoint: Path
    best_map50: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    completed: bool = False  # False when stopped by `stop_after` (resume to finish)
    stopped_early: bool = False


# -- the loop -------------------------------------------------------------------------------------

def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, 7]).generate_state(1)[0]))
    return torch.randperm(n, generator=g).tolist()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _labelled(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if s.annotation is not None]


def validation_predictions(detector: Detector, samples: Sequence[Sample], class_names: Sequence[str],
                           config: TrainConfig, device: torch.device | None = None,
                           feature_cache: FeatureCache | None = None) -> dict[str, Annotation]:
    """Predictions of `detector` on `samples`, made as fit() validates (config's image size, batch and
    score threshold): what validation_map50 scores and the never-worse guards compare."""
    if device is not None:
        detector.to(device)
    return {name: det.to_annotation(name, list(class_names)) for name, det in predict_paths(
        detector, [s.path for s in samples], config.image_size, batch_size=config.batch_size, device=None,
        num_workers=config.num_workers, score_threshold=config.val_score_threshold, progress=False,
        keys=[s.name for s in samples], feature_cache=feature_cache)}


def validation_map50(detector: Detector, samples: Sequence[Sample], class_names: Sequence[str],
                     config: TrainConfig, device: torch.device, feature_cache: FeatureCache | None = None) -> float:
    """mAP50 of `detector` on labelled `samples` (validation_predictions); 0.0 when they hold no box."""
    truth = {s.name: s.annotation for s in samples}
    preds = validation_predictions(detector, samples, class_names, config, feature_cache=feature_cache)
    map50 = evaluate(truth, preds, class_names)["map50"]
    return 0.0 if map50 is None else float(map50)  # None: no ground-truth box in the validation images




@dataclass
class _Progress:
    """Where a fit() stands. Every checkpoint holds all of it, so a resume continues exactly."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_map50: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False


def _restore(detector: Detector, opt: Optimisation, config: TrainConfig, class_names: list[str],
             last_path: Path, hooks: Sequence[Hook]) -> tuple[_Progress, bool]:
    """Load last.pt after checking it comes from the same setup; (progress, whether it was complete)."""
    try:
        ckpt = load_checkpoint(last_path, map_location=opt.device)
    except CheckpointError as e:  # a damaged resume point: say how to start over instead
        raise CheckpointError(f"cannot resume training: {e}. To train from the start instead, delete "
                              f"{last_path}") from e
    check_checkpoint_classes(last_path, ckpt["class_names"], class_names)
    if ckpt["detector_config"] != getattr(detector, "config", None):
        raise CheckpointError(f"{last_path} was made for model {ckpt['detector_config']}, this fit() trains "
                              f"{getattr(detector, 'config', None)}; use another out_dir or resume=False")
    old = TrainConfig.from_dict(ckpt["train_config"])
    changed = [k for k in RESUME_FIXED if getattr(old, k) != getattr(config, k)]
    if changed:
        raise CheckpointError(f"{last_path} was trained with other settings ({', '.join(f'{k}: {getattr(old, k)} -> {getattr(config, k)}' for k in changed)}); "
                              "use another out_dir or resume=False")
    detector.load_state_dict(ckpt["model"])
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt and ckpt["scaler"]:
        opt.scaler.load_state_dict(ckpt["scaler"])
    states = ckpt.get("hooks") or [{}] * len(hooks)  # checkpoints before hooks had state: none kept any
    if len(states) != len(hooks):
        raise CheckpointError(f"{last_path} was trained with {len(states)} hooks, this fit() has {len(hooks)}; "
                              "resume with the same hooks, or use another out_dir or resume=False")
    for hook, state in zip(hooks, states):
        hook.load_state_dict(state)
    run = _Progress(int(ckpt["step"]), list(ckpt["history"]), ckpt.get("best_map50"), ckpt.get("best_step"),
                    int(ckpt.get("evals_since_best", 0)), bool(ckpt.get("stopped_early", False)))
    _set_rng_state(ckpt["rng"], opt.device)
    return run, bool(ckpt.get("complete"))


def fit(detector: Detector, train_samples: Sequence[Sample], val_samples: Sequence[Sample],
        class_names: Sequence[str], config: TrainConfig, out_dir: str | Path, progress: bool = True,
        resume: bool = True, stop_after: int | None = None, dist: DistContext | None = None,
        hooks: Hook | Sequence[Hook] = (), feature_cache: FeatureCache | None = None) -> FitResult:
    """Train `detector` in place; write out_dir/last.pt and out_dir/best.pt; return what happened.

    Samples without an annotation are skipped (unlabelled); negatives train as negatives. With
    validation samples, mAP50 every `val_every` (and at the end) picks best.pt; without, best.pt is
    the final model. On return the detector holds the best weights. With `resume` and an existing
    out_dir/last.pt from the same setup, training continues from it. `stop_after` ends this call
    after that many steps (last.pt saved), for time-sliced training and for tests of resuming.
    `dist`: this process is one rank of a torchrun job (see boxloop.train.ddp.fit_distributed). `hooks`:
    what a training method adds to the loop (train/hooks.py); their state is in every checkpoint.
    `feature_cache`: with a frozen body, train the neck and head on the body's cached maps
    (boxloop.train.cached: flip kept, scale and colour jitter dropped), and validate from them; strong
    augmentation, hooks that change the batch and torchrun keep pixels.
    """
    from boxloop.outputs import progress_bar

    hooks = [hooks] if isinstance(hooks, Hook) else list(hooks)
    out_dir = Path(out_dir)
    class_names = list(class_names)
    train = _labelled(train_samples)
    if not train:
        raise ValueError(f"nothing to train on: label some images first ({len(train_samples)} training samples "
                         "given, none has an annotation)")
    val = _labelled(val_samples)
    if getattr(detector, "num_classes", len(class_names)) != len(class_names):
        raise ValueError(f"the detector has {detector.num_classes} classes but the class list has "
                         f"{len(class_names)}: {class_names}")
    cfg = getattr(detector, "config", {}) or {}
    # torchvision's transform scales by min(min_size / shorter, max_size / longer); our longer side is
    # image_size, so it leaves images alone exactly when max_size == image_size <= min_size.
    if "min_size" in cfg and "max_size" in cfg and not (cfg["max_size"] == config.image_size <= cfg["min_size"]):
        log.warning("the detector resizes images internally (min_size=%s, max_size=%s) away from image_size=%d; "
                    "build it with min_size=max_size=image_size to train at the size you asked for",
                    cfg["min_size"], cfg.get("max_size"), config.image_size)
    device = resolve_device(config.device)
    detector.to(device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.total_steps(len(train))
    opt = build_optimisation(detector, config, device, total_steps)

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.exists():
        run, complete = _restore(detector, opt, config, class_names, last_path, hooks)
        if complete:
            return _finish(detector, device, FitResult(best_path, last_path, run.best_map50, run.history, run.step,
                                                       total_steps, True, run.stopped_early), val, class_names,
                           config, dist is None or dist.is_main)
        log.info("resuming %s at step %d of %d", last_path, run.step, total_steps)
    else:
        run = _Progress()
        torch.manual_seed(config.seed)

    bound = None
    if feature_cache is not None and dist is None and not any(hook.changes_batch for hook in hooks) and not config.strong:
        from boxloop.train.cached import CachedTrainSet
        from boxloop.predict.cached import bind

        bound = bind(feature_cache, detector, "fp32")
    dataset: Any
    if bound is not None:
        log.info("training the neck and head on the frozen body's cached maps: flip kept, scale and colour "
                 "jitter (which need pixels) off")
        dataset = CachedTrainSet(train, class_names, config.image_size, config.flip, bound, seed=config.seed)
        opt.loss_fn = detector.loss_from_features  # type: ignore[attr-defined]
    else:
        dataset = DetectionDataset(train, class_names, train_transform(config.image_size, flip=config.flip,
                                                                       scale_jitter=config.scale_jitter,
                                                                       color=config.color, strong=config.strong),
                                   seed=config.seed)
        opt.loss_fn = dist.wrap(detector) if dist is not None else detector.loss
    workers = 0 if bound is not None else config.num_workers  # a miss runs the body in this process
    main = dist is None or dist.is_main

    def checkpoint(path: Path, complete: bool) -> None:
        if not main:
            return  # rank 0 writes; the weights are the same on every rank
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "detector_config": dict(getattr(detector, "config", {})), "class_names": class_names,
            "model": detector.state_dict(),
            "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict() if opt.scaler.is_enabled() else {},
            "step": run.step, "epoch": run.step / steps_per_epoch, "total_steps": total_steps,
            "train_config": config.to_dict(), "history": run.history, "best_map50": run.best_map50,
            "best_step": run.best_step, "evals_since_best": run.evals_since_best, "complete": complete,
            "stopped_early": run.stopped_early, "rng": _rng_state(device),
            "hooks": [hook.state_dict() for hook in hooks],
        }, path)

    bar = progress_bar(total=total_steps, initial=run.step, desc="train", unit="step", disable=not (progress and main))
    steps_this_call = 0
    for hook in hooks:
        hook.before_train(run.step)
    detector.train()
    try:
        while run.step < total_steps and not run.stopped_early:
            epoch, pos = divmod(run.step, steps_per_epoch)
            dataset.set_epoch(epoch)
            order = epoch_order(len(train), config.seed, epoch)
            batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            if dist is not None:  # this rank's share of each of those batches
                batches = dist.local_batches(len(train), config.seed, epoch, config.batch_size)
            # Its own generator: creating a loader must not draw from the global RNG (resume = same run).
            loader = DataLoader(dataset, batch_sampler=batches[pos:], collate_fn=collate,
                                num_workers=workers, pin_memory=device.type == "cuda" and bound is None,
                                generator=torch.Generator().manual_seed(config.seed + epoch))
            for images, targets in loader:
                if dist is not None:
                    dist.set_batch(len(train), config.batch_size, run.step % steps_per_epoch)
                for hook in hooks:
                    images, targets = hook.before_step(run.step, images, targets)
                parts = _train_step(detector, opt, images, targets)
                if dist is not None:
                    parts = dist.mean(parts)
                lr = opt.optimizer.param_groups[0]["lr"]
                opt.scheduler.step()
                run.step += 1
                steps_this_call += 1
                entry = {"step": run.step, "epoch": run.step / steps_per_epoch, "lr": lr, **parts}
                run.history.append(entry)
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
                epoch_end = run.step % steps_per_epoch == 0
                done = run.step >= total_steps
                if config.epochs is not None:
                    due = epoch_end and (run.step // steps_per_epoch) % config.val_every == 0
                else:
                    due = run.step % config.val_every == 0
                if val and (due or done):
                    map50 = (validation_map50(detector, val, class_names, config, device, feature_cache)
                             if main else None)
                    if dist is not None:
                        map50 = dist.broadcast(map50)
                    detector.train()
                    entry["val_map50"] = map50
                    if progress and main:
                        bar.write(f"step {run.step}: val mAP50 {map50:.4f}")
                    if run.best_map50 is None or map50 > run.best_map50:
                        run.best_map50, run.best_step, run.evals_since_best = map50, run.step, 0
                        checkpoint(best_path, complete=False)
                    else:
                        run.evals_since_best += 1
                        if config.patience is not None and run.evals_since_best >= config.patience:
                            run.stopped_early = True
                            log.info("early stop at step %d: no better val mAP50 in %d evaluations", run.step,
                                     run.evals_since_best)
                for hook in hooks:
                    hook.after_step(run.step, entry)
                stop_now = stop_after is not None and steps_this_call >= stop_after
                periodic = config.checkpoint_every is not None and run.step % config.checkpoint_every == 0
                if done or run.stopped_early:
                    if not val:
                        checkpoint(best_path, complete=True)
                    checkpoint(last_path, complete=True)
                elif epoch_end or periodic or stop_now or (val and due):
                    checkpoint(last_path, complete=False)
                if done or run.stopped_early or stop_now:
                    break
            if stop_after is not None and steps_this_call >= stop_after:
                break
    finally:
        bar.close()
        if feature_cache is not None:
            feature_cache.flush()
    for hook in hooks:
        hook.after_train(run.step)
    if dist is not None:
        dist.barrier()  # rank 0's checkpoints are on disk before any rank reads best.pt
    completed = run.step >= total_steps or run.stopped_early
    result = FitResult(best_path, last_path, run.best_map50, run.history, run.step, total_steps, completed,
                       run.stopped_early if completed else False)
    return _finish(detector, device, result, val, class_names, config, main) if completed else result


def _finish(detector: Detector, device: torch.device, result: FitResult, val: Sequence[Sample] = (),
            class_names: Sequence[str] = (), config: TrainConfig | None = None, main: bool = True) -> FitResult:
    """Load the best weights into the detector, with the quality map best.pt holds; where it holds
    none yet, fit one on the validation samples (boxloop.metrics.calibration) and store it in best.pt, so
    that every later load predicts the calibrated IoU. Returns `result`."""
    path = result.best_checkpoint
    if not path.exists():
        detector.eval()
        return result
    ckpt = load_checkpoint(path, map_location=device)
    detector.load_state_dict(ckpt["model"])
    detector.eval()
    if "quality_map" in ckpt:
        detector.quality_map = QualityMap.from_dict(ckpt["quality_map"]) if ckpt["quality_map"] else None
    elif main and val and config is not None and getattr(detector, "has_loc_quality", False):
        qmap = fit_quality_map(detector, val, class_names, config.image_size, config.batch_size, config.num_workers)
        detector.quality_map = qmap
        ckpt["quality_map"] = None if qmap is None else qmap.to_dict()
        save_checkpoint(ckpt, path)
        log.info("quality map fitted on %d validation detections", 0 if qmap is None else qmap.pairs)
    return result


def fit_quality_map(detector: Any, samples: Sequence[Any], class_names: Sequence[str], image_size: int,
                    batch_size: int = 8, num_workers: int = 0, min_score: float = MAP_MIN_SCORE,
                    min_pairs: int = MAP_MIN_PAIRS) -> QualityMap | None:
    """The QualityMap (boxloop.metrics.calibration) of `detector` on labelled `samples` (validation,
    never the test set), fitted on its detections scoring >= min_score on a labelled box; None with
    fewer than `min_pairs` of them. Predicts with the raw quality (any map it holds is set aside)."""
    labelled = [s for s in samples if s.annotation is not None]
    truth = {s.name: s.annotation for s in labelled}
    held, detector.quality_map = getattr(detector, "quality_map", None), None
    try:
        dets = dict(predict_paths(detector, [s.path for s in labelled], image_size, batch_size=batch_size,
                                  score_threshold=min_score, progress=False, num_workers=num_workers,
                                  keys=[s.name for s in labelled]))
    finally:
        detector.quality_map = held
    p, t = matched_pairs(truth, dets, class_names, min_score)
    return QualityMap.fit(p, t) if len(p) >= max(1, min_pairs) else None
