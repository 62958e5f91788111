"""Certainty-aware teacher-student training (seed 001), and the check that it beat supervised.

    teacher  = supervised model on the labelled images (trained here, or a checkpoint)
    pseudo   = teacher's boxes on the unlabelled images, weak view (image + its mirror)
    accept   = class-wise thresholds tau_m and weights alpha_m from sum p*v (eq. 6), pseudo.py
    student  = copy of the teacher, trained on labelled (train_transform) + pseudo-labelled
               (strong_transform) images; pseudo boxes weigh lambda_u * alpha_m (eq. 2)
    [EMA]    = optional Mean Teacher: an EMA of the student re-labels the pool every so often
    choose   = validation mAP50 of teacher vs student; the better one is the result (ties: teacher)

Choices the seed leaves open, made here:
* Weak view: with `SemiConfig.flip` the teacher predicts the image and its horizontal mirror; the
  mirror's boxes are mapped back and the two views are averaged: a same-class pair with IoU >=
  `flip_iou` [0.55] becomes one box (mean coordinates, mean p, mean class_probs, mean v); a box seen
  in one view only keeps its box and v but its p (and class_probs) is halved, as if the other view
  had scored it 0. So a pseudo box must be certain in both views. `flip=False`: the image alone.
* Which predictions count in eq. 6: the teacher's post-NMS boxes at `candidate_threshold` [0.05]
  ("standard inference"), on the weak view, all unlabelled images.
* The student trains on the shuffled union of labelled and pseudo-labelled images (no fixed
  labelled/unlabelled ratio per batch); background RoIs of pseudo images weigh 1.
* Mean Teacher (`ema`): the EMA model is the one validated and kept (as Unbiased Teacher reports its
  teacher); it re-labels the pool every `relabel_every` steps [each student epoch], with thresholds
  re-accumulated from its own predictions.
* A model without localization quality (e.g. a standard-head checkpoint) cannot do CA: with
  `certainty=True` this is logged and CA is switched off (`SemiResult.certainty_used`).
* No validation images (or none with a box): the two cannot be compared and the supervised model is
  kept, with a message. An interrupted run resumes the teacher (train.fit); the student restarts.

Written by hand: the pipeline, the flip merge, the student loop (a small variant of train.fit's loop
that picks a transform per sample: fit() has no such hook) and the choice. Reused: train.py (fit,
checkpoints, _train_step, _validate, lr schedule), data.py (datasets, train/strong transforms),
pseudo.py (eq. 6, acceptance), evaluate.precision_recall (pseudo-label quality), torch / torchvision
for everything numeric.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boxloop.data import DetectionDataset, Sample, collate, resized_size, strong_transform, train_transform
from boxloop.detectors.base import Detector
from boxloop.pseudo import ClasswiseThresholds, _check_probability, accept_certainty
from boxloop.structures import Annotation, Boxes, Detections, Source, iou
from boxloop.train import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TrainConfig, _epoch_order, _train_step,
                           _validate, fit, load_detector, resolve_device, save_checkpoint)

__all__ = ["SemiConfig", "SemiResult", "fit_semi", "weak_predict", "merge_flip", "pseudo_label_quality",
           "semi_inputs_from_project"]

log = logging.getLogger("boxloop.semi")


@dataclass(frozen=True)
class SemiConfig:
    """Seed 001's settings [tau=0.7, gamma1=0.05, gamma2=0.6, lambda_u=1] and the switches of its
    Table 5: CA `certainty` (p*v instead of p), RE `reweight` (alpha_m), DT `dynamic_threshold`
    (tau_m instead of tau). `student_steps`/`student_epochs` (at most one): the student's schedule,
    default the teacher's (train_config). `ema`: Mean Teacher momentum (e.g. 0.999), None = off.
    `min_gain`: the student must beat the teacher's val mAP50 by more than this to be chosen."""

    tau: float = 0.7
    gamma1: float = 0.05
    gamma2: float = 0.6
    clip: tuple[float, float] = (0.4, 0.9)
    dynamic_threshold: bool = True
    reweight: bool = True
    certainty: bool = True
    lambda_u: float = 1.0
    flip: bool = True
    flip_iou: float = 0.55
    candidate_threshold: float = 0.05
    student_steps: int | None = None
    student_epochs: int | None = None
    ema: float | None = None
    relabel_every: int | None = None
    min_gain: float = 0.0

    def __post_init__(self) -> None:
        _check_probability(self.tau, "SemiConfig.tau")
        for c in self.clip:
            _check_probability(c, "SemiConfig.clip")
        if self.clip[0] > self.clip[1]:
            raise ValueError(f"SemiConfig.clip must be (low, high) with low <= high, got {self.clip}")
        object.__setattr__(self, "clip", tuple(float(c) for c in self.clip))
        _check_probability(self.candidate_threshold, "SemiConfig.candidate_threshold")
        _check_probability(self.flip_iou, "SemiConfig.flip_iou")
        for name in ("gamma1", "gamma2", "lambda_u", "min_gain"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"SemiConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.student_steps is not None and self.student_epochs is not None:
            raise ValueError("SemiConfig: give at most one of student_steps and student_epochs")
        for name in ("student_steps", "student_epochs", "relabel_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"SemiConfig.{name} must be >= 1 or None, got {v}")
        if self.ema is not None:
            _check_probability(self.ema, "SemiConfig.ema (the EMA momentum)")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def thresholds(self, num_classes: int, certainty: bool | None = None) -> ClasswiseThresholds:
        return ClasswiseThresholds(num_classes, tau=self.tau, gamma1=self.gamma1, gamma2=self.gamma2, clip=self.clip,
                                   dynamic_threshold=self.dynamic_threshold, reweight=self.reweight,
                                   certainty=self.certainty if certainty is None else certainty)


@dataclass
class SemiResult:
    """What fit_semi did. `best_checkpoint` is out_dir/best.pt, a copy of the chosen model's.
    The pseudo-label fields (counts, thresholds, alpha, labels, weights) describe the teacher's
    labelling (with `ema`, later re-labellings are in `history` as pseudo_boxes)."""

    best_checkpoint: Path
    chosen: str  # "supervised" | "semi"
    supervised_val_map50: float | None
    semi_val_map50: float | None
    delta: float | None  # semi - supervised
    teacher_checkpoint: Path
    student_checkpoint: Path | None
    pseudo_images: int = 0
    pseudo_boxes: int = 0
    unlabelled_images: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)  # tau_m per class
    alpha: dict[str, float] = field(default_factory=dict)  # alpha_m per class
    certainty_used: bool = True
    message: str = ""
    pseudo_labels: dict[str, Annotation] = field(default_factory=dict)  # the accepted pseudo boxes
    pseudo_weights: dict[str, np.ndarray] = field(default_factory=dict)  # their loss weights lambda_u * alpha_m
    history: list[dict[str, Any]] = field(default_factory=list)  # student steps

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("chosen", "supervised_val_map50", "semi_val_map50", "delta",
                                           "pseudo_images", "pseudo_boxes", "unlabelled_images", "thresholds",
                                           "alpha", "certainty_used", "message")}
        d.update(best_checkpoint=str(self.best_checkpoint), teacher_checkpoint=str(self.teacher_checkpoint),
                 student_checkpoint=None if self.student_checkpoint is None else str(self.student_checkpoint))
        return d


# -- weak-view prediction -----------------------------------------------------------------------------

def _flip_back(det: Detections) -> Detections:
    """Boxes predicted on the mirrored image, in the unmirrored image's frame."""
    w = det.image_size[0]
    x = det.boxes.xyxy
    flipped = np.stack([w - x[:, 2], x[:, 1], w - x[:, 0], x[:, 3]], axis=1)
    return dataclasses.replace(det, boxes=Boxes(flipped, det.image_size))


def merge_flip(a: Detections, b: Detections, iou_threshold: float = 0.55) -> Detections:
    """Average two views' detections of one image (see the module notes): greedy same-class pairs
    in descending p*v of `a`, IoU >= `iou_threshold`; pairs averaged, singles keep box and v with p
    halved. Output sorted by descending p (x v where both views have v)."""
    def cert(d: Detections) -> np.ndarray:
        return d.scores * (d.loc_quality if d.loc_quality is not None else 1.0)

    has_lq = a.loc_quality is not None and b.loc_quality is not None
    has_f = a.features is not None and b.features is not None
    ious = iou(a.boxes, b.boxes) if len(a) and len(b) else np.zeros((len(a), len(b)))
    ious = np.where(a.labels[:, None] == b.labels[None, :], ious, 0.0)
    used_b = np.zeros(len(b), bool)
    rows: list[tuple[np.ndarray, int, float, np.ndarray, float | None, np.ndarray | None]] = []
    for i in np.argsort(-cert(a), kind="stable"):
        cand = np.where(~used_b & (ious[i] >= iou_threshold))[0]
        lq_a = float(a.loc_quality[i]) if has_lq else None
        feat = a.features[i] if has_f else None
        if cand.size:
            j = int(cand[np.argmax(ious[i, cand])])
            used_b[j] = True
            rows.append(((a.boxes.xyxy[i] + b.boxes.xyxy[j]) / 2, int(a.labels[i]),
                         (float(a.scores[i]) + float(b.scores[j])) / 2, (a.class_probs[i] + b.class_probs[j]) / 2,
                         None if lq_a is None else (lq_a + float(b.loc_quality[j])) / 2, feat))
        else:
            rows.append((a.boxes.xyxy[i], int(a.labels[i]), float(a.scores[i]) / 2, a.class_probs[i] / 2, lq_a, feat))
    for j in np.where(~used_b)[0]:
        rows.append((b.boxes.xyxy[j], int(b.labels[j]), float(b.scores[j]) / 2, b.class_probs[j] / 2,
                     float(b.loc_quality[j]) if has_lq else None, b.features[j] if has_f else None))
    if not rows:
        return Detections.empty(a.num_classes, a.image_size, loc_quality=has_lq,
                                feature_dim=a.features.shape[1] if has_f else None)
    merged = Detections(
        boxes=Boxes(np.stack([r[0] for r in rows]), a.image_size),
        labels=np.array([r[1] for r in rows]), scores=np.array([r[2] for r in rows]),
        class_probs=np.stack([r[3] for r in rows]),
        loc_quality=np.array([r[4] for r in rows]) if has_lq else None,
        features=np.stack([r[5] for r in rows]) if has_f else None)
    return merged[np.argsort(-cert(merged), kind="stable")]


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths, self.image_size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int]]:
        from torchvision.transforms.v2 import functional as F

        from boxloop.images import load_rgb

        pil = load_rgb(self.paths[i])
        w, h = pil.size
        return F.resize(F.pil_to_tensor(pil), list(resized_size(w, h, self.image_size)), antialias=True), (w, h)


def weak_predict(detector: Detector, paths: Sequence[str | Path], image_size: int, flip: bool = True,
                 score_threshold: float = 0.05, batch_size: int = 8, flip_iou: float = 0.55,
                 num_workers: int = 0) -> list[Detections]:
    """The teacher's weak view (seed 001: horizontal flip): Detections per path in original pixels,
    the image and its mirror merged by `merge_flip` when `flip`, else the image alone."""
    from boxloop.inference import _predict_batch, model_device, to_original

    dev = model_device(detector)
    was_training = bool(getattr(detector, "training", False))
    detector.eval()  # type: ignore[attr-defined]
    loader = DataLoader(_ImageFiles([Path(p) for p in paths], image_size), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=list)
    out: list[Detections] = []
    state = {"chunk": batch_size * (2 if flip else 1)}
    try:
        for batch in loader:
            images = [im.to(dev).float().div_(255.0) for im, _ in batch]
            views = images + [im.flip(-1) for im in images] if flip else images
            dets = _predict_batch(detector, views, score_threshold, state)
            n = len(images)
            for k, (_, orig) in enumerate(batch):
                d = dets[k]
                if flip:
                    d = merge_flip(d, _flip_back(dets[n + k]), flip_iou)
                out.append(to_original(d, orig))
    finally:
        if was_training:
            detector.train()  # type: ignore[attr-defined]
    return out


# -- inputs ------------------------------------------------------------------------------------------

def semi_inputs_from_project(project: Any) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(labelled train, unlabelled, val) Samples of a project. Existing pseudo-labelled images are
    not training data here (fit_semi makes its own); unlabelled = status 'unlabelled' outside
    test/val (the test set never trains, not even as pseudo labels)."""
    from boxloop.loop import training_samples

    train, val = training_samples(project)
    train = [s for s in train if s.annotation is None or len(s.annotation) == 0
             or any(p.source != Source.PSEUDO for p in s.annotation.provenance)]
    root = project.image_root
    from boxloop.integrity import usable_images

    keys = usable_images(project, [r.path for r in project.images(status="unlabelled") if r.split not in ("test", "val")],
                         "semi")
    unlabelled = [Sample(root / k, key=k) for k in keys]
    return train, unlabelled, val


def _as_unlabelled(items: Sequence[str | Path | Sample]) -> list[Sample]:
    """Paths or Samples; a Sample's annotation is ignored (only its path and name are used)."""
    out = []
    for it in items:
        if isinstance(it, Sample):
            out.append(Sample(it.path, key=it.name))
        else:
            out.append(Sample(Path(it), key=str(it)))
    return out


# -- the student loop --------------------------------------------------------------------------------

class _Mixed(Dataset):
    """Labelled samples with the supervised augmentation, pseudo-labelled ones with the strong one."""

    def __init__(self, labelled: DetectionDataset, pseudo: DetectionDataset) -> None:
        self.parts = (labelled, pseudo)

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])

    def __getitem__(self, i: int):
        n = len(self.parts[0])
        return self.parts[0][i] if i < n else self.parts[1][i - n]


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, momentum: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.mul_(momentum).add_(m.detach(), alpha=1 - momentum)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


def _checkpoint(detector: Detector, class_names: list[str], config: TrainConfig, path: Path, step: int,
                history: list, best_map50: float | None, extra: dict[str, Any]) -> None:
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                     "detector_config": dict(getattr(detector, "config", {})), "class_names": class_names,
                     "model": detector.state_dict(),  # type: ignore[attr-defined]
                     "step": step, "total_steps": step, "train_config": config.to_dict(), "history": history,
                     "best_map50": best_map50, "complete": True, **extra}, path)


class _Pseudo:
    """Teacher predictions -> thresholds -> accepted pseudo Samples (weight lambda_u * alpha_m)."""

    def __init__(self, unlabelled: list[Sample], class_names: list[str], semi: SemiConfig, certainty: bool,
                 image_size: int, batch_size: int) -> None:
        self.unlabelled, self.class_names, self.semi = unlabelled, class_names, semi
        self.certainty, self.image_size, self.batch_size = certainty, image_size, batch_size
        self.thresholds = semi.thresholds(len(class_names), certainty)
        self.labels: dict[str, Annotation] = {}
        self.samples: list[Sample] = []

    def relabel(self, teacher: Detector) -> list[Sample]:
        dets = weak_predict(teacher, [s.path for s in self.unlabelled], self.image_size, flip=self.semi.flip,
                            score_threshold=self.semi.candidate_threshold, batch_size=self.batch_size,
                            flip_iou=self.semi.flip_iou)
        pool = {s.name: d for s, d in zip(self.unlabelled, dets)}
        self.thresholds.reset()
        self.thresholds.update(pool.values())
        accepted = accept_certainty(pool, self.thresholds)
        by_name = {s.name: s for s in self.unlabelled}
        self.labels, self.samples = {}, []
        for key, (d, alpha) in accepted.items():
            ann = d.to_annotation(key, self.class_names, source=Source.PSEUDO)
            self.labels[key] = ann
            self.samples.append(Sample(by_name[key].path, ann, weights=self.semi.lambda_u * alpha, key=key))
        return self.samples

    @property
    def boxes(self) -> int:
        return sum(len(a) for a in self.labels.values())


def _train_student(student: Detector, labelled: list[Sample], val: list[Sample], pseudo: _Pseudo,
                   class_names: list[str], config: TrainConfig, semi: SemiConfig, out_dir: Path,
                   progress: bool) -> tuple[Path, float | None, list[dict[str, Any]]]:
    """train.fit's step loop with a per-sample transform and an optional EMA teacher; keeps the best
    (by val mAP50) of the validated model (the EMA one with `ema`) in out_dir/best.pt."""
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    student.to(device)  # type: ignore[attr-defined]
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    torch.manual_seed(config.seed)
    ema = copy.deepcopy(student) if semi.ema is not None else None
    evaluated = ema if ema is not None else student

    def datasets() -> _Mixed:
        return _Mixed(DetectionDataset(labelled, class_names, train_transform(
                          config.image_size, flip=config.flip, scale_jitter=config.scale_jitter, color=config.color),
                          seed=config.seed),
                      DetectionDataset(pseudo.samples, class_names, strong_transform(config.image_size, flip=config.flip),
                                       seed=config.seed + 1))

    data = datasets()
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch  # type: ignore[operator]
    relabel_every = semi.relabel_every or steps_per_epoch
    params = [p for p in student.parameters() if p.requires_grad]  # type: ignore[attr-defined]
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                                     weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: config.lr_factor(s, total))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    best_path = out_dir / "best.pt"
    best, history, step, epoch, state = None, [], 0, 0, {"micro": config.batch_size}
    bar = tqdm(total=total, desc="student", unit="step", disable=not progress)
    student.train()  # type: ignore[attr-defined]
    try:
        while step < total:  # one pass over `data` per epoch; a re-labelling starts a new one
            data.set_epoch(epoch)
            order = _epoch_order(len(data), config.seed, epoch)
            batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            loader = DataLoader(data, batch_sampler=batches, collate_fn=collate, num_workers=config.num_workers,
                                generator=torch.Generator().manual_seed(config.seed + epoch))
            relabelled = False
            for images, targets in loader:
                parts = _train_step(student, opt, scaler, images, targets, device, use_amp, amp_dtype,
                                    config.grad_clip, state)
                entry = {"step": step + 1, "lr": opt.param_groups[0]["lr"], **parts}
                sched.step()
                step += 1
                if ema is not None:
                    _ema_update(ema, student, semi.ema)  # type: ignore[arg-type]
                history.append(entry)
                bar.update(1)
                done = step >= total
                due = (step % steps_per_epoch == 0 and (step // steps_per_epoch) % config.val_every == 0
                       if config.epochs is not None else step % config.val_every == 0)
                if val and (due or done):
                    entry["val_map50"] = m = _validate(evaluated, val, class_names, config, device)
                    student.train()  # type: ignore[attr-defined]
                    if best is None or m > best:
                        best = m
                        _checkpoint(evaluated, class_names, config, best_path, step, history, best, {})
                if ema is not None and not done and step % relabel_every == 0:
                    pseudo.relabel(ema)
                    entry["pseudo_boxes"] = pseudo.boxes
                    data = datasets()
                    relabelled = True
                if done or relabelled:
                    break
            epoch += 1
    finally:
        bar.close()
    if not val:
        _checkpoint(evaluated, class_names, config, best_path, step, history, None, {})
    return best_path, best, history


# -- the pipeline ------------------------------------------------------------------------------------

def fit_semi(data: Any, class_names: Sequence[str] | None, train_config: TrainConfig,
             semi_config: SemiConfig | None = None, out_dir: str | Path = "semi",
             teacher_checkpoint: str | Path | None = None, model: str = "faster_rcnn",
             detector_kwargs: Mapping[str, Any] | None = None, progress: bool = True) -> SemiResult:
    """Teacher -> certainty-aware pseudo labels -> student -> keep the better on validation.

    `data`: a `store.Project` (see `semi_inputs_from_project`; class_names None = its classes) or a
    tuple (labelled Samples, unlabelled paths or Samples, val Samples). The teacher is trained with
    `train_config` (out_dir/teacher, resumable) unless `teacher_checkpoint` is given (its class list
    must equal `class_names`). `model` / `detector_kwargs` build it (faster_rcnn gets
    box_head="interval" unless told otherwise, since CA needs v). Writes out_dir/best.pt (the chosen
    model), out_dir/student/best.pt and out_dir/semi.json.
    """
    from boxloop.detectors import create_detector

    semi = semi_config or SemiConfig()
    out_dir = Path(out_dir)
    if isinstance(data, tuple):
        if len(data) != 3:
            raise ValueError("fit_semi: data must be a Project or (labelled samples, unlabelled paths, val samples)")
        labelled, unlabelled_items, val = list(data[0]), list(data[1]), list(data[2])
        if class_names is None:
            raise ValueError("fit_semi: give class_names when data is a (labelled, unlabelled, val) tuple")
    else:
        labelled, unlabelled_items, val = semi_inputs_from_project(data)
        class_names = data.classes if class_names is None else class_names
    classes = list(class_names)  # type: ignore[arg-type]
    labelled = [s for s in labelled if s.annotation is not None]
    val = [s for s in val if s.annotation is not None]
    unlabelled = _as_unlabelled(unlabelled_items)

    # teacher
    if teacher_checkpoint is not None:
        teacher, _, _ = load_detector(teacher_checkpoint, expect_classes=classes, device=train_config.device)
        teacher_path = Path(teacher_checkpoint)
    else:
        kwargs = dict(detector_kwargs or {})
        if model == "faster_rcnn" and semi.certainty:
            kwargs.setdefault("box_head", "interval")
        teacher = create_detector(model, len(classes), seed=train_config.seed, **kwargs)
        teacher_path = fit(teacher, labelled, val, classes, train_config, out_dir / "teacher",
                           progress=progress).best_checkpoint
    device = resolve_device(train_config.device)
    teacher.to(device)  # type: ignore[attr-defined]
    sup_map = _validate(teacher, val, classes, train_config, device) if val else None
    out_dir.mkdir(parents=True, exist_ok=True)

    def finish(result: SemiResult) -> SemiResult:
        src = result.student_checkpoint if result.chosen == "semi" else result.teacher_checkpoint
        if Path(src).resolve() != (out_dir / "best.pt").resolve():  # type: ignore[arg-type]
            shutil.copyfile(src, out_dir / "best.pt")  # type: ignore[arg-type]
        (out_dir / "semi.json").write_text(json.dumps({**result.to_dict(), "semi_config": semi.to_dict()}, indent=2))
        log.info("%s", result.message)
        return result

    if not unlabelled:
        return finish(SemiResult(out_dir / "best.pt", "supervised", sup_map, None, None, teacher_path, None,
                                 message="no unlabelled images: trained and kept the supervised model only"))

    certainty = semi.certainty and bool(getattr(teacher, "has_loc_quality", False))
    if semi.certainty and not certainty:
        log.warning("the teacher (%s) predicts no localization quality: certainty (CA) switched off, p alone is "
                    "used; build faster_rcnn with box_head='interval' for seed 001's p*v",
                    getattr(teacher, "config", {}).get("name"))
    pseudo = _Pseudo(unlabelled, classes, semi, certainty, train_config.image_size, train_config.batch_size)
    pseudo.relabel(teacher)
    first = (len(pseudo.labels), pseudo.boxes, pseudo.thresholds.thresholds, pseudo.thresholds.weights,
             dict(pseudo.labels), {s.name: np.asarray(s.weights) for s in pseudo.samples})
    student_config = train_config
    if semi.student_steps is not None or semi.student_epochs is not None:
        student_config = dataclasses.replace(train_config, steps=semi.student_steps, epochs=semi.student_epochs)
    student = copy.deepcopy(teacher)  # initialised from the teacher
    student_path, _, history = _train_student(student, labelled, val, pseudo, classes, student_config, semi,
                                              out_dir / "student", progress)
    semi_model, _, _ = load_detector(student_path, expect_classes=classes, device=device)
    semi_map = _validate(semi_model, val, classes, train_config, device) if val else None

    if sup_map is None or semi_map is None:
        chosen, delta = "supervised", None
        message = ("no validation image with a box: cannot compare the models, kept the supervised one; "
                   "add labelled validation images to let the semi-supervised model be chosen")
    else:
        delta = semi_map - sup_map
        chosen = "semi" if delta > semi.min_gain else "supervised"
        message = (f"kept the {'semi-supervised' if chosen == 'semi' else 'supervised'} model: val mAP50 "
                   f"supervised {sup_map:.4f}, semi-supervised {semi_map:.4f} ({delta:+.4f})")
    n_img, n_box, tau_m, alpha_m, labels, weights = first
    if n_box == 0 and unlabelled:
        # the student saw the labelled images only: any gain is longer training, not semi-supervision
        message += ("; no pseudo-label passed the thresholds (" +
                    ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, tau_m)) +
                    "), so the student only trained longer on the labelled images: lower --tau, or train "
                    "the teacher longer" + (" (fcos's predicted IoU v stays low on a weak teacher)"
                                             if certainty and getattr(teacher, "config", {}).get("name") in ("fcos", "fcos_lite") else ""))
    return finish(SemiResult(
        out_dir / "best.pt", chosen, sup_map, semi_map, delta, teacher_path, student_path,
        pseudo_images=n_img, pseudo_boxes=n_box, unlabelled_images=len(unlabelled),
        thresholds={c: float(t) for c, t in zip(classes, tau_m)},
        alpha={c: float(a) for c, a in zip(classes, alpha_m)},
        certainty_used=certainty, message=message, pseudo_labels=labels, pseudo_weights=weights, history=history))


# -- benchmark helper -----------------------------------------------------------------------------

def pseudo_label_quality(accepted: Mapping[str, Annotation | Detections | tuple[Detections, Any]],
                         withheld_truth: Mapping[str, Annotation], class_names: Sequence[str],
                         iou_threshold: float = 0.5) -> dict[str, Any]:
    """Per-class precision / recall of accepted pseudo boxes against the withheld labels (seed 001
    Fig. 3), via `evaluate.precision_recall`. Images of `withheld_truth` without an accepted box count
    as having none (their objects are misses); accepted images must all be in `withheld_truth`."""
    from boxloop.evaluate import precision_recall

    names = list(class_names)
    predicted: dict[str, Annotation] = {}
    for key, item in accepted.items():
        if isinstance(item, tuple):
            item = item[0]
        predicted[key] = item.to_annotation(key, names, source=Source.PSEUDO) if isinstance(item, Detections) else item
    missing = sorted(set(predicted) - set(withheld_truth))
    if missing:
        raise ValueError(f"pseudo_label_quality: {len(missing)} accepted images have no withheld labels "
                         f"(e.g. {missing[:3]}); pass the truth of every unlabelled image")
    return precision_recall(predicted, withheld_truth, names, iou_threshold)
