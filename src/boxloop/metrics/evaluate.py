"""Detection metrics as plain dicts: Pascal VOC all-point AP, COCO AP, and the precision/recall of
one box set against another.

Inputs are the central types: `Mapping[str, Annotation]` keyed by image, for the ground truth and
for the predictions alike. A prediction's score lives in its provenance (`Detections.to_annotation`
puts it there). Ground truth defines the evaluated images: an image with an empty Annotation is a
negative (every prediction on it is a false positive); an image present in the ground truth but
missing from the predictions simply has no detections.

Written by hand (numpy, no torch): VOC 2010+ all-point interpolated AP, precision/recall counting,
the rare-class summary, and the dict shapes; flattening the annotations into arrays and the greedy
matching of predictions to ground truth (vectorised over all (image, class) groups at once) are in
boxloop.metrics.box_matching.
pycocotools does the COCO part (AP@[.5:.95], AP50, AP75, AP by object size, AP per IoU threshold):
we build its COCO objects in memory (no files) and silence its printing.

Conventions (documented because metrics differ on exactly these points):
- IoU uses continuous pixel coordinates (no "+1"), as COCO and torchvision; a match needs
  IoU >= threshold (VOC devkit `ovmax >= minoverlap`, COCO likewise).
- VOC matching follows the devkit: each detection, in descending score, looks only at the ground
  truth box it overlaps most (same image, same class). If that box is `difficult` the detection is
  ignored (neither TP nor FP); if it is already taken the detection is a FP (no fall-back to the
  second-best box). Difficult boxes do not count towards the number of positives.
- In the COCO metrics a difficult box becomes `iscrowd=1`, pycocotools' only ignore mechanism (its
  `ignore` field is overwritten from `iscrowd`): detections on it are ignored, with crowd IoU
  (intersection over the detection's area). `area` is the box's width x height.
- Undefined values (a class with no ground truth box; precision with no prediction) are `None`, so
  every result goes through `json.dumps` as standard JSON.
"""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout
from typing import Mapping, Sequence

import numpy as np

from boxloop.metrics.box_matching import (FP, IGNORED, TP, Flat, class_index, descending, flatten, image_index,
                                  match_predictions, require_scores)
from boxloop.structures import Annotation

__all__ = ["voc_ap", "voc_map", "voc_matches", "coco_metrics", "evaluate", "precision_recall"]

COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


# ------------------------------------------------------------------------------------------------
# Pascal VOC
# ------------------------------------------------------------------------------------------------
def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Pascal VOC 2010+ all-point interpolated AP: the area under the precision envelope
    (P_interp(R) = max precision at recall >= R, LocAwareAL eq. 3.4-3.5), summed where recall changes.

    `recall` and `precision` are the cumulative curve over detections in descending score. An empty
    curve (no detection) gives 0.0.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"voc_ap: recall has {rec.size} points, precision {prec.size}; they must pair up")
    if rec.size == 0:
        return 0.0
    if not (np.isfinite(rec).all() and np.isfinite(prec).all()):
        raise ValueError("voc_ap: recall and precision must be finite numbers")
    if np.any(np.diff(rec) < -1e-12):
        raise ValueError("voc_ap: recall must be non-decreasing (points in descending score order)")
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _voc_status(ground_truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
                class_names: Sequence[str], iou_threshold: float) -> tuple[dict, dict, Flat, Flat, np.ndarray]:
    """VOC matching shared by voc_map and voc_matches: (classes, images, gt, predictions in
    descending score, TP/FP/IGNORED status per prediction)."""
    classes = class_index(class_names)
    images = image_index(ground_truth, predictions, "predictions", "ground_truth")
    gt = flatten(ground_truth, images, classes, "ground_truth")
    pred = flatten(predictions, images, classes, "predictions")
    require_scores(pred, "predictions")
    order = descending(pred.score)
    pred = Flat(pred.image[order], pred.label[order], pred.xyxy[order], pred.score[order], pred.difficult[order])
    status, _, _ = match_predictions(pred, gt, len(classes), iou_threshold, reassign=False)
    return classes, images, gt, pred, status


def voc_map(ground_truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
            class_names: Sequence[str], iou_threshold: float = 0.5) -> dict:
    """Pascal VOC 2010+ mean AP at one IoU threshold.

    Returns {"map", "iou_threshold", "num_images", "per_class": {name: {"ap", "num_gt", "num_pred",
    "precision", "recall"}}}. `map` is the mean over classes that have ground truth (None if none
    has); a class without ground truth has ap None. `precision`/`recall` are float arrays, one point
    per non-ignored detection in descending score (for plots; `evaluate` leaves them out).
    """
    classes, images, gt, pred, status = _voc_status(ground_truth, predictions, class_names, iou_threshold)

    npos = np.bincount(gt.label[~gt.difficult], minlength=len(classes))
    npred = np.bincount(pred.label, minlength=len(classes))
    per_class: dict[str, dict] = {}
    for c, name in enumerate(class_names):
        st = status[(pred.label == c) & (status != IGNORED)]  # keeps descending score order
        tp = np.cumsum(st == TP)
        fp = np.cumsum(st == FP)
        if npos[c] > 0:
            rec = tp / npos[c]
            prec = tp / np.maximum(tp + fp, 1)
            ap: float | None = voc_ap(rec, prec)
        else:
            rec = np.full(st.shape, np.nan)
            prec = tp / np.maximum(tp + fp, 1)
            ap = None
        per_class[name] = {"ap": ap, "num_gt": int(npos[c]), "num_pred": int(npred[c]),
                           "precision": prec.astype(np.float64), "recall": rec.astype(np.float64)}
    aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
    return {"map": float(np.mean(aps)) if aps else None, "iou_threshold": float(iou_threshold),
            "num_images": len(images), "per_class": per_class}


def voc_matches(ground_truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
                class_names: Sequence[str], iou_threshold: float = 0.5) -> dict:
    """voc_map's matching, one row per detection, for statistics over images (bootstrap) and for
    score tables (which threshold reaches a precision). Detections matching only a difficult box
    are left out, as voc_map ignores them.

    Returns {"images": keys in ground-truth order, "image" (D,) index into them, "label" (D,),
    "score" (D,), "tp" (D,) bool, all in descending score; "num_gt" (images, classes) non-difficult
    truth boxes}.
    """
    classes, images, gt, pred, status = _voc_status(ground_truth, predictions, class_names, iou_threshold)
    keep = status != IGNORED
    num_gt = np.zeros((len(images), len(classes)), np.int64)
    np.add.at(num_gt, (gt.image[~gt.difficult], gt.label[~gt.difficult]), 1)
    return {"images": list(images), "image": pred.image[keep], "label": pred.label[keep],
            "score": pred.score[keep], "tp": status[keep] == TP, "num_gt": num_gt}


# ------------------------------------------------------------------------------------------------
# COCO via pycocotools
# ------------------------------------------------------------------------------------------------
def _coco_dicts(ground_truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
                class_names: Sequence[str]) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset and results list, as pycocotools would read them from JSON."""
    classes = class_index(class_names)
    images = image_index(ground_truth, predictions, "predictions", "ground_truth")
    gt = flatten(ground_truth, images, classes, "ground_truth")
    pred = flatten(predictions, images, classes, "predictions")
    require_scores(pred, "predictions")

    img_list = []
    for key, i in images.items():
        w, h = ground_truth[key].image_size
        img_list.append({"id": i + 1, "file_name": key, "width": int(w), "height": int(h)})

    def xywh(f: Flat) -> np.ndarray:
        return np.concatenate([f.xyxy[:, :2], f.xyxy[:, 2:] - f.xyxy[:, :2]], axis=1)

    gxywh, pxywh = xywh(gt), xywh(pred)
    gt_anns = [
        {"id": k + 1, "image_id": int(gt.image[k]) + 1, "category_id": int(gt.label[k]) + 1,
         "bbox": gxywh[k].tolist(), "area": float(gxywh[k, 2] * gxywh[k, 3]),
         "iscrowd": int(gt.difficult[k])}
        for k in range(len(gt))
    ]
    dataset = {"images": img_list, "annotations": gt_anns,
               "categories": [{"id": c + 1, "name": n} for c, n in enumerate(class_names)]}
    results = [
        {"id": k + 1, "image_id": int(pred.image[k]) + 1, "category_id": int(pred.label[k]) + 1,
         "bbox": pxywh[k].tolist(), "score": float(pred.score[k]),
         "area": float(pxywh[k, 2] * pxywh[k, 3]), "iscrowd": 0}
        for k in range(len(pred))
    ]
    return dataset, results


def _mean_valid(a: np.ndarray) -> float | None:
    """pycocotools' averaging: mean of entries > -1 (-1 marks 'no ground truth here')."""
    v = a[a > -1]
    return float(v.mean()) if v.size else None


def coco_metrics(ground_truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
                 class_names: Sequence[str]) -> dict:
    """COCO box metrics through pycocotools' COCOeval, built in memory.

    Returns coco_ap (AP@[.5:.95]), ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100,
    ap_per_iou {"0.50": ..., "0.95": ...} and per_class {name: {"coco_ap", "ap50"}} (area 'all',
    100 detections per image). No predictions gives 0.0 wherever ground truth exists; a value with
    no ground truth behind it (no box at all, a class without boxes, no small objects) is None.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = _coco_dicts(ground_truth, predictions, class_names)
    keys = ("coco_ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100")
    out: dict = {k: None for k in keys}
    out["ap_per_iou"] = {f"{t:.2f}": None for t in COCO_IOU_THRESHOLDS}
    out["per_class"] = {n: {"coco_ap": None, "ap50": None} for n in class_names}
    if not dataset["images"] or not dataset["annotations"]:
        return out  # nothing to find: every AP is undefined

    with redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        # Built directly rather than by loadRes, which fails on an empty results list.
        coco_dt = COCO()
        coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"],
                           "annotations": results}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [None if s < 0 else float(s) for s in ev.stats[:9]]
    out.update(dict(zip(keys, stats)))
    prec = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    a_all = ev.params.areaRngLbl.index("all")
    m100 = ev.params.maxDets.index(100)
    p = prec[:, :, :, a_all, m100]
    for t, thr in enumerate(ev.params.iouThrs):
        out["ap_per_iou"][f"{thr:.2f}"] = _mean_valid(p[t])
    for k, cat in enumerate(ev.params.catIds):
        name = class_names[cat - 1]
        out["per_class"][name] = {"coco_ap": _mean_valid(p[:, :, k]), "ap50": _mean_valid(p[0, :, k])}
    return out


# ------------------------------------------------------------------------------------------------
# Everything at once
# ------------------------------------------------------------------------------------------------
def evaluate(ground_truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
             class_names: Sequence[str], rare_k: int | None = None,
             class_counts: Mapping[str, int] | None = None) -> dict:
    """VOC AP50 and COCO metrics in one JSON-serialisable dict (the keys the CLI and store use).

    Rare classes (CertaintySSOD Table 4 reports AP on "the rarest 10 classes" of COCO's 80 by number of
    annotations in the training set): the `rare_k` classes with the fewest boxes, by default one
    eighth of the classes that have ground truth (10 of 80), at least one; counts come from
    `class_counts` (pass the training set's, as CertaintySSOD does) or else from this ground truth; ties
    go by class order. Only classes with ground truth here can be rare. `rare_classes_ap50` is their
    mean VOC AP50, `rare_classes_coco_ap` their mean COCO AP.
    """
    voc = voc_map(ground_truth, predictions, class_names, 0.5)
    coco = coco_metrics(ground_truth, predictions, class_names)
    per_class = {
        name: {"ap50": voc["per_class"][name]["ap"], "coco_ap": coco["per_class"][name]["coco_ap"],
               "coco_ap50": coco["per_class"][name]["ap50"], "num_gt": voc["per_class"][name]["num_gt"],
               "num_pred": voc["per_class"][name]["num_pred"]}
        for name in class_names
    }
    with_gt = [n for n in class_names if per_class[n]["num_gt"] > 0]
    if class_counts is not None:
        missing = [n for n in with_gt if n not in class_counts]
        if missing:
            raise ValueError(f"class_counts lacks classes {missing}; give a count for every class")
        counts = {n: int(class_counts[n]) for n in with_gt}
    else:
        counts = {n: per_class[n]["num_gt"] for n in with_gt}
    k = max(1, math.ceil(len(with_gt) / 8)) if rare_k is None else int(rare_k)
    if k < 1:
        raise ValueError(f"rare_k must be at least 1, got {rare_k}")
    rare = sorted(with_gt, key=lambda n: counts[n])[:k]  # sorted() is stable: ties by class order

    def mean(vals: list[float | None]) -> float | None:
        v = [x for x in vals if x is not None]
        return float(np.mean(v)) if v else None

    num_gt = int(sum(p["num_gt"] for p in per_class.values()))
    return {
        "map50": voc["map"],
        **{k_: coco[k_] for k_ in ("coco_ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                                   "ar1", "ar10", "ar100")},
        "ap_per_iou": coco["ap_per_iou"],
        "per_class": per_class,
        "rare_classes": rare,
        "rare_classes_ap50": mean([per_class[n]["ap50"] for n in rare]),
        "rare_classes_coco_ap": mean([per_class[n]["coco_ap"] for n in rare]),
        "num_images": voc["num_images"],
        "num_gt": num_gt,
        "num_predictions": int(sum(p["num_pred"] for p in per_class.values())),
    }


# ------------------------------------------------------------------------------------------------
# One box set against another
# ------------------------------------------------------------------------------------------------
def _pr_counts(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def precision_recall(predicted: Mapping[str, Annotation], truth: Mapping[str, Annotation],
                     class_names: Sequence[str], iou_threshold: float = 0.5) -> dict:
    """Precision and recall of one box set against another, e.g. pseudo-labels against withheld
    ground truth (CertaintySSOD Fig. 3, where the IoU threshold is swept).

    Greedy matching, COCO style: predicted boxes in descending score (unscored boxes last, in input
    order) each take the free same-class truth box of highest IoU >= iou_threshold. A box matching
    only `difficult` truth is ignored, and unmatched difficult boxes are not misses. Images in
    `truth` missing from `predicted` have no predicted boxes.

    Returns overall and per_class {"precision", "recall", "f1", "tp", "fp", "fn"} (precision None
    with no predicted box, recall None with no truth box), plus "ignored", "iou_threshold" and
    "mean_iou" (mean IoU of the true positives, a localization-quality measure; None without TP).
    """
    classes = class_index(class_names)
    images = image_index(truth, predicted, "predicted", "truth")
    gt = flatten(truth, images, classes, "truth")
    pred = flatten(predicted, images, classes, "predicted")
    order = descending(pred.score)
    pred = Flat(pred.image[order], pred.label[order], pred.xyxy[order], pred.score[order], pred.difficult[order])
    status, _, match_iou = match_predictions(pred, gt, len(classes), iou_threshold, reassign=True)

    C = len(classes)
    tp = np.bincount(pred.label[status == TP], minlength=C)
    fp = np.bincount(pred.label[status == FP], minlength=C)
    npos = np.bincount(gt.label[~gt.difficult], minlength=C)
    fn = npos - tp
    out = _pr_counts(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    out["ignored"] = int((status == IGNORED).sum())
    out["iou_threshold"] = float(iou_threshold)
    tp_iou = match_iou[status == TP]
    out["mean_iou"] = float(tp_iou.mean()) if tp_iou.size else None
    out["per_class"] = {name: _pr_counts(int(tp[c]), int(fp[c]), int(fn[c])) for c, name in enumerate(class_names)}
    return out
