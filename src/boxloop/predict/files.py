"""Prediction files: a model's predictions for a folder of images written as VOC XML (one file
per image, `<confidence>` per object, LocAwareAL Figure 6.3) or a COCO results list, and a
(ground truth, predictions) pair of files read back for `boxloop evaluate`.

Written by hand: the pairing of the two sides by image, and leaving out (and naming) the images that
do not decode; parsing and writing are `boxloop.formats`, prediction is `boxloop.predict.inference`, and
`boxloop.outputs` writes beside a user's files without overwriting them.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Sequence

from boxloop.structures import Annotation, Source


def write_predictions(detector, class_names: Sequence[str], images: Path, out: Path, fmt: str = "voc",
                      threshold: float = 0.3, image_size: int = 512, batch_size: int = 8,
                      device: str = "auto", progress: bool = True, overwrite: bool = False,
                      strict: bool = False, scoring=None, checkpoint: Path | None = None
                      ) -> tuple[Path, int, int, list[tuple[str, str]]]:
    """Predict every image under `images`; returns (where written, images, boxes, skipped).

    An image that does not decode is left out and listed in `skipped` as (path, problem), or with
    `strict` stops everything before a file is written. A file already in `out` is never replaced
    unless `overwrite`. With `scoring` (a scale.ray_scoring.RayScoring), on Ray actors that load
    `checkpoint`, to the same predictions."""
    from boxloop import formats
    from boxloop.images import ImageError, list_images
    from boxloop.predict.inference import predict_paths
    from boxloop.outputs import staged_output

    if fmt not in ("voc", "coco"):
        raise ValueError(f"--format must be voc or coco, got {fmt!r}")
    images = Path(images)
    out = Path(out)
    rels = list_images(images)
    if not rels:
        raise ValueError(f"{images} holds no images ({', '.join(sorted({'.jpg', '.png', '.tif'}))} ...)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; pass a folder for the predictions")
    skipped: list[tuple[str, str]] = []

    def skip(path: Path, problem: str) -> None:
        if strict:
            raise ImageError(path, problem, "replace or remove it, or run without --strict to leave it out")
        skipped.append((path.relative_to(images).as_posix(), problem))

    anns: list[Annotation] = []
    paths = [images / r for r in rels]
    if scoring is not None:
        results = scoring.score_all(checkpoint, paths, image_size, batch_size, threshold, device, on_skip=skip)
    else:
        results = predict_paths(detector, paths, image_size, batch_size=batch_size, device=device,
                                score_threshold=threshold, progress=progress, on_skip=skip)
    for path, det in results:
        rel = path.relative_to(images).as_posix()
        anns.append(det[det.scores >= threshold].to_annotation(rel, list(class_names), source=Source.PREDICTED))
    with staged_output(out, overwrite) as stage:
        if fmt == "voc":
            formats.dump("voc", anns, list(class_names), stage, images_root=images)
        else:
            from boxloop.formats.coco import dump_coco, dump_coco_results

            gt = dump_coco([Annotation(image=a.image, boxes=a.boxes.__class__.empty(a.image_size)) for a in anns],
                           list(class_names), stage / "images.json")
            dump_coco_results(anns, list(class_names), stage / "results.json", coco_gt_path=gt)
    path = out if fmt == "voc" else out / "results.json"
    return path, len(anns), sum(len(a) for a in anns), skipped


def load_pair(ground_truth: Path, predictions: Path, fmt: str | None = None
              ) -> tuple[dict[str, Annotation], dict[str, Annotation], list[str]]:
    """(truth, predictions, class names) keyed alike. Predictions may be VOC XML with <confidence>,
    a COCO dataset file with `score`s, or a COCO results list (ids from the ground-truth file)."""
    import json

    from boxloop import formats

    fmt = fmt or formats.detect_format(ground_truth)
    truth_res = formats.load(fmt, ground_truth)
    classes = truth_res.classes
    truth = truth_res.annotations
    predictions = Path(predictions)
    if predictions.is_file() and predictions.suffix.lower() == ".json" and \
            isinstance(json.loads(predictions.read_text() or "null"), list):
        if fmt != "coco":
            raise ValueError(f"{predictions} is a COCO results list; evaluate it against a COCO ground-truth file")
        from boxloop.formats.coco import load_coco_results

        preds = load_coco_results(predictions, coco_gt_path=ground_truth)
    else:
        preds = formats.load(formats.detect_format(predictions), predictions, classes=classes).annotations
    # pair by key, else by file stem (VOC keys come from <filename>, which tools write differently)
    stems = {PurePosixPath(k).stem: k for k in truth}
    paired: dict[str, Annotation] = {}
    unknown = []
    for key, ann in preds.items():
        target = key if key in truth else stems.get(PurePosixPath(key).stem)
        if target is None:
            unknown.append(key)
        else:
            paired[target] = ann
    if unknown:
        raise ValueError(f"{predictions}: predictions for {len(unknown)} image(s) not in the ground truth "
                         f"{ground_truth}: {', '.join(sorted(unknown)[:5])}")
    return truth, paired, classes
