"""Benchmark: train fcos + offline EfficientNet-Lite0 on BCCD and report test-set mAP (issue 3 target).

    .venv/bin/python benchmarks/train_bccd.py                       # the size chosen from the boxes
    .venv/bin/python benchmarks/train_bccd.py --image-size 384 --epochs 20 --threads 2 --device cpu
    .venv/bin/python benchmarks/train_bccd.py --time-steps 3 --image-size 320   # seconds per image only

BCCD (/work/shared/datasets/bccd, a VOC root): trainval = ImageSets/Main/trainval.txt (else every
image not in test.txt), test = ImageSets/Main/test.txt (72 images). A seeded `--val-fraction` of
trainval is held out to pick the best checkpoint (validation mAP50 every `--val-every` epochs); the
test set is touched once, by the best checkpoint. Without --image-size the input size is chosen from
the training boxes (boxloop.loop.input_size). Prints and writes benchmarks/results/train_bccd.json (or
--out): the exact command, the machine, the size chosen and why, the object-size histogram at that
size, the training seconds, the metrics with per-class AP50, and the predicted IoU's calibration
before and after the quality map fitted on validation (train_dataset.test_report).

Written here: the split, the timing and the report. boxloop does the rest (formats.load,
create_detector, fit, predict_paths, evaluate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from boxloop.defaults import run_defaults
from boxloop.detectors import create_detector
from boxloop.predict.feature_cache import FeatureCache
from boxloop.formats import load
from boxloop.loop.input_size import choose_input_size, object_fractions, size_histogram
from boxloop.predict.inference import resolve_device
from boxloop.train.data import Sample
from boxloop.structures import Annotation
from boxloop.train.config import TrainConfig
from boxloop.train.fit import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_dataset import machine as cpu_machine, print_report, test_report  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "datasets" / "bccd"


def machine(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_splits(root: Path, val_fraction: float, seed: int
                ) -> tuple[list[str], dict[str, Annotation], list[str], list[str], list[str], list[str]]:
    """(class names, annotations by image key, train keys, val keys, test keys, loader warnings)."""
    res = load("voc", root / "Annotations", images_root=root / "JPEGImages")
    by_stem = {Path(k).stem: k for k in res.annotations}
    main = root / "ImageSets" / "Main"

    def read(name: str) -> list[str] | None:
        p = main / name
        if not p.is_file():
            return None
        stems = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise SystemExit(f"{p}: {len(missing)} listed images have no annotation, e.g. {missing[:3]}")
        return [by_stem[s] for s in stems]

    test = read("test.txt")
    if test is None:
        raise SystemExit(f"{main / 'test.txt'} is missing: BCCD's fixed test list is needed for a comparable number")
    trainval = read("trainval.txt")
    if trainval is None:
        held = set(test)
        trainval = [k for k in sorted(res.annotations) if k not in held]
    overlap = set(trainval) & set(test)
    if overlap:
        raise SystemExit(f"trainval and test share {len(overlap)} images, e.g. {sorted(overlap)[:3]}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(trainval))
    n_val = int(round(val_fraction * len(trainval)))
    val = sorted(trainval[i] for i in order[:n_val])
    train = sorted(trainval[i] for i in order[n_val:])
    return res.classes, res.annotations, train, val, test, res.warnings


def build(class_names: list[str], image_size: int, backbone: str, detector: str = "fcos",
          options: dict | None = None):
    """The detector on the offline Lite0; min_size=max_size=image_size so it does not resize again."""
    kw = dict(options or {})
    if detector == "fcos":
        kw.setdefault("backbone", backbone)
    return create_detector(detector, num_classes=len(class_names), pretrained_backbone=True,
                           min_size=image_size, max_size=image_size, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BCCD VOC root")
    ap.add_argument("--image-size", type=int, default=None,
                    help="longer image side in pixels (default: chosen from the training boxes)")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    ap.add_argument("--lr", type=float, default=None, help="default 0.01 (sgd) or 0.001 (adamw)")
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--val-every", type=int, default=2, help="epochs between validations")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--detector", default="fcos", help="registry name (fcos, fcos_lite, ...)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="detector builder option (repeatable), e.g. --option trainable_layers=2")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="checkpoints (default /tmp/boxloop_bccd_<size>); an interrupted run resumes from it")
    ap.add_argument("--fresh", action="store_true", help="delete the workdir first instead of resuming")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_bccd.json")
    ap.add_argument("--feature-cache", type=Path, default=None, metavar="DIR",
                    help="train, validate and test on the frozen body's maps cached in DIR (issue 27)")
    ap.add_argument("--no-jitter", action="store_true",
                    help="train without scale and colour jitter (what the feature cache drops; flip kept)")
    ap.add_argument("--time-steps", type=int, default=None,
                    help="only time this many training steps (after one warm-up step), print s/image, exit")
    args = ap.parse_args(argv)

    if not (args.data / "Annotations").is_dir() or not (args.data / "JPEGImages").is_dir():
        print(f"BCCD not found at {args.data} (needs Annotations/ and JPEGImages/); skipping. "
              "Pass --data PATH to a BCCD VOC root.")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    lr = args.lr if args.lr is not None else (0.01 if args.optimizer == "sgd" else 0.001)
    class_names, anns, train_keys, val_keys, test_keys, warnings = load_splits(args.data, args.val_fraction,
                                                                               args.seed)
    images_root = args.data / "JPEGImages"

    def samples(keys: list[str]) -> list[Sample]:
        return [Sample(images_root / k, anns[k]) for k in keys]

    train, val = samples(train_keys), samples(val_keys)
    print(f"BCCD: classes {class_names}; train {len(train)}, val {len(val)}, test {len(test_keys)} images; "
          f"{len(warnings)} loader warnings" + (f" (e.g. {warnings[0]})" if warnings else ""))

    args.options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    fractions = object_fractions(s.annotation for s in train + val)
    choice = None if args.image_size else choose_input_size(fractions, run_defaults(str(device.type)))
    args.image_size = args.image_size or choice.image_size  # type: ignore[union-attr]
    if args.time_steps:
        return time_steps(args, class_names, train, device, lr)

    workdir = args.workdir or Path(f"/tmp/boxloop_bccd_{args.image_size}")
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                         optimizer=args.optimizer, lr=lr, warmup_steps=args.warmup_steps,
                         val_every=args.val_every, seed=args.seed, device=args.device,
                         num_workers=args.num_workers,
                         **({"scale_jitter": None, "color": False} if args.no_jitter else {}))
    cache = FeatureCache(args.feature_cache) if args.feature_cache else None
    torch.manual_seed(args.seed)
    detector = build(class_names, args.image_size, args.backbone, args.detector, args.options)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(detector, train, val, class_names, config, workdir, progress=True, feature_cache=cache)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    vals = [(h["epoch"], h["val_map50"]) for h in result.history if "val_map50" in h]
    print(f"trained {result.step} steps in {train_s:.0f} s (this call); val mAP50 by epoch: "
          + ", ".join(f"{e:.0f}:{m:.3f}" for e, m in vals))

    test = {k: anns[k] for k in test_keys}
    tested = test_report(detector, class_names, test, {k: images_root / k for k in test_keys}, args.image_size,
                         args.batch_size, score_threshold=0.01)
    metrics, calib, test_s = tested["metrics"], tested["calibration_before"], tested["test_inference_seconds"]
    histogram = size_histogram(fractions, args.image_size)
    best = "none" if result.best_map50 is None else f"{result.best_map50:.4f}"
    print(f"\nBCCD test ({len(test_keys)} images), best checkpoint (val mAP50 {best}):")
    print_report(choice, args.image_size, histogram, tested, train_s)
    print(f"  training {train_s / 60:.1f} min ({train_cpu_s / 60:.1f} CPU-min over {torch.get_num_threads()} threads), "
          f"test inference {test_s:.1f} s on {device}")

    report = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {**machine(device), "cpu": cpu_machine()["cpu"]},
        "dataset": {"root": str(args.data), "classes": class_names, "train": len(train), "val": len(val),
                    "test": len(test_keys), "loader_warnings": warnings},
        "train_config": config.to_dict(), "detector_config": dict(detector.config),
        "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu_s, 1),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "steps": result.step, "completed": result.completed,
        "note": "train_seconds covers this call only; a resumed run adds to earlier calls",
        "val_map50_history": [{"epoch": round(e, 2), "map50": m} for e, m in vals],
        "best_val_map50": result.best_map50, "test_inference_seconds": round(test_s, 2),
        "image_size": args.image_size, "size_choice": None if choice is None else choice.to_dict(),
        "object_size_histogram": histogram, "test": metrics,
        "quality_calibration": calib, "quality_calibration_after_map": tested["calibration_after"],
        "quality_map_pairs": tested["quality_map_pairs"],
        "target_map50": 0.85,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def time_steps(args: argparse.Namespace, class_names: list[str], train: list[Sample], device: torch.device,
               lr: float) -> int:
    """Seconds per training image: one warm-up step, then `--time-steps` steps through fit()."""
    import tempfile

    n = args.time_steps
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for steps in (1, 1 + n):
            torch.manual_seed(args.seed)
            detector = build(class_names, args.image_size, args.backbone, args.detector, args.options)
            config = TrainConfig(steps=steps, batch_size=args.batch_size, image_size=args.image_size, lr=lr,
                                 optimizer=args.optimizer, device=args.device, warmup_steps=0,
                                 num_workers=args.num_workers)
            t0 = time.perf_counter()
            fit(detector, train, [], class_names, config, Path(tmp) / str(steps), progress=False)
            times.append(time.perf_counter() - t0)
    per_image = (times[1] - times[0]) / (n * args.batch_size)
    print(f"image_size {args.image_size}, batch {args.batch_size}, {torch.get_num_threads()} threads on {device}: "
          f"{per_image:.3f} s per training image ({1 / per_image:.2f} img/s; 1 step {times[0]:.1f} s, "
          f"{1 + n} steps {times[1]:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
