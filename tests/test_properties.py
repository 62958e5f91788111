"""Property-based tests (hypothesis): format round trips and box maths (issue 7 item 4).

- Every format's dump -> load returns the same images, negatives and boxes: exactly for VOC, COCO
  and CVAT (coordinates are written with every digit `repr` keeps; COCO boxes are drawn on a 1/4 px
  grid so x + (x2 - x) == x2 holds in floating point), to rounding for YOLO (6 decimals of a
  fraction) and Label Studio (percent floats).
- `structures.iou` is symmetric, in [0, 1], 1 on the diagonal, and agrees with torchvision.ops.box_iou.
- decode(encode(b)) == b for every box coder our detectors use, taken from built detectors:
  FCOS's BoxLinearCoder, Faster R-CNN's RPN and RoI-head BoxCoders, RetinaNet's BoxCoder, and the
  interval coder of the seed-001 head (for sides inside its range; outside they clamp to the range).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from boxloop import formats
from boxloop.structures import Annotation, Boxes, Provenance, Source, iou

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
CLASSES = ["cat", "dog", "Zebra_3", "ünï"]


# -- strategies --------------------------------------------------------------------------------------

@st.composite
def boxes_in(draw, w: int, h: int, grid: float | None, max_boxes: int = 6) -> np.ndarray:
    """(N, 4) xyxy boxes inside a w x h image, each side at least 0.25 px long."""
    n = draw(st.integers(0, max_boxes))
    out = []
    for _ in range(n):
        row = []
        for size in (w, h):
            if grid is None:
                a = draw(st.floats(0, size - 0.25, allow_nan=False, allow_infinity=False))
                b = draw(st.floats(min(a + 0.25, size), size, allow_nan=False, allow_infinity=False))
            else:
                steps = int(size / grid)
                i = draw(st.integers(0, steps - 1))
                j = draw(st.integers(i + 1, steps))
                a, b = i * grid, j * grid
            row.append((a, b))
        (x1, x2), (y1, y2) = row
        out.append([x1, y1, x2, y2])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


@st.composite
def annotation_sets(draw, grid: float | None = 0.25, max_images: int = 4, provenance: bool = True,
                    max_side: int = 800) -> list[Annotation]:
    """A few images (unique stems, some in a subfolder), each labelled (negatives included)."""
    n = draw(st.integers(1, max_images))
    anns = []
    for i in range(n):
        w, h = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
        xyxy = draw(boxes_in(w, h, grid))
        k = len(xyxy)
        labels = tuple(draw(st.lists(st.sampled_from(CLASSES), min_size=k, max_size=k)))
        prov = None
        if provenance and k:
            prov = tuple(
                draw(st.one_of(
                    st.just(Provenance()),
                    st.builds(Provenance, source=st.sampled_from([Source.PSEUDO, Source.PREDICTED]),
                              round=st.integers(0, 9), score=st.floats(0, 1, allow_nan=False)),
                )) for _ in range(k))
        flags = st.lists(st.booleans(), min_size=k, max_size=k)
        name = f"{'sub/' if draw(st.booleans()) else ''}img_{i}.{draw(st.sampled_from(['png', 'jpg']))}"
        anns.append(Annotation(image=name, boxes=Boxes(xyxy, (w, h)), labels=labels, difficult=tuple(draw(flags)),
                               truncated=tuple(draw(flags)), provenance=prov))
    return anns


def _check_same(got: dict[str, Annotation], want: list[Annotation], atol: float = 0.0, flags: bool = True,
                scores: bool = True) -> None:
    assert sorted(got) == sorted(a.image for a in want)
    for a in want:
        b = got[a.image]
        assert b.image_size == a.image_size
        assert len(b) == len(a), a.image  # negatives stay negatives
        if atol:
            np.testing.assert_allclose(b.boxes.xyxy, a.boxes.xyxy, rtol=0, atol=atol)
        else:
            np.testing.assert_array_equal(b.boxes.xyxy, a.boxes.xyxy)
        assert b.labels == a.labels
        if flags:
            assert b.difficult == a.difficult and b.truncated == a.truncated
        if scores:
            for p, q in zip(a.provenance, b.provenance):
                assert (p.score is None) == (q.score is None)
                if p.score is not None:
                    assert math.isclose(p.score, q.score, rel_tol=1e-9, abs_tol=1e-9)


def _write_images(root: Path, anns: list[Annotation]) -> None:
    for a in anns:
        p = root / a.image
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", a.image_size).save(p)


# -- format round trips --------------------------------------------------------------------------------

@SETTINGS
@given(anns=annotation_sets(grid=None))
def test_voc_round_trip_is_exact(anns: list[Annotation], tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("voc")
    formats.dump("voc", anns, CLASSES, out)
    res = formats.load("voc", out)  # sizes from <size>, keys from <filename> under the XML's folder
    assert res.warnings == []
    _check_same(res.annotations, anns)
    for a in anns:  # provenance survives too
        assert res.annotations[a.image].provenance == a.provenance


@SETTINGS
@given(anns=annotation_sets(grid=0.25))
def test_coco_round_trip_is_exact(anns: list[Annotation], tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("coco") / "a.json"
    formats.dump("coco", anns, CLASSES, out)
    res = formats.load("coco", out)
    assert res.warnings == [] and res.classes == CLASSES
    _check_same(res.annotations, anns)
    from pycocotools.coco import COCO

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out))
    assert len(coco.getAnnIds()) == sum(len(a) for a in anns) and len(coco.getImgIds()) == len(anns)


@SETTINGS
@given(anns=annotation_sets(grid=None))
def test_cvat_round_trip_is_exact(anns: list[Annotation], tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("cvat") / "annotations.xml"
    formats.dump("cvat", anns, CLASSES, out)
    res = formats.load("cvat", out)
    assert res.warnings == []
    _check_same(res.annotations, anns, flags=False)


@SETTINGS
@given(anns=annotation_sets(grid=None, provenance=False))
def test_labelstudio_round_trip_to_rounding(anns: list[Annotation], tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("ls") / "tasks.json"
    formats.dump("labelstudio", anns, CLASSES, out)
    res = formats.load("labelstudio", out)
    _check_same(res.annotations, anns, atol=1e-6, flags=False, scores=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(anns=annotation_sets(grid=None, provenance=False, max_side=400))
def test_yolo_round_trip_to_rounding(anns: list[Annotation], tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("yolo")
    _write_images(root / "images", anns)
    formats.dump("yolo", anns, CLASSES, root / "export")
    res = formats.load("yolo", root / "export", root / "images")
    assert res.classes == CLASSES
    # 6 decimals of a fraction of the image: at most 5e-7 of the side per number, two numbers per side
    _check_same(res.annotations, anns, atol=400 * 1e-6, flags=False, scores=False)


# -- IoU -------------------------------------------------------------------------------------------

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def box_arrays(draw, min_n: int = 0, max_n: int = 8, proper: bool = False) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    rows = []
    for _ in range(n):
        x1, y1 = draw(finite), draw(finite)
        if proper:  # width and height well above float noise
            rows.append([x1, y1, x1 + draw(st.floats(1e-2, 1e4)), y1 + draw(st.floats(1e-2, 1e4))])
        else:
            rows.append([x1, y1, draw(finite), draw(finite)])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


@settings(max_examples=150, deadline=None)
@given(a=box_arrays(), b=box_arrays())
def test_iou_symmetric_bounded_and_matches_torchvision(a: np.ndarray, b: np.ndarray) -> None:
    from torchvision.ops import box_iou

    m = iou(a, b)
    assert m.shape == (len(a), len(b))
    assert np.isfinite(m).all() and (m >= 0).all() and (m <= 1 + 1e-12).all()
    np.testing.assert_array_equal(m, iou(b, a).T)
    # torchvision's box_iou assumes x2 >= x1, y2 >= y1; compare on boxes that satisfy it
    fix = lambda x: np.concatenate([np.minimum(x[:, :2], x[:, 2:]), np.maximum(x[:, :2], x[:, 2:])], 1)  # noqa: E731
    fa, fb = fix(a), fix(b)
    ref = box_iou(torch.from_numpy(fa), torch.from_numpy(fb)).numpy()
    ref = np.nan_to_num(ref, nan=0.0)  # 0/0 for two zero-area boxes: ours says 0
    np.testing.assert_allclose(iou(fa, fb), ref, rtol=1e-9, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(a=box_arrays(min_n=1, proper=True))
def test_iou_of_a_box_with_itself_is_one(a: np.ndarray) -> None:
    np.testing.assert_allclose(np.diag(iou(a, a)), 1.0, rtol=1e-12)
    shifted = a + np.array([1, 0, 1, 0]) * (a[:, 2:3] - a[:, 0:1])  # moved right by its own width
    assert (np.diag(iou(a, shifted)) <= 1e-9).all()


def test_iou_hand_computed() -> None:
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [0, 0, 10, 5], [10, 10, 20, 20], [2, 2, 2, 8]]
    np.testing.assert_allclose(iou(a, b), [[25 / 175, 0.5, 0.0, 0.0]])


# -- box coders ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coders() -> dict:
    """The coders as our detectors hold them (tiny detectors, random weights: built in seconds)."""
    from boxloop.detectors import create_detector

    torch.manual_seed(0)
    tiny = dict(pretrained_backbone=False, min_size=64, max_size=96, fpn_channels=32)
    frcnn = create_detector("faster_rcnn", num_classes=2, representation_size=64, **tiny)
    retina = create_detector("retinanet", num_classes=2, **tiny)
    fcos = create_detector("fcos", num_classes=2, pretrained_backbone=False, min_size=64, max_size=96,
                           fpn_channels=32, head_convs=1)
    return {
        "fcos": fcos.box_coder,
        "faster_rcnn.rpn": frcnn.model.rpn.box_coder,
        "faster_rcnn.roi_heads": frcnn.model.roi_heads.box_coder,
        "retinanet": retina.model.box_coder,
    }


def test_coders_are_what_the_detectors_document(coders: dict) -> None:
    from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder

    assert isinstance(coders["fcos"], BoxLinearCoder) and coders["fcos"].normalize_by_size
    assert coders["faster_rcnn.rpn"].weights == (1.0, 1.0, 1.0, 1.0)
    assert coders["faster_rcnn.roi_heads"].weights == (10.0, 10.0, 5.0, 5.0)
    assert isinstance(coders["retinanet"], BoxCoder) and coders["retinanet"].weights == (1.0, 1.0, 1.0, 1.0)


@st.composite
def box_pairs(draw, max_n: int = 8, max_ratio: float = 50.0, gt_inside: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(gt, reference) pairs of proper boxes; sizes within `max_ratio` of each other (BoxCoder clamps
    log-ratios above log(1000/16) in decode). `gt_inside`: FCOS points lie inside their gt box."""
    n = draw(st.integers(1, max_n))
    coord = st.floats(-500, 1500, allow_nan=False)
    size = st.floats(1.0, 500.0)
    gts, refs = [], []
    for _ in range(n):
        gx, gy, gw, gh = draw(coord), draw(coord), draw(size), draw(size)
        rw = draw(st.floats(max(1.0, gw / max_ratio), min(500.0, gw * max_ratio)))
        rh = draw(st.floats(max(1.0, gh / max_ratio), min(500.0, gh * max_ratio)))
        if gt_inside:
            cx = gx + draw(st.floats(0.01, 0.99)) * gw
            cy = gy + draw(st.floats(0.01, 0.99)) * gh
        else:
            cx, cy = draw(coord), draw(coord)
        gts.append([gx, gy, gx + gw, gy + gh])
        refs.append([cx - rw / 2, cy - rh / 2, cx + rw / 2, cy + rh / 2])
    return torch.tensor(gts, dtype=torch.float64), torch.tensor(refs, dtype=torch.float64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=box_pairs(), which=st.sampled_from(["faster_rcnn.rpn", "faster_rcnn.roi_heads", "retinanet"]))
def test_box_coder_decode_inverts_encode(coders: dict, pair, which: str) -> None:
    gt, ref = pair
    coder = coders[which]
    deltas = coder.encode_single(gt, ref)
    back = coder.decode_single(deltas, ref)
    torch.testing.assert_close(back, gt, rtol=1e-9, atol=1e-7)
    # the batched API the RPN and RoI heads call: encode(list per image) / decode(concatenated)
    d2 = torch.cat(coder.encode([gt], [ref]))
    back2 = coder.decode(d2, [ref]).reshape(-1, 4)
    torch.testing.assert_close(back2, gt, rtol=1e-9, atol=1e-7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=box_pairs(gt_inside=True))
def test_fcos_linear_coder_decode_inverts_encode(coders: dict, pair) -> None:
    gt, anchors = pair
    coder = coders["fcos"]
    deltas = coder.encode(anchors, gt)  # torchvision's BoxLinearCoder takes (reference, proposals)
    assert (deltas > 0).all()  # FCOS regresses positive distances from a point inside its box
    torch.testing.assert_close(coder.decode(deltas, anchors), gt, rtol=1e-9, atol=1e-7)


@settings(max_examples=80, deadline=None)
@given(k=st.integers(1, 64), side_range=st.floats(0.1, 2.0), data=st.data())
def test_interval_coder_decode_inverts_encode_within_range(k: int, side_range: float, data) -> None:
    from boxloop.detectors.interval import IntervalBoxCoder

    coder = IntervalBoxCoder(num_intervals=k, side_range=side_range)
    n = data.draw(st.integers(1, 8))
    props, gts = [], []
    for _ in range(n):
        x, y = data.draw(st.floats(-100, 1000)), data.draw(st.floats(-100, 1000))
        w, h = data.draw(st.floats(1.0, 400.0)), data.draw(st.floats(1.0, 400.0))
        p = [x, y, x + w, y + h]
        size = [w, h, w, h]
        # each gt side anywhere in its segment [side - r*size, side + r*size]
        g = [p[i] + data.draw(st.floats(-0.999, 0.999)) * side_range * size[i] for i in range(4)]
        props.append(p)
        gts.append(g)
    proposals = torch.tensor(props, dtype=torch.float64)
    gt = torch.tensor(gts, dtype=torch.float64)
    bins, offsets = coder.encode(gt, proposals)
    assert bins.dtype == torch.int64 and ((bins >= 0) & (bins < k)).all()
    assert (offsets.abs() <= 0.5 + 1e-9).all()
    torch.testing.assert_close(coder.decode_bins(bins, offsets, proposals), gt, rtol=1e-9, atol=1e-7)
    # decode() from logits peaked on the encoded bins, offsets placed in those bins
    logits = torch.full((n, 4, k), -10.0, dtype=torch.float64).scatter(-1, bins.unsqueeze(-1), 10.0)
    offs = torch.zeros((n, 4, k), dtype=torch.float64).scatter(-1, bins.unsqueeze(-1), offsets.unsqueeze(-1))
    torch.testing.assert_close(coder.decode(logits, offs, proposals), gt, rtol=1e-9, atol=1e-7)


def test_interval_coder_clamps_outside_its_range() -> None:
    from boxloop.detectors.interval import IntervalBoxCoder

    coder = IntervalBoxCoder(num_intervals=10, side_range=0.5)
    prop = torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float64)
    gt = torch.tensor([[-80.0, 10.0, 100.0, 300.0]], dtype=torch.float64)  # x1 and y2 beyond the segment
    bins, offsets = coder.encode(gt, prop)
    assert bins.tolist() == [[0, 6, 5, 9]]
    back = coder.decode_bins(bins, offsets, prop)
    torch.testing.assert_close(back, torch.tensor([[-50.0, 10.0, 100.0, 150.0]], dtype=torch.float64))
