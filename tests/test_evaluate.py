"""Tests for boxloop.metrics.evaluate against independent references: the worked example of LocAwareAL
Figure 3.3, hand-computed cases, pycocotools run on JSON files, and a plain-loop VOC devkit port."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from boxloop.metrics.evaluate import coco_metrics, evaluate, precision_recall, voc_ap, voc_map
from boxloop.structures import Annotation, Boxes, Provenance, Source

SIZE = (100, 100)


def ann(image: str, boxes, labels, scores=None, difficult=None, size=SIZE) -> Annotation:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    prov = None
    if scores is not None:
        prov = tuple(Provenance(source=Source.PREDICTED, score=None if s is None else float(s)) for s in scores)
    return Annotation(image=image, boxes=Boxes(boxes, size), labels=tuple(labels), difficult=difficult,
                      provenance=prov)


# ------------------------------------------------------------------------------------------------
# LocAwareAL, Figure 3.3 (/work/shared/seeds/003_*.txt, section 3.3, around line 690): 24 detections
# of one class ranked by confidence, 7 TP and 17 FP, with the columns Acc TP, Acc FP, P, R, Pinterp.
# R of the first TP is 0.0666 = 1/15, so the class has 15 ground-truth objects. The document prints
# its numbers truncated to 4 decimals. The AP is eq. 3.5 applied to the table: recall rises in steps of
# 1/15 at each of the 7 TPs, under Pinterp 1 (1st), 0.6666 (2nd), 0.4285 (3rd to 6th) and 0.3043
# (7th). The figure prints no final AP, so the reference is that sum over the table's own Pinterp
# column: (1 + 0.6666 + 4 * 0.4285 + 0.3043) / 15 = 0.24565..; exactly (1 + 2/3 + 4 * 3/7 + 7/23) / 15
# = 0.245687 (the same toy example is the 24.56 % all-point AP of Padilla et al.'s metrics survey).
# ------------------------------------------------------------------------------------------------
FIG33 = [  # confidence %, TP, P, R, Pinterp   (as printed)
    (95, 1, 1, 0.0666, 1), (95, 0, 0.5, 0.0666, 1), (91, 1, 0.6666, 0.1333, 0.6666),
    (88, 0, 0.5, 0.1333, 0.6666), (84, 0, 0.4, 0.1333, 0.6666), (80, 0, 0.3333, 0.1333, 0.6666),
    (78, 0, 0.2857, 0.1333, 0.6666), (74, 0, 0.25, 0.1333, 0.6666), (71, 0, 0.2222, 0.1333, 0.6666),
    (70, 1, 0.3, 0.2, 0.4285), (67, 0, 0.2727, 0.2, 0.4285), (62, 1, 0.3333, 0.2666, 0.4285),
    (54, 1, 0.3846, 0.3333, 0.4285), (48, 1, 0.4285, 0.4, 0.4285), (45, 0, 0.4, 0.4, 0.4285),
    (45, 0, 0.375, 0.4, 0.4285), (44, 0, 0.3529, 0.4, 0.4285), (44, 0, 0.3333, 0.4, 0.4285),
    (43, 0, 0.3157, 0.4, 0.4285), (38, 0, 0.3, 0.4, 0.4285), (35, 0, 0.2857, 0.4, 0.4285),
    (23, 0, 0.2727, 0.4, 0.4285), (18, 1, 0.3043, 0.4666, 0.3043), (14, 0, 0.2916, 0.4666, 0.3043),
]
FIG33_NUM_GT = 15
FIG33_AP_FROM_TABLE = (1 * 1 + 1 * 0.6666 + 4 * 0.4285 + 1 * 0.3043) / 15
FIG33_AP_EXACT = (1 + 2 / 3 + 4 * 3 / 7 + 7 / 23) / 15


def test_voc_ap_reproduces_seed003_figure_3_3():
    tp = np.array([row[1] for row in FIG33])
    acc_tp, acc_fp = np.cumsum(tp), np.cumsum(1 - tp)
    precision = acc_tp / (acc_tp + acc_fp)
    recall = acc_tp / FIG33_NUM_GT
    # the P and R columns as printed (truncated to 4 decimals)
    assert np.allclose(precision, [r[2] for r in FIG33], atol=1e-4)
    assert np.allclose(recall, [r[3] for r in FIG33], atol=1e-4)
    # the Pinterp column: max precision at recall >= R
    pinterp = [precision[recall >= r - 1e-12].max() for r in recall]
    assert np.allclose(pinterp, [r[4] for r in FIG33], atol=1e-4)
    ap = voc_ap(recall, precision)
    assert ap == pytest.approx(FIG33_AP_EXACT, abs=1e-12)
    assert ap == pytest.approx(FIG33_AP_FROM_TABLE, abs=1e-4)
    assert ap == pytest.approx(0.245687, abs=1e-6)


def test_voc_map_reproduces_seed003_figure_3_3_end_to_end():
    """The same table through boxes: 15 objects; each TP sits on its own object, each FP on empty
    ground. Equal confidences keep their table order (a stable sort)."""
    gt_boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(FIG33_NUM_GT)]  # 15 objects in a row
    pred_boxes, scores, next_obj = [], [], 0
    for k, (conf, is_tp, *_rest) in enumerate(FIG33):
        if is_tp:
            pred_boxes.append(gt_boxes[next_obj])
            next_obj += 1
        else:
            pred_boxes.append([2 * k, 60, 2 * k + 5, 65])  # below every object
        scores.append(conf / 100)
    size = (200, 100)
    gt = {"img": ann("img", gt_boxes, ["obj"] * 15, size=size)}
    pred = {"img": ann("img", pred_boxes, ["obj"] * 24, scores=scores, size=size)}
    res = voc_map(gt, pred, ["obj"])
    assert res["map"] == pytest.approx(FIG33_AP_EXACT, abs=1e-12)
    pc = res["per_class"]["obj"]
    assert pc["num_gt"] == 15 and pc["num_pred"] == 24
    assert np.allclose(pc["precision"], [r[2] for r in FIG33], atol=1e-4)
    assert np.allclose(pc["recall"], [r[3] for r in FIG33], atol=1e-4)


def test_voc_ap_edge_cases():
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap([1.0], [1.0]) == 1.0  # one perfect detection of the only object
    assert voc_ap([0.5, 0.5], [1.0, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pair up"):
        voc_ap([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        voc_ap([0.5, 0.2], [1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# Hand-computed VOC case
# ------------------------------------------------------------------------------------------------
def hand_case():
    gt = {
        # a (normal), a (difficult), b
        "img1": ann("img1", [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], ["a", "a", "b"],
                    difficult=[False, True, False]),
        "img2": ann("img2", [[50, 50, 70, 70]], ["a"]),
        "img3": ann("img3", [], []),  # negative
        "img4": ann("img4", [[0, 0, 20, 20]], ["b"]),  # gets no predictions at all
    }
    pred = {
        "img1": ann("img1",
                    [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50]],
                    ["a", "a", "a", "b", "c"], scores=[0.9, 0.8, 0.95, 0.6, 0.99]),
        "img2": ann("img2", [[50, 50, 70, 69]], ["a"], scores=[0.7]),  # IoU 0.95
        "img3": ann("img3", [[0, 0, 5, 5]], ["a"], scores=[0.85]),  # on a negative: FP
    }
    return gt, pred


def test_voc_map_hand_computed():
    gt, pred = hand_case()
    res = voc_map(gt, pred, ["a", "b", "c"])
    a, b, c = (res["per_class"][k] for k in "abc")
    # class a, 2 positives (the difficult one does not count). By score: 0.95 on the difficult box
    # -> ignored; 0.9 TP; 0.85 on the negative FP; 0.8 duplicate FP; 0.7 TP.
    # recall .5 .5 .5 1, precision 1 .5 .333 .5 -> envelope 1 up to R=.5, .5 up to R=1 -> AP .75
    assert a["num_gt"] == 2 and a["num_pred"] == 5
    assert np.allclose(a["recall"], [0.5, 0.5, 0.5, 1.0])
    assert np.allclose(a["precision"], [1.0, 0.5, 1 / 3, 0.5])
    assert a["ap"] == pytest.approx(0.75)
    # class b: 2 positives, one found (img4 has no predictions) -> AP .5
    assert b["num_gt"] == 2 and b["ap"] == pytest.approx(0.5)
    # class c: a prediction but no ground truth -> undefined, left out of the mean
    assert c["num_gt"] == 0 and c["ap"] is None
    assert res["map"] == pytest.approx(0.625)
    assert res["num_images"] == 4


def test_voc_map_iou_threshold_and_devkit_rule():
    # a detection looks only at its best-IoU object; if that one is taken it is a FP even though a
    # second object overlaps it enough (VOC devkit rule)
    gt = {"i": ann("i", [[0, 0, 10, 10], [4, 0, 14, 10]], ["a", "a"])}
    pred = {"i": ann("i", [[0, 0, 10, 10], [1, 0, 11, 10]], ["a", "a"], scores=[0.9, 0.8])}
    # IoU(det2, obj1) = 90/110 = .818, IoU(det2, obj2) = 70/130 = .538 >= .5 but not its best
    res = voc_map(gt, pred, ["a"])
    assert res["per_class"]["a"]["ap"] == pytest.approx(0.5)  # TP, FP -> R .5 at P 1
    # COCO-style precision_recall reassigns the second detection to the free object
    pr = precision_recall(pred, gt, ["a"], 0.5)
    assert (pr["tp"], pr["fp"], pr["fn"]) == (2, 0, 0)
    # a stricter threshold makes the first hit the only one
    assert voc_map(gt, pred, ["a"], iou_threshold=0.9)["map"] == pytest.approx(0.5)
    assert voc_map(gt, pred, ["a"], iou_threshold=1.0)["map"] == pytest.approx(0.5)  # IoU exactly 1 counts


def test_empty_cases():
    gt, pred = hand_case()
    names = ["a", "b", "c"]
    # no predictions at all: 0.0 where ground truth exists, not a crash
    r = evaluate(gt, {}, names)
    assert r["map50"] == 0.0 and r["coco_ap"] == 0.0 and r["ap50"] == 0.0
    assert r["per_class"]["a"]["ap50"] == 0.0 and r["per_class"]["a"]["coco_ap"] == 0.0
    assert r["per_class"]["c"]["ap50"] is None and r["per_class"]["c"]["coco_ap"] is None
    assert r["ap_small"] == 0.0 and r["ap_large"] is None  # no gt box is large
    # no ground-truth box anywhere (only negatives): every AP undefined
    neg = {"n": ann("n", [], [])}
    r = evaluate(neg, {"n": ann("n", [[0, 0, 5, 5]], ["a"], scores=[0.5])}, names)
    assert r["map50"] is None and r["coco_ap"] is None and r["ap_per_iou"]["0.50"] is None
    assert r["rare_classes"] == [] and r["rare_classes_ap50"] is None
    # nothing at all
    r = evaluate({}, {}, names)
    assert r["map50"] is None and r["coco_ap"] is None and r["num_images"] == 0
    json.dumps(r, allow_nan=False)


def test_bad_input_messages():
    gt, pred = hand_case()
    with pytest.raises(ValueError, match=r"img1.*'zebra'.*class_names"):
        voc_map({"img1": ann("img1", [[0, 0, 1, 1]], ["zebra"])}, {}, ["a"])
    with pytest.raises(ValueError, match=r"predictions holds 1 image.*'elsewhere'"):
        voc_map(gt, {**pred, "elsewhere": ann("elsewhere", [], [])}, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no score"):
        voc_map(gt, {"img2": ann("img2", [[0, 0, 5, 5]], ["a"])}, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"ground_truth\['u'\] is None"):
        voc_map({**gt, "u": None}, pred, ["a", "b", "c"])
    with pytest.raises(ValueError, match="duplicates"):
        voc_map(gt, pred, ["a", "a"])


# ------------------------------------------------------------------------------------------------
# Constructed random case: pycocotools on JSON files, and a plain-loop VOC devkit port
# ------------------------------------------------------------------------------------------------
CLASSES = ["cat", "dog", "bird", "fish"]


def random_case(seed: int = 0, n_images: int = 14):
    rng = np.random.default_rng(seed)
    gt, pred = {}, {}
    for i in range(n_images):
        key = f"dir/img{i:02d}.jpg"
        size = (int(rng.integers(120, 400)), int(rng.integers(120, 400)))
        w, h = size
        n = 0 if i in (3, 7) else int(rng.integers(1, 7))  # two negatives
        xy = rng.uniform(0, [w * 0.7, h * 0.7], size=(n, 2))
        wh = rng.uniform(4, [w * 0.5 + 4, h * 0.5 + 4], size=(n, 2))  # small, medium and large
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1)
        labels = [CLASSES[j] for j in rng.integers(0, 3, size=n)]  # 'fish' never in ground truth
        difficult = (rng.random(n) < 0.1).tolist()
        gt[key] = Annotation(key, Boxes(boxes, size), tuple(labels), difficult=difficult)
        if i == 5:
            continue  # an image without predictions
        # detections: jittered copies (some duplicated, some relabelled), plus random false positives
        pb, pl = [], []
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):
                scale = np.array([b[2] - b[0], b[3] - b[1]] * 2)
                pb.append(b + rng.normal(0, 0.12, 4) * scale)
                pl.append(lab if rng.random() > 0.15 else CLASSES[int(rng.integers(0, 4))])
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, [w - 20, h - 20])
            pb.append([x, y, x + rng.uniform(5, 60), y + rng.uniform(5, 60)])
            pl.append(CLASSES[int(rng.integers(0, 4))])
        pb = np.asarray(pb, dtype=np.float64).reshape(-1, 4)
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        scores = np.round(rng.random(len(pb)), 3)  # rounded: some ties
        pred[key] = Annotation(key, Boxes(pb, size), tuple(pl),
                               provenance=tuple(Provenance(Source.PREDICTED, score=float(s)) for s in scores))
    return gt, pred


def write_coco_json(gt, pred, tmp_path: Path) -> tuple[Path, Path]:
    """COCO files written independently of boxloop.metrics.evaluate; difficult -> iscrowd (the module's
    documented convention)."""
    cat_id = {n: i + 1 for i, n in enumerate(CLASSES)}
    images, anns, results = [], [], []
    for img_id, (key, a) in enumerate(gt.items(), start=1):
        images.append({"id": img_id, "file_name": key, "width": a.image_size[0], "height": a.image_size[1]})
        for (x1, y1, x2, y2), lab, d in zip(a.boxes.xyxy.tolist(), a.labels, a.difficult):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[lab],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(d)})
        p = pred.get(key)
        if p is not None:
            for (x1, y1, x2, y2), lab, s in zip(p.boxes.xyxy.tolist(), p.labels, p.scores.tolist()):
                results.append({"image_id": img_id, "category_id": cat_id[lab],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "results.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns,
                                   "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}))
    res_file.write_text(json.dumps(results))
    return gt_file, res_file


def test_coco_metrics_agrees_with_pycocotools_on_json_files(tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, pred = random_case(0)
    gt_file, res_file = write_coco_json(gt, pred, tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(res_file))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = coco_metrics(gt, pred, CLASSES)
    assert capsys.readouterr().out == ""  # pycocotools' printing is silenced
    keys = ["coco_ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100"]
    for k, ref in zip(keys, ev.stats[:9]):
        assert ref > -1, k  # the case has small, medium and large objects
        assert ours[k] == pytest.approx(ref, abs=1e-12), k
    assert 0.05 < ours["coco_ap"] < 0.95  # a non-trivial case
    p = ev.eval["precision"][:, :, :, 0, 2]
    for t, key in enumerate(ours["ap_per_iou"]):
        ref = p[t][p[t] > -1].mean()
        assert ours["ap_per_iou"][key] == pytest.approx(ref, abs=1e-12)
    assert list(ours["ap_per_iou"]) == [f"{0.5 + 0.05 * i:.2f}" for i in range(10)]
    assert ours["ap_per_iou"]["0.50"] == pytest.approx(ours["ap50"], abs=1e-12)
    assert ours["ap_per_iou"]["0.75"] == pytest.approx(ours["ap75"], abs=1e-12)
    for k, name in enumerate(CLASSES):
        pk = p[:, :, k]
        if (pk > -1).any():
            assert ours["per_class"][name]["coco_ap"] == pytest.approx(pk[pk > -1].mean(), abs=1e-12)
            assert ours["per_class"][name]["ap50"] == pytest.approx(pk[0][pk[0] > -1].mean(), abs=1e-12)
        else:
            assert name == "fish" and ours["per_class"][name]["coco_ap"] is None


def devkit_voc_ap_loop(gt, pred, cls: str, thr: float = 0.5) -> float | None:
    """A plain port of the VOC devkit's evaluation of one class (VOCevaldet.m): loops, no tricks."""
    recs = {}
    npos = 0
    for key, a in gt.items():
        boxes = [b for b, l in zip(a.boxes.xyxy.tolist(), a.labels) if l == cls]
        diff = [d for d, l in zip(a.difficult, a.labels) if l == cls]
        recs[key] = {"bb": boxes, "diff": diff, "det": [False] * len(boxes)}
        npos += sum(not d for d in diff)
    dets = []
    for key, a in pred.items():
        for b, l, s in zip(a.boxes.xyxy.tolist(), a.labels, a.scores.tolist()):
            if l == cls:
                dets.append((s, key, b))
    dets.sort(key=lambda d: -d[0])  # Python's sort is stable, like the module's
    tp, fp = [], []
    for s, key, b in dets:
        r = recs[key]
        ovmax, jmax = -1.0, -1
        for j, g in enumerate(r["bb"]):
            iw = min(b[2], g[2]) - max(b[0], g[0])
            ih = min(b[3], g[3]) - max(b[1], g[1])
            if iw > 0 and ih > 0:
                inter = iw * ih
                ov = inter / ((b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
            else:
                ov = 0.0
            if ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax >= thr:
            if r["diff"][jmax]:
                continue  # neither TP nor FP
            if not r["det"][jmax]:
                r["det"][jmax] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    if npos == 0:
        return None
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = list(ctp / npos)
    prec = [t / (t + f) for t, f in zip(ctp, cfp)]
    # VOCdevkit VOCap.m, written out
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.5, 0.75])
def test_voc_map_agrees_with_devkit_loop(seed, thr):
    gt, pred = random_case(seed)
    res = voc_map(gt, pred, CLASSES, iou_threshold=thr)
    refs = {}
    for name in CLASSES:
        refs[name] = devkit_voc_ap_loop(gt, pred, name, thr)
        ours = res["per_class"][name]["ap"]
        if refs[name] is None:
            assert ours is None
        else:
            assert ours == pytest.approx(refs[name], abs=1e-12), name
    valid = [v for v in refs.values() if v is not None]
    assert res["map"] == pytest.approx(np.mean(valid), abs=1e-12)


def test_evaluate_keys_json_and_rare_classes():
    gt, pred = random_case(1)
    r = evaluate(gt, pred, CLASSES)
    text = json.dumps(r, allow_nan=False)  # plain JSON
    assert json.loads(text) == r
    for k in ("map50", "coco_ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ap_per_iou",
              "per_class", "rare_classes", "rare_classes_ap50"):
        assert k in r
    assert r["map50"] == pytest.approx(voc_map(gt, pred, CLASSES)["map"])
    assert set(r["per_class"]["cat"]) >= {"ap50", "coco_ap", "num_gt"}
    counts = {n: r["per_class"][n]["num_gt"] for n in CLASSES}
    # 3 classes with ground truth -> ceil(3/8) = 1 rarest class
    rarest = min((n for n in CLASSES if counts[n] > 0), key=lambda n: counts[n])
    assert r["rare_classes"] == [rarest]
    assert r["rare_classes_ap50"] == r["per_class"][rarest]["ap50"]
    r2 = evaluate(gt, pred, CLASSES, rare_k=2, class_counts={"cat": 1, "dog": 100, "bird": 5, "fish": 0})
    assert r2["rare_classes"] == ["cat", "bird"]  # fish has no ground truth here, so it cannot be rare
    assert r2["rare_classes_ap50"] == pytest.approx(np.mean([r["per_class"]["cat"]["ap50"],
                                                             r["per_class"]["bird"]["ap50"]]))


# ------------------------------------------------------------------------------------------------
# precision_recall
# ------------------------------------------------------------------------------------------------
def test_precision_recall_hand_made():
    truth = {
        "img1": ann("img1", [[0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 60]], ["a", "a", "b"]),
        "img2": ann("img2", [[0, 0, 10, 10]], ["b"]),  # nothing predicted here
        "img3": ann("img3", [], []),  # negative
    }
    predicted = {
        "img1": ann("img1", [[3, 0, 13, 10], [4, 0, 14, 10], [80, 80, 90, 90]], ["a", "a", "b"],
                    scores=[0.9, 0.8, 0.7]),
        "img3": ann("img3", [[0, 0, 5, 5]], ["a"], scores=[0.5]),
    }
    # p1 [3,0,13,10]: IoU 70/130=.538 with g1, 80/120=.667 with g2 -> takes g2.
    # p2 [4,0,14,10]: IoU 60/140=.429 with g1, 90/110=.818 with g2 (taken).
    r = precision_recall(predicted, truth, ["a", "b"], iou_threshold=0.4)
    # at 0.4, p2 takes the free g1
    assert r["per_class"]["a"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "tp": 2, "fp": 1, "fn": 0}
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": None, "tp": 0, "fp": 1, "fn": 2}
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 2)
    assert r["precision"] == 0.5 and r["recall"] == 0.5
    assert r["mean_iou"] == pytest.approx((80 / 120 + 60 / 140) / 2)
    # at 0.5, p2 finds nothing free above the threshold
    r = precision_recall(predicted, truth, ["a", "b"], iou_threshold=0.5)
    assert (r["per_class"]["a"]["tp"], r["per_class"]["a"]["fp"], r["per_class"]["a"]["fn"]) == (1, 2, 1)
    assert r["mean_iou"] == pytest.approx(80 / 120)
    # unscored boxes (e.g. human labels compared with each other) are allowed; difficult ignored
    truth_d = {"i": ann("i", [[0, 0, 10, 10], [20, 20, 30, 30]], ["a", "a"], difficult=[False, True])}
    pred_d = {"i": ann("i", [[0, 0, 10, 10], [20, 20, 30, 30]], ["a", "a"])}
    r = precision_recall(pred_d, truth_d, ["a"])
    assert (r["tp"], r["fp"], r["fn"], r["ignored"]) == (1, 0, 0, 1) and r["precision"] == 1.0
    # nothing predicted: precision undefined, recall 0
    r = precision_recall({}, truth, ["a", "b"])
    assert r["precision"] is None and r["recall"] == 0.0 and r["fn"] == 4


def coco_greedy_loop(predicted, truth, cls, thr):
    """Plain loop reference for precision_recall: each box, by descending score, takes the free
    non-difficult truth box of highest IoU >= thr; else ignored if it hits a difficult box."""
    from boxloop.structures import iou

    tp = fp = 0
    npos = 0
    for key, t in truth.items():
        g = np.array([b for b, l in zip(t.boxes.xyxy.tolist(), t.labels) if l == cls]).reshape(-1, 4)
        gd = [d for d, l in zip(t.difficult, t.labels) if l == cls]
        npos += sum(not d for d in gd)
        p = predicted.get(key)
        if p is None:
            continue
        items = sorted([(s, b) for b, l, s in zip(p.boxes.xyxy.tolist(), p.labels, p.scores.tolist()) if l == cls],
                       key=lambda x: -x[0])
        taken = [False] * len(g)
        for s, b in items:
            ious = iou(np.array([b]), g)[0] if len(g) else np.zeros(0)
            best, bj = -1.0, -1
            for j in range(len(g)):
                if not gd[j] and not taken[j] and ious[j] >= thr and ious[j] > best:
                    best, bj = ious[j], j
            if bj >= 0:
                taken[bj] = True
                tp += 1
            elif any(gd[j] and ious[j] >= thr for j in range(len(g))):
                pass
            else:
                fp += 1
    return tp, fp, npos - tp


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("thr", [0.3, 0.5])
def test_precision_recall_agrees_with_loop(seed, thr):
    gt, pred = random_case(seed, n_images=20)
    r = precision_recall(pred, gt, CLASSES, thr)
    for name in CLASSES:
        c = r["per_class"][name]
        assert (c["tp"], c["fp"], c["fn"]) == coco_greedy_loop(pred, gt, name, thr), name


# ------------------------------------------------------------------------------------------------
# Scale
# ------------------------------------------------------------------------------------------------
def test_100k_predictions_in_seconds():
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(20)]
    gt, pred = {}, {}
    for i in range(2000):
        key = f"{i}"
        g = rng.uniform(0, 400, (10, 2))
        gb = np.concatenate([g, g + rng.uniform(10, 80, (10, 2))], axis=1)
        glab = rng.integers(0, 20, 10)
        gt[key] = Annotation(key, Boxes(gb, (512, 512)), tuple(names[j] for j in glab))
        pb = np.repeat(gb, 5, axis=0) + rng.normal(0, 4, (50, 4))
        plab = np.repeat(glab, 5)
        pred[key] = Annotation(key, Boxes(pb, (512, 512)), tuple(names[j] for j in plab),
                               provenance=tuple(Provenance(Source.PREDICTED, score=float(s)) for s in rng.random(50)))
    t0 = time.perf_counter()
    res = voc_map(gt, pred, names)
    t_voc = time.perf_counter() - t0
    t0 = time.perf_counter()
    pr = precision_recall(pred, gt, names)
    t_pr = time.perf_counter() - t0
    assert sum(v["num_pred"] for v in res["per_class"].values()) == 100_000
    assert 0.0 < res["map"] < 1.0 and pr["tp"] > 0
    # generous bounds: the test machine's cores are shared (measured about 1 s each when idle)
    assert t_voc < 15 and t_pr < 15, (t_voc, t_pr)


def test_precision_recall_crowded_case_agrees_with_loop():
    """Heavily overlapping objects, where the COCO rule (take the best *free* box) and the VOC rule
    (look only at the best box) part ways: the exact sequential path must match the loop."""
    rng = np.random.default_rng(7)
    gt, pred = {}, {}
    for i in range(30):
        key = f"crowd{i}"
        n = int(rng.integers(2, 8))
        xy = rng.uniform(20, 40, (n, 2))
        gb = np.concatenate([xy, xy + rng.uniform(20, 30, (n, 2))], axis=1)
        glab = [CLASSES[j] for j in rng.integers(0, 2, n)]
        gt[key] = Annotation(key, Boxes(gb, SIZE), tuple(glab), difficult=(rng.random(n) < 0.15).tolist())
        k = int(rng.integers(0, 10))
        src = rng.integers(0, n, k)
        pb = gb[src] + rng.normal(0, 3, (k, 4))
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        pred[key] = Annotation(key, Boxes(pb, SIZE), tuple(glab[j] for j in src),
                               provenance=tuple(Provenance(Source.PREDICTED, score=float(s)) for s in rng.random(k)))
    reassigned = 0
    for thr in (0.3, 0.5, 0.7):
        r = precision_recall(pred, gt, CLASSES, thr)
        voc = voc_map(gt, pred, CLASSES, thr)
        for name in CLASSES:
            c = r["per_class"][name]
            assert (c["tp"], c["fp"], c["fn"]) == coco_greedy_loop(pred, gt, name, thr), (name, thr)
            rec = voc["per_class"][name]["recall"]
            voc_tp = round(rec[-1] * voc["per_class"][name]["num_gt"]) if rec.size and c["tp"] + c["fn"] else 0
            reassigned += c["tp"] - voc_tp
    assert reassigned > 0  # the case does exercise reassignment
