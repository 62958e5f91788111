"""Certainty-aware teacher-student training (CertaintySSOD), and the check that it beat a fair baseline.

    teacher    = supervised model on the labelled images (trained here, or a checkpoint)
    pseudo     = teacher's boxes on the unlabelled images, weak view (image + its mirror)
    accept     = class-wise thresholds tau_m and weights alpha_m from sum p*v (eq. 6), pseudo.py
    student    = train.fit from the teacher's weights on labelled + pseudo-labelled images, every
                 image with the strong augmentation (TrainConfig.strong); pseudo boxes weigh
                 lambda_u * alpha_m (eq. 2)
    continued  = "teacher continued", the fair supervised baseline: train.fit from the teacher's
                 weights on the labelled images only, with the student's TrainConfig (same steps,
                 same strong augmentation, same schedule and seed). Whatever the student gains
                 over it comes from the pseudo-labels, not from training longer or augmenting more
    choose     = the never-worse guard: the student is kept only when it beats teacher continued on
                 the validation images by more than their noise: the lower end of a paired
                 bootstrap interval [90%, 1,000 resamples over the validation images] of
                 mAP50(student) - mAP50(continued) must lie above `min_gain` [0] (compare.py).
                 Otherwise teacher continued is kept: it is never worse than the teacher's recipe

Choices the seed leaves open, made here:
* Weak view: with `SemiConfig.flip` the teacher predicts the image and its horizontal mirror, and
  the two views are merged (weak_view.py: a pseudo box must be certain in both views).
  `flip=False`: the image alone.
* Which predictions count in eq. 6: the teacher's post-NMS boxes at `candidate_threshold` [0.05]
  ("standard inference"), on the weak view, all unlabelled images.
* The student trains on labelled and pseudo-labelled images with an expected share
  `labelled_share` [0.5] of labelled ones per batch: the labelled images are repeated in the
  shuffled list (student_samples). Unbiased Teacher samples labelled and unlabelled images 1:1 per
  batch; the plain union (`labelled_share=0`) let 23 labelled images make 10% of the batches
  against 200+ pseudo-labelled ones, and the student (BCCD 10%, 3 seeds) ended 10 points below teacher
  continued, which sees the labelled images in every batch. Background locations of pseudo images
  weigh 1.
* Ignore regions (`ignore_threshold` [0.05]; None: off): on a pseudo-labelled image, the teacher's
  boxes that were not accepted but score p >= the threshold, and overlap no accepted box (IoU <
  0.5), join the image's labels with weight 0, so the locations they would own train neither as
  objects nor as background (the detectors' weight-0 rule). Why: BCCD images hold ~14 cells and the
  certainty rule accepted ~12% of them (precision 0.96); without ignore regions the other 88% were
  taught as background and the student fell 25 points below teacher continued. Soft Teacher and
  Unbiased Teacher v2 handle the same problem by down-weighting the background the teacher doubts.
  Every image,
  labelled or not, gets the strong augmentation (Unbiased Teacher also trains its supervised loss
  on strongly augmented labelled images), so teacher continued can see exactly the same recipe.
* Steps: `student_steps`, default the teacher's number of steps. Student and teacher continued
  always train the same number of steps (`SemiResult.steps`).
* No pseudo box passes the thresholds: the student would train on exactly what teacher continued
  trains on, so it is not trained; teacher continued is kept and the message says why.
* A model without localization quality cannot do CA: with `certainty=True` this is logged and CA
  is switched off (`SemiResult.certainty_used`).
* No validation image with a box: the models cannot be compared and teacher continued is kept.
* Resuming: teacher, student and teacher continued each resume in their own folder (train.fit);
  the pseudo-labels are recomputed (the teacher's predictions are deterministic on a CPU).
  `continued_dir` lets several runs from one teacher (ablations) share one teacher continued.

Written by hand: the pipeline and the choice. Reused: train.fit (every model trains through it),
weak_view.py (the flip merge), pseudo.py (eq. 6, acceptance), compare.py (the guard), data.py,
evaluate.precision_recall (pseudo-label quality), torch / torchvision for everything numeric.
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

from boxloop.train.data import Sample
from boxloop.defaults import DETECTOR
from boxloop.semi.pseudo import ClasswiseThresholds, check_probability
from boxloop.structures import Annotation, Detections, Source, iou
from boxloop.train.config import TrainConfig
from boxloop.train.fit import fit, validation_map50, validation_predictions
from boxloop.train.checkpoints import load_detector
from boxloop.train.run import train_detector
from boxloop.predict.inference import resolve_device
from boxloop.semi.weak_view import weak_predict

__all__ = ["SemiConfig", "SemiResult", "fit_semi", "pseudo_label_quality", "pseudo_samples",
           "semi_inputs_from_project", "student_train_config"]

log = logging.getLogger("boxloop.semi")


@dataclass(frozen=True)
class SemiConfig:
    """CertaintySSOD's settings [tau=0.7, gamma1=0.05, gamma2=0.6, lambda_u=1] and the switches of its
    Table 5: CA `certainty` (p*v instead of p), RE `reweight` (alpha_m), DT `dynamic_threshold`
    (tau_m instead of tau). `ignore_threshold`: the teacher's unaccepted boxes scoring at least this
    are ignore regions (weight 0) on pseudo-labelled images; None: off. `labelled_share`: the expected
    share of labelled images in the student's batches (0: the plain union). `student_steps`: the student's (and teacher continued's) steps, default
    the teacher's. The guard: the student is kept when the lower end of the `guard_level` paired
    bootstrap interval (`guard_resamples` resamples of the validation images) of its val mAP50 minus
    teacher continued's lies above `min_gain`."""

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
    ignore_threshold: float | None = 0.05
    labelled_share: float = 0.5
    student_steps: int | None = None
    min_gain: float = 0.0
    guard_level: float = 0.9
    guard_resamples: int = 1000

    def __post_init__(self) -> None:
        check_probability(self.tau, "SemiConfig.tau")
        for c in self.clip:
            check_probability(c, "SemiConfig.clip")
        if self.clip[0] > self.clip[1]:
            raise ValueError(f"SemiConfig.clip must be (low, high) with low <= high, got {self.clip}")
        object.__setattr__(self, "clip", tuple(float(c) for c in self.clip))
        check_probability(self.candidate_threshold, "SemiConfig.candidate_threshold")
        check_probability(self.flip_iou, "SemiConfig.flip_iou")
        if self.ignore_threshold is not None:
            check_probability(self.ignore_threshold, "SemiConfig.ignore_threshold")
        if not 0 <= self.labelled_share < 1:  # NaN fails too
            raise ValueError(f"SemiConfig.labelled_share must lie in [0, 1), got {self.labelled_share}")
        check_probability(self.guard_level, "SemiConfig.guard_level")
        for name in ("gamma1", "gamma2", "lambda_u", "min_gain"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"SemiConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.student_steps is not None and self.student_steps < 1:
            raise ValueError(f"SemiConfig.student_steps must be >= 1 or None, got {self.student_steps}")
        if self.guard_resamples < 1:
            raise ValueError(f"SemiConfig.guard_resamples must be >= 1, got {self.guard_resamples}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def thresholds(self, num_classes: int, certainty: bool | None = None) -> ClasswiseThresholds:
        return ClasswiseThresholds(num_classes, tau=self.tau, gamma1=self.gamma1, gamma2=self.gamma2, clip=self.clip,
                                   dynamic_threshold=self.dynamic_threshold, reweight=self.reweight,
                                   certainty=self.certainty if certainty is None else certainty)


@dataclass
class SemiResult:
    """What fit_semi did. `best_checkpoint` is out_dir/best.pt, a copy of the chosen model's:
    `chosen` "semi" (the student) or "supervised" (teacher continued; the teacher itself when there
    was nothing unlabelled). `supervised_val_map50` is teacher continued's validation mAP50 (the
    baseline the guard compares with), `teacher_val_map50` the teacher's. `guard`: the bootstrap
    comparison (compare.BootstrapComparison.to_dict()). `steps`: teacher, student, continued."""

    best_checkpoint: Path
    chosen: str  # "supervised" | "semi"
    supervised_val_map50: float | None
    semi_val_map50: float | None
    delta: float | None  # semi - supervised (teacher continued)
    teacher_checkpoint: Path
    student_checkpoint: Path | None
    continued_checkpoint: Path | None = None
    teacher_val_map50: float | None = None
    guard: dict[str, Any] | None = None
    steps: dict[str, int | None] = field(default_factory=dict)
    pseudo_images: int = 0
    pseudo_boxes: int = 0
    ignored_boxes: int = 0  # the teacher's unaccepted boxes trained as ignore regions (weight 0)
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
                                           "teacher_val_map50", "guard", "steps", "pseudo_images", "pseudo_boxes",
                                           "ignored_boxes", "unlabelled_images", "thresholds", "alpha", "certainty_used", "message")}
        d.update({k: None if getattr(self, k) is None else str(getattr(self, k))
                  for k in ("best_checkpoint", "teacher_checkpoint", "student_checkpoint", "continued_checkpoint")})
        return d


# -- inputs ------------------------------------------------------------------------------------------

def semi_inputs_from_project(project: Any) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(labelled train, unlabelled, val) Samples of a project. Existing pseudo-labelled images are
    not training data here (fit_semi makes its own); unlabelled = status 'unlabelled' outside
    test/val (the test set never trains, not even as pseudo labels)."""
    from boxloop.loop.model import training_samples

    train, val = training_samples(project)
    train = [s for s in train if s.annotation is None or len(s.annotation) == 0
             or any(p.source != Source.PSEUDO for p in s.annotation.provenance)]
    root = project.image_root
    from boxloop.integrity import usable_images

    keys = usable_images(project, project.image_set("unlabelled_pool"), "semi")
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


# -- the pipeline ------------------------------------------------------------------------------------

def student_train_config(train_config: TrainConfig, steps: int, labelled_images: int) -> TrainConfig:
    """The TrainConfig of the student and of teacher continued: `steps` steps with the strong
    augmentation; validation as often as the teacher's (`val_every` in epochs becomes steps)."""
    val_every = train_config.val_every
    if train_config.epochs is not None:
        val_every *= math.ceil(max(1, labelled_images) / train_config.batch_size)
    return dataclasses.replace(train_config, steps=steps, epochs=None, min_steps=None, strong=True,
                               val_every=max(1, val_every))


def pseudo_samples(pool: Mapping[str, Detections], unlabelled: Sequence[Sample], classes: list[str],
                    thresholds: ClasswiseThresholds, lambda_u: float, ignore_threshold: float | None = None,
                    ) -> tuple[dict[str, Annotation], dict[str, np.ndarray], list[Sample], int]:
    """Accepted pseudo boxes per image, their weights lambda_u * alpha_m, the student's Samples and the
    number of ignore regions: on an image with an accepted box, the teacher's other boxes with p >=
    `ignore_threshold` that overlap no accepted box (IoU < 0.5) join its Sample with weight 0."""
    thresholds.reset()
    thresholds.update(pool.values())
    by_name = {s.name: s for s in unlabelled}
    labels, weights, samples, ignored = {}, {}, [], 0
    for key, d in pool.items():
        mask, alpha = thresholds.accept(d)
        if not mask.any():
            continue
        labels[key] = d[mask].to_annotation(key, classes, source=Source.PSEUDO)
        weights[key] = (lambda_u * alpha[mask]).astype(np.float32)
        keep = np.flatnonzero(mask)
        if ignore_threshold is not None:
            unsure = ~mask & (d.scores >= ignore_threshold)
            if unsure.any():
                unsure[unsure] = iou(d.boxes[unsure], d.boxes[mask]).max(axis=1) < 0.5
            ignored += int(unsure.sum())
            keep = np.concatenate([keep, np.flatnonzero(unsure)])
        ann = d[keep].to_annotation(key, classes, source=Source.PSEUDO)
        w = np.concatenate([weights[key], np.zeros(len(keep) - int(mask.sum()), np.float32)])
        samples.append(Sample(by_name[key].path, ann, weights=w, key=key))
    return labels, weights, samples, ignored


def student_samples(labelled: Sequence[Sample], pseudo: Sequence[Sample], labelled_share: float) -> list[Sample]:
    """The student's training list: the labelled Samples repeated r times, then the pseudo ones, r
    the smallest count with r * L >= share / (1 - share) * P (at least 1), so a shuffled batch holds
    labelled images at an expected share of at least `labelled_share` (0: the plain union)."""
    labelled, pseudo = list(labelled), list(pseudo)
    if not labelled or not pseudo or labelled_share <= 0:
        return labelled + pseudo
    repeat = max(1, math.ceil(labelled_share / (1 - labelled_share) * len(pseudo) / len(labelled) - 1e-9))
    return labelled * repeat + pseudo


def fit_semi(data: Any, class_names: Sequence[str] | None, train_config: TrainConfig,
             semi_config: SemiConfig | None = None, out_dir: str | Path = "semi",
             teacher_checkpoint: str | Path | None = None, model: str = DETECTOR,
             detector_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
             continued_dir: str | Path | None = None,
             teacher_predictions: Mapping[str, Detections] | None = None) -> SemiResult:
    """Teacher -> certainty-aware pseudo labels -> student and teacher continued -> the guard.

    `data`: a `store.Project` (see `semi_inputs_from_project`; class_names None = its classes) or a
    tuple (labelled Samples, unlabelled paths or Samples, val Samples). The teacher is trained with
    `train_config` (out_dir/teacher, resumable) unless `teacher_checkpoint` is given (its class list
    must equal `class_names`). `model` / `detector_kwargs` build it (faster_rcnn gets
    box_head="interval" unless told otherwise, since CA needs v). Student and teacher continued
    train with `student_train_config` in out_dir/student and `continued_dir` [out_dir/continued].
    `teacher_predictions`: the teacher's weak-view predictions (`weak_predict`) on the unlabelled
    images by name, when the caller has them already. Writes out_dir/best.pt (the chosen model) and
    out_dir/semi.json.
    """
    from boxloop.metrics.compare import paired_bootstrap
    from boxloop.detectors import DetectorSpec

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
    device = resolve_device(train_config.device)

    # teacher
    if teacher_checkpoint is not None:
        teacher, _, meta = load_detector(teacher_checkpoint, expect_classes=classes, device=device)
        teacher_path = Path(teacher_checkpoint)
        teacher_steps = int(meta.get("total_steps") or train_config.total_steps(len(labelled)))
    else:
        spec = DetectorSpec(model, dict(detector_kwargs or {}), loc_quality=semi.certainty)
        teacher, fitted = train_detector(spec, classes, labelled, val, train_config, out_dir / "teacher",
                                         progress=progress)
        teacher_path, teacher_steps = fitted.best_checkpoint, fitted.total_steps
    teacher.to(device)
    teacher_map = validation_map50(teacher, val, classes, train_config, device) if val else None
    out_dir.mkdir(parents=True, exist_ok=True)

    def finish(result: SemiResult) -> SemiResult:
        src = {"semi": result.student_checkpoint, "supervised": result.continued_checkpoint or
               result.teacher_checkpoint}[result.chosen]
        if Path(src).resolve() != (out_dir / "best.pt").resolve():  # type: ignore[arg-type]
            shutil.copyfile(src, out_dir / "best.pt")  # type: ignore[arg-type]
        (out_dir / "semi.json").write_text(json.dumps({**result.to_dict(), "semi_config": semi.to_dict()}, indent=2))
        log.info("%s", result.message)
        return result

    if not unlabelled:
        return finish(SemiResult(out_dir / "best.pt", "supervised", None, None, None, teacher_path, None,
                                 teacher_val_map50=teacher_map, steps={"teacher": teacher_steps},
                                 message="no unlabelled images: trained and kept the supervised model only"))

    certainty = semi.certainty and bool(getattr(teacher, "has_loc_quality", False))
    if semi.certainty and not certainty:
        log.warning("the teacher (%s) predicts no localization quality: certainty (CA) switched off, p alone is "
                    "used; build faster_rcnn with box_head='interval' for CertaintySSOD's p*v",
                    getattr(teacher, "config", {}).get("name"))
    if teacher_predictions is None:
        dets = weak_predict(teacher, [s.path for s in unlabelled], train_config.image_size, flip=semi.flip,
                            score_threshold=semi.candidate_threshold, batch_size=train_config.batch_size,
                            flip_iou=semi.flip_iou)
        pool = {s.name: d for s, d in zip(unlabelled, dets)}
    else:
        missing = [s.name for s in unlabelled if s.name not in teacher_predictions]
        if missing:
            raise ValueError(f"fit_semi: teacher_predictions lack {len(missing)} unlabelled images "
                             f"(e.g. {missing[:3]})")
        pool = {s.name: teacher_predictions[s.name] for s in unlabelled}
    thresholds = semi.thresholds(len(classes), certainty)
    labels, pseudo_weights, pseudo, n_ignored = pseudo_samples(pool, unlabelled, classes, thresholds, semi.lambda_u,
                                                                semi.ignore_threshold)
    n_box = sum(len(a) for a in labels.values())

    # student and teacher continued: one training function, one config
    steps = semi.student_steps or teacher_steps
    sc = student_train_config(train_config, steps, len(labelled))
    cont_dir = Path(continued_dir) if continued_dir is not None else out_dir / "continued"
    cont_model = copy.deepcopy(teacher)
    continued = fit(cont_model, labelled, val, classes, sc, cont_dir, progress=progress)  # holds its best weights
    student_path, history, student_steps = None, [], None
    guard = semi_map = delta = sup_map = None
    if pseudo:
        student_model = copy.deepcopy(teacher)
        student = fit(student_model, student_samples(labelled, pseudo, semi.labelled_share), val, classes, sc,
                      out_dir / "student", progress=progress)
        student_path, history, student_steps = student.best_checkpoint, student.history, student.total_steps
        if val:
            truth = {s.name: s.annotation for s in val}
            cmp = paired_bootstrap(truth, validation_predictions(student_model, val, classes, train_config, device),
                                   validation_predictions(cont_model, val, classes, train_config, device), classes,
                                   resamples=semi.guard_resamples, level=semi.guard_level, margin=semi.min_gain,
                                   seed=train_config.seed)
            guard = cmp.to_dict()
            semi_map, sup_map, delta = cmp.a, cmp.b, cmp.delta
    if sup_map is None and val:
        sup_map = validation_map50(cont_model, val, classes, train_config, device)
    chosen = "semi" if guard is not None and guard["a_better"] else "supervised"
    tau_txt = ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, thresholds.thresholds))
    if n_box == 0:
        # the student would see exactly what teacher continued sees
        message = (f"no pseudo-label passed the thresholds ({tau_txt}), so there is no student: kept teacher "
                   f"continued ({steps} more steps on the labelled images). Lower --tau, or train the teacher "
                   "longer (its localization quality v may still be low)")
    elif not val or guard is None or guard["delta"] is None:
        message = ("no validation image with a box: cannot compare the models, kept teacher continued; "
                   "add labelled validation images to let the semi-supervised model be chosen")
    else:
        verdict = ("above" if chosen == "semi" else "not above") + f" {semi.min_gain:g}"
        message = (f"kept {'the semi-supervised student' if chosen == 'semi' else 'teacher continued'}: val mAP50 "
                   f"teacher continued {sup_map:.4f}, student {semi_map:.4f} ({delta:+.4f}; "
                   f"{100 * semi.guard_level:g}% paired bootstrap interval over {guard['images']} validation images "
                   f"[{guard['low']:+.4f}, {guard['high']:+.4f}], {verdict})")
    return finish(SemiResult(
        out_dir / "best.pt", chosen, sup_map, semi_map, delta, teacher_path, student_path,
        continued_checkpoint=continued.best_checkpoint, teacher_val_map50=teacher_map, guard=guard,
        steps={"teacher": teacher_steps, "student": student_steps, "continued": continued.total_steps},
        pseudo_images=len(labels), pseudo_boxes=n_box, unlabelled_images=len(unlabelled),
        thresholds={c: float(t) for c, t in zip(classes, thresholds.thresholds)},
        alpha={c: float(a) for c, a in zip(classes, thresholds.weights)},
        certainty_used=certainty, message=message, pseudo_labels=labels,
        pseudo_weights=pseudo_weights, ignored_boxes=n_ignored, history=history))


# -- benchmark helper -----------------------------------------------------------------------------

def pseudo_label_quality(accepted: Mapping[str, Annotation | Detections | tuple[Detections, Any]],
                         withheld_truth: Mapping[str, Annotation], class_names: Sequence[str],
                         iou_threshold: float = 0.5) -> dict[str, Any]:
    """Per-class precision / recall of accepted pseudo boxes against the withheld labels (CertaintySSOD
    Fig. 3), via `evaluate.precision_recall`. Images of `withheld_truth` without an accepted box count
    as having none (their objects are misses); accepted images must all be in `withheld_truth`."""
    from boxloop.metrics.evaluate import precision_recall

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
