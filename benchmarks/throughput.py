"""Benchmark: detector throughput in images/s, per detector, on CPU and (when present) CUDA (issue 3 item 7).

    .venv/bin/python benchmarks/throughput.py                          # every device present
    .venv/bin/python benchmarks/throughput.py --device cpu --images 16 --detectors fcos
    .venv/bin/python benchmarks/throughput.py --device cuda --image-size 480 --batch-size 32 --images 512

For each detector (fcos, faster_rcnn, retinanet; offline Lite0 backbone, min_size=max_size=image_size):
- train: images/s of `train.fit` steps (decode + augment in the DataLoader, loss, backward, SGD step),
  after one warm-up step;
- forward: images/s of `detector.predict` on tensors already decoded, resized and on the device
  (the model alone: backbone, head, our postprocessing that keeps class_probs/loc_quality/features);
- torchvision: images/s of the wrapped torchvision model's own eval forward on the same tensors
  (its default postprocessing, which keeps no class vector, IoU or features), where it runs;
- end_to_end: pool scoring as the loop does it: JPEG read + decode (`predict_paths`, DataLoader with
  --num-workers) -> predict -> Detections written to a store Project (`save_predictions`, in
  chunks of 64), over a project made with `init_project` on generated 640x480 JPEGs.
Scores are kept from --score-threshold (default 0: every image keeps `detections_per_img` boxes, the
worst case for postprocessing and storage, since random-weight heads score below any usual threshold).

Prints a table and writes benchmarks/results/throughput.json. Written here: the image generator, the
timing (best of --repeats, with CUDA synchronisation) and the report; boxloop and torch do the work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as F

from boxloop.images import resized_size
from boxloop.train.data import Sample
from boxloop.detectors import DETECTORS, create_detector
from boxloop.images import load_rgb
from boxloop.predict.inference import predict_paths
from boxloop.project import init_project
from boxloop.structures import Annotation, Boxes
from boxloop.train.config import TrainConfig
from boxloop.train.fit import fit

HERE = Path(__file__).resolve().parent
CLASSES = ["a", "b", "c"]


def make_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Sample]:
    """n JPEGs of noisy background with 3-12 filled ellipses/rectangles; Samples with their boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        arr = rng.normal(128, 30, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        boxes, labels = [], []
        for _ in range(int(rng.integers(3, 13))):
            w, h = rng.integers(20, width // 3), rng.integers(20, height // 3)
            x1, y1 = rng.integers(0, width - w), rng.integers(0, height - h)
            box = [int(x1), int(y1), int(x1 + w), int(y1 + h)]
            c = int(rng.integers(0, 3))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.ellipse if c == 0 else draw.rectangle)(box, fill=colour)
            boxes.append(box)
            labels.append(CLASSES[c])
        path = folder / f"img_{i:05d}.jpg"
        img.save(path, quality=90)
        ann = Annotation(image=path.name, boxes=Boxes(np.array(boxes, dtype=np.float64), (width, height)),
                         labels=tuple(labels))
        samples.append(Sample(path, ann))
    return samples


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(fn: Callable[[], int], repeats: int, device: torch.device) -> tuple[float, float]:
    """(best images/s, seconds of that run) over `repeats` calls of fn, which returns images done."""
    best = (0.0, float("inf"))
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        n = fn()
        sync(device)
        dt = time.perf_counter() - t0
        if n / dt > best[0]:
            best = (n / dt, dt)
    return best


def build(name: str, image_size: int, device: torch.device):
    det = create_detector(name, num_classes=len(CLASSES), pretrained_backbone=True, min_size=image_size,
                          max_size=image_size)
    return det.to(device)


def bench_train(name: str, samples: list[Sample], args: argparse.Namespace, device: torch.device,
                workdir: Path) -> float:
    """Training images/s: fit() for 1 step and for 1 + train_steps steps; the difference is the rate."""
    times = []
    for steps in (1, 1 + args.train_steps):
        torch.manual_seed(0)
        det = build(name, args.image_size, device)
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, image_size=args.image_size, warmup_steps=0,
                          device=device.type, num_workers=args.num_workers)
        sync(device)
        t0 = time.perf_counter()
        fit(det, samples, [], CLASSES, cfg, workdir / f"train_{name}_{steps}", progress=False)
        sync(device)
        times.append(time.perf_counter() - t0)
        del det
    return args.train_steps * args.batch_size / max(times[1] - times[0], 1e-9)


def preload(paths: list[Path], image_size: int, device: torch.device) -> list[torch.Tensor]:
    """Decoded, resized, float tensors on the device, exactly what predict_paths hands the model."""
    out = []
    for p in paths:
        pil = load_rgb(p)
        t = F.resize(F.pil_to_tensor(pil), list(resized_size(*pil.size, image_size)), antialias=True)
        out.append(t.to(device).float().div_(255.0))
    return out


def bench_detector(name: str, samples: list[Sample], project_dir: Path, args: argparse.Namespace,
                   device: torch.device, workdir: Path) -> dict[str, Any]:
    from boxloop.store import Project

    row: dict[str, Any] = {"detector": name, "device": device.type}
    if args.train_steps > 0:
        row["train_img_s"] = bench_train(name, samples[: max(args.batch_size * (1 + args.train_steps), 1)],
                                         args, device, workdir)
    det = build(name, args.image_size, device).eval()
    paths = [s.path for s in samples]
    tensors = preload(paths, args.image_size, device)
    bs = args.batch_size
    n_dets: list[int] = []

    def forward() -> int:
        n_dets.clear()
        for i in range(0, len(tensors), bs):
            n_dets.extend(len(d) for d in det.predict(tensors[i:i + bs], score_threshold=args.score_threshold))
        return len(tensors)

    forward()  # warm-up (cudnn autotuning, allocator)
    row["forward_img_s"], _ = best_rate(forward, args.repeats, device)
    row["detections_per_image"] = float(np.mean(n_dets)) if n_dets else 0.0

    tv = getattr(det, "model", None)
    if args.torchvision and tv is not None:
        def tv_forward() -> int:
            with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
                for i in range(0, len(tensors), bs):
                    tv(tensors[i:i + bs])
            return len(tensors)
        # The same score threshold as ours, else torchvision's keeps no box of a random-weight head.
        holder = tv.roi_heads if hasattr(tv, "roi_heads") else tv
        saved = getattr(holder, "score_thresh", None)
        try:
            if saved is not None:
                holder.score_thresh = args.score_threshold
            tv_forward()
            row["torchvision_img_s"], _ = best_rate(tv_forward, args.repeats, device)
        except (RuntimeError, TypeError, KeyError, AttributeError, ValueError) as e:
            row["torchvision_note"] = f"torchvision's own forward does not run on this model: {type(e).__name__}: {e}"
        finally:
            if saved is not None:
                holder.score_thresh = saved
    del tensors

    project = Project.open(project_dir)
    root = project.image_root
    rels = [r.path for r in project.images()]
    round_id = [0]

    def end_to_end() -> int:
        round_id[0] += 1
        buf: dict[str, Any] = {}
        for path, d in predict_paths(det, [root / r for r in rels], args.image_size, batch_size=bs,
                                     num_workers=args.num_workers, score_threshold=args.score_threshold,
                                     progress=False):
            buf[path.relative_to(root).as_posix()] = d
            if len(buf) >= 64:
                project.save_predictions(round_id[0], buf, model=name)
                buf = {}
        if buf:
            project.save_predictions(round_id[0], buf, model=name)
        return len(rels)

    try:
        row["end_to_end_img_s"], _ = best_rate(end_to_end, args.repeats, device)
        stored = len(project.load_predictions(round_id[0], model=name))
        if stored != len(rels):
            raise RuntimeError(f"stored {stored} predictions for {len(rels)} images")
    finally:
        project.close()
    row["end_to_end_vs_forward"] = row["end_to_end_img_s"] / row["forward_img_s"]
    del det
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="all: cpu, and cuda when available")
    ap.add_argument("--image-size", type=int, default=None, help="longer side; default 480 on CUDA, 256 on CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 on CUDA, 4 on CPU")
    ap.add_argument("--images", type=int, default=None, help="generated JPEGs; default 512 on CUDA, 16 on CPU")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps; default 10 CUDA, 2 CPU")
    ap.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated registry names")
    ap.add_argument("--num-workers", type=int, default=None, help="decode workers; default min(8, cpus) CUDA, 0 CPU")
    ap.add_argument("--score-threshold", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=None, help="best of N timed runs; default 3 CUDA, 1 CPU")
    ap.add_argument("--no-torchvision", dest="torchvision", action="store_false",
                    help="skip timing torchvision's own forward")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "throughput.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise SystemExit(f"unknown detectors {unknown}; choose from {sorted(DETECTORS)}")

    rows, notes, settings = [], [], {}
    with tempfile.TemporaryDirectory(prefix="boxloop_tp_") as tmp:
        work = Path(tmp)
        for dev_name in devices:
            device = torch.device(dev_name)
            gpu = dev_name == "cuda"
            s = argparse.Namespace(**vars(args))
            s.image_size = args.image_size or (480 if gpu else 256)
            s.batch_size = args.batch_size or (32 if gpu else 4)
            s.images = args.images or (512 if gpu else 16)
            s.train_steps = args.train_steps if args.train_steps is not None else (10 if gpu else 2)
            s.num_workers = args.num_workers if args.num_workers is not None else (min(8, os.cpu_count() or 1) if gpu else 0)
            s.repeats = args.repeats or (3 if gpu else 1)
            settings[dev_name] = {k: getattr(s, k) for k in ("image_size", "batch_size", "images", "train_steps",
                                                             "num_workers", "repeats", "score_threshold")}
            settings[dev_name]["generated_image"] = "640x480 JPEG q90"
            folder = work / dev_name / "images"
            samples = make_images(folder, s.images, 640, 480)
            project_dir = work / dev_name / "project"
            init_project(project_dir, folder, progress=False).close()
            for name in names:
                print(f"[{dev_name}] {name} ...", flush=True)
                try:
                    row = bench_detector(name, samples, project_dir, s, device, work / dev_name)
                except (ImportError, RuntimeError, ValueError, TypeError) as e:
                    note = f"{name} on {dev_name} skipped: {type(e).__name__}: {e}"
                    print(note)
                    notes.append(note)
                    continue
                rows.append(row)

    header = f"{'detector':<12} {'device':<6} {'train':>8} {'forward':>9} {'torchvis.':>9} {'end2end':>9} {'e2e/fwd':>8} {'dets/img':>8}"
    print("\nimages/s (" + "; ".join(f"{d}: {v['image_size']} px, batch {v['batch_size']}, {v['images']} images, "
                                    f"{v['num_workers']} workers" for d, v in settings.items()) + ")")
    print(header)

    def fmt(v: Any, w: int, spec: str = ".1f") -> str:
        return f"{v:>{w}{spec}}" if isinstance(v, (int, float)) else f"{'-':>{w}}"

    for r in rows:
        print(f"{r['detector']:<12} {r['device']:<6} {fmt(r.get('train_img_s'), 8)} {fmt(r['forward_img_s'], 9)} "
              f"{fmt(r.get('torchvision_img_s'), 9)} {fmt(r['end_to_end_img_s'], 9)} "
              f"{fmt(r['end_to_end_vs_forward'], 8, '.2f')} {fmt(r['detections_per_image'], 8)}")
    for n in notes + [f"{r['detector']}: {r['torchvision_note']}" for r in rows if "torchvision_note" in r]:
        print("note:", n)

    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    report = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": machine,
              "settings": settings, "results": rows, "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
