"""Benchmark: the default `boxloop train` on any labelled dataset, at the input size chosen from its boxes.

    .venv/bin/python benchmarks/train_dataset.py --dataset ../shared/datasets/aquarium
    .venv/bin/python benchmarks/train_dataset.py --dataset ../shared/datasets/aquarium --image-size 320

Prints and writes (benchmarks/results/train_dataset_<name>_<size>.json, or --out) the size chosen and
why, the object-size histogram at that size, test mAP50 and per-class AP50, the training time, and
the predicted IoU against the true IoU (Spearman, MAE) before and after the quality map, on all test
detections scoring >= 0.3 and on those that sit on a labelled box (true IoU >= 0.1).

Layouts (any label format boxloop reads): a root with split folders (`--pool train`, `--test
valid,test`; each split holds images/ and its labels, as Roboflow and Ultralytics export), a VOC root
(Annotations/, JPEGImages/, ImageSets/Main/test.txt), or any root `formats.load` reads with a
stratified `--test-fraction`. The pool splits into train/val as `boxloop init` splits (20%, stratified
by class, seed 0), and trains as `boxloop train` does by default (`loop_config`'s defaults); the test
set is touched once, by the best checkpoint. Written here: the layouts, the timing and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from boxloop.metrics.calibration import quality_calibration
from boxloop.defaults import run_defaults
from boxloop.metrics.evaluate import evaluate
from boxloop.formats import load
from boxloop.formats.yolo import read_class_names
from boxloop.predict.inference import predict_paths
from boxloop.loop.input_size import SizeChoice, choose_input_size, object_fractions, size_histogram
from boxloop.project import stratified_sample
from boxloop.structures import Annotation
from boxloop.train.data import Sample

HERE = Path(__file__).resolve().parent
SPLIT_IMAGES = "images"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the CPU's model name included: lscpu)."""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
            if line.startswith("Model name")), None)
    except OSError:
        cpu = None
    info = {"cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _load_split(root: Path, split: str) -> tuple[list[str], dict[str, Annotation], str]:
    """(classes, annotations keyed 'split/images/name', images root) of one split folder."""
    d = root / split
    names = read_class_names(root)
    classes = [names[0][i] for i in sorted(names[0])] if names else None
    labels = next((d / n for n in ("labels", "_annotations.coco.json", "Annotations") if (d / n).exists()), d)
    res = load(None, labels, images_root=d / SPLIT_IMAGES, classes=classes)
    return res.classes, {f"{split}/{SPLIT_IMAGES}/{k}": a for k, a in res.annotations.items()}, str(root)


def load_dataset(root: Path, pool: Sequence[str], test: Sequence[str], test_fraction: float, seed: int
                 ) -> tuple[list[str], dict[str, Annotation], Path, list[str], list[str]]:
    """(classes, annotations by key, images root the keys are relative to, pool keys, test keys)."""
    if all((root / s / SPLIT_IMAGES).is_dir() for s in [*pool, *test]):
        anns: dict[str, Annotation] = {}
        classes: list[str] = []
        split_of: dict[str, str] = {}
        for s in [*pool, *test]:
            c, a, _ = _load_split(root, s)
            if classes and c != classes:
                raise SystemExit(f"{root / s}: classes {c} differ from {classes}")
            classes = c
            anns.update(a)
            split_of.update({k: s for k in a})
        return (classes, anns, root, sorted(k for k, s in split_of.items() if s in pool),
                sorted(k for k, s in split_of.items() if s in test))
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        res = load("voc", root / "Annotations", images_root=root / "JPEGImages")
        listed = root / "ImageSets" / "Main" / "test.txt"
        if listed.is_file():
            stems = {line.split()[0] for line in listed.read_text().splitlines() if line.strip()}
            test_keys = sorted(k for k in res.annotations if Path(k).stem in stems)
            return (res.classes, res.annotations, root / "JPEGImages",
                    sorted(set(res.annotations) - set(test_keys)), test_keys)
        images, source = root / "JPEGImages", root / "Annotations"
    else:
        images, source = root, root
    res = load(None, source, images_root=images)
    test_keys = sorted(stratified_sample({k: list(a.labels) for k, a in res.annotations.items()}, test_fraction,
                                         np.random.default_rng([seed, 1])))
    return res.classes, res.annotations, images, sorted(set(res.annotations) - set(test_keys)), test_keys


def test_report(detector: Any, class_names: Sequence[str], truth: Mapping[str, Annotation], paths: Mapping[str, Path],
                image_size: int, batch_size: int = 8, score_threshold: float = 0.05) -> dict[str, Any]:
    """mAP and per-class AP on `truth`, and the predicted IoU's calibration with the detector's quality
    map (after) and without it (before), each on all detections >= 0.3 and on those on a labelled box."""
    from dataclasses import replace

    qmap, detector.quality_map = getattr(detector, "quality_map", None), None
    keys = sorted(truth)
    t0 = time.perf_counter()
    raw = dict(predict_paths(detector, [paths[k] for k in keys], image_size, batch_size=batch_size,
                             score_threshold=score_threshold, progress=False, keys=keys))
    seconds = time.perf_counter() - t0
    detector.quality_map = qmap
    mapped = raw if qmap is None else {k: d if d.loc_quality is None else replace(d, loc_quality=qmap(d.loc_quality))
                                       for k, d in raw.items()}
    metrics = evaluate(dict(truth), {k: d.to_annotation(k, list(class_names)) for k, d in mapped.items()},
                       list(class_names))
    return {"metrics": {k: metrics[k] for k in ("map50", "coco_ap", "ap50", "ap75", "ap_small", "ap_medium",
                                                "ap_large", "per_class", "num_images", "num_gt", "num_predictions")},
            "calibration_before": quality_calibration(truth, raw, class_names, min_score=0.3),
            "calibration_after": quality_calibration(truth, mapped, class_names, min_score=0.3) if qmap else None,
            "quality_map_pairs": None if qmap is None else qmap.pairs, "test_inference_seconds": round(seconds, 2)}


def _calib_line(label: str, c: Mapping[str, Any] | None) -> str:
    if not c or not c["n"]:
        return f"    {label}: no detections"
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    m = c["matched"]
    return (f"    {label}: all {c['n']}: Spearman {f(c['spearman'])}, MAE {f(c['mae'])}; on a labelled box "
            f"{m['n']}: Spearman {f(m['spearman'])}, MAE {f(m['mae'])}")


def print_report(choice: SizeChoice | None, image_size: int, histogram: Mapping[str, int], report: Mapping[str, Any],
                 train_seconds: float) -> None:
    """The human-readable summary of test_report and the size choice."""
    if choice is not None:
        print(f"input size {image_size} px, chosen from {choice.objects} labelled boxes: {choice.reason}")
        if choice.warning:
            print(f"  warning: {choice.warning}")
    else:
        print(f"input size {image_size} px (given)")
    print(f"  object sizes at {image_size} px (sqrt(w*h), px): "
          + ", ".join(f"{k}: {v}" for k, v in histogram.items()))
    m = report["metrics"]
    print(f"  test mAP50 {m['map50']:.4f}   COCO AP {m['coco_ap']:.4f}   AP75 {m['ap75']:.4f}   "
          f"training {train_seconds / 60:.1f} min")
    print(f"  {'class':<12} {'AP50':>7} {'gt':>5}")
    for name, pc in m["per_class"].items():
        ap = "-" if pc["ap50"] is None else f"{pc['ap50']:.4f}"
        print(f"  {name:<12} {ap:>7} {pc['num_gt']:>5}")
    print(f"  predicted vs true IoU, test detections scoring >= 0.3 (map fitted on {report['quality_map_pairs']} "
          "validation detections):")
    print(_calib_line("before the map", report["calibration_before"]))
    if report["calibration_after"] is not None:
        print(_calib_line("after the map ", report["calibration_after"]))


def main(argv: list[str] | None = None) -> int:
    from boxloop.cli.options import loop_config
    from boxloop.train.run import train_detector

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True, help="dataset root (see the layouts above)")
    ap.add_argument("--pool", default="train", help="split folders that form the labelled pool (comma-separated)")
    ap.add_argument("--test", default="valid,test", help="split folders that form the test set (comma-separated)")
    ap.add_argument("--test-fraction", type=float, default=0.3, help="a root without splits: stratified test share")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--image-size", type=int, default=None, help="default: chosen from the labelled boxes")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead of the default schedule")
    ap.add_argument("--workdir", type=Path, default=None, help="checkpoints (default /tmp/boxloop_<name>_<size>)")
    ap.add_argument("--fresh", action="store_true", help="delete the workdir first instead of resuming")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if not args.dataset.is_dir():
        print(f"{args.dataset}: no such dataset folder; skipping")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    classes, anns, root, pool, test = load_dataset(args.dataset, split(args.pool), split(args.test),
                                                   args.test_fraction, args.seed)
    val_keys = stratified_sample({k: list(anns[k].labels) for k in pool}, args.val_fraction,
                                 np.random.default_rng([args.seed, 2]))
    train_keys = [k for k in pool if k not in val_keys]
    fractions = object_fractions(anns[k] for k in pool)
    choice = None if args.image_size else choose_input_size(fractions, run_defaults(args.device))
    size = args.image_size or choice.image_size  # type: ignore[union-attr]
    name = args.dataset.resolve().name
    print(f"{name}: classes {classes}; train {len(train_keys)}, val {len(val_keys)}, test {len(test)} images")

    cfg = loop_config(image_size=size, device=args.device, seed=args.seed, steps=args.steps)
    workdir = args.workdir or Path(f"/tmp/boxloop_{name}_{size}")
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    samples = lambda keys: [Sample(root / k, anns[k], key=k) for k in keys]  # noqa: E731
    t0, c0 = time.perf_counter(), time.process_time()
    detector, result = train_detector(cfg.detector_spec(), classes, samples(train_keys), samples(sorted(val_keys)),
                                      cfg.train_config(0), workdir)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    report = test_report(detector, classes, {k: anns[k] for k in test}, {k: root / k for k in test}, size)
    histogram = size_histogram(fractions, size)
    print_report(choice, size, histogram, report, train_s)

    out = args.out or HERE / "results" / f"train_dataset_{name}_{size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": info,
        "dataset": {"root": str(args.dataset), "classes": classes, "train": len(train_keys), "val": len(val_keys),
                    "test": len(test)},
        "image_size": size, "size_choice": None if choice is None else choice.to_dict(),
        "object_size_histogram": histogram, "train_config": cfg.train_config(0).to_dict(),
        "detector_config": dict(detector.config), "steps": result.step, "best_val_map50": result.best_map50,
        "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu_s, 1),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "note": "train_seconds covers this call only; a resumed run adds to earlier calls", **report,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
