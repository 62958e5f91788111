"""Benchmark: the CPU-first default (fcos_lite) against the former default (fcos), side by side.

    .venv/bin/python benchmarks/cpu_speed.py                      # 320 px, 2 threads, 5 interleaved repeats
    .venv/bin/python benchmarks/cpu_speed.py --repeats 3 --threads 1 --extras

For every variant and repeat (variants interleaved within each repeat, so a noisy neighbour slows
them alike), on generated 640x480 JPEGs at --image-size:
- train img/s: what fit() does per step: decode + augment (DataLoader, num_workers 0), loss,
  backward, gradient clipping, SGD step; one warm-up step, then --train-steps timed steps;
- forward img/s: `detector.predict` on tensors already decoded and resized (the model alone, with the
  postprocess that keeps class vectors, quality and features);
- end-to-end img/s: pool scoring as the loop does it: `predict_paths` (read, decode, resize) ->
  predict -> `Project.save_predictions` into a real SQLite store.
Reports the median and the spread (min..max) of each, and the ratio of medians to the first
variant; FLOPs per 320x320 image from torch.utils.flop_counter (machine-independent). Writes
benchmarks/results/cpu_speed.json.

Cached rows (issue 27), fcos_lite's frozen body's maps in a boxloop.predict.feature_cache: "warm" times the
same three things with every image's maps already cached (train: CachedTrainSet items -- cache read,
targets -- then the neck and head's loss, backward, clipping and step; forward: cache read + neck,
head and postprocess; end-to-end: predict_paths with the cache, which hashes each file (stat-memoised)
instead of decoding it, + save_predictions); "cold" times them on an empty cache (each image's body
run once and its maps written), what the first epoch and the first scoring of a pool cost.

--extras adds variants that show what each CPU choice buys: fcos_lite without bf16 inference, with
bf16 training autocast, without channels_last, and with more or fewer trainable backbone levels.

Written here: the variants, the interleaving, the statistics and the report; boxloop does the work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CLASSES, make_images, preload  # noqa: E402

from boxloop.train.data import DetectionDataset, collate, train_transform  # noqa: E402
from boxloop.detectors import create_detector  # noqa: E402
from boxloop.detectors.common import cpu_bf16_supported  # noqa: E402
from boxloop.predict.inference import predict_paths  # noqa: E402

HERE = Path(__file__).resolve().parent

# name -> (registry name, builder options, train under bf16 autocast)
BASE: dict[str, tuple[str, dict[str, Any], bool]] = {
    "fcos (former default)": ("fcos", {}, False),
    "fcos_lite (new default)": ("fcos_lite", {}, False),
}
EXTRAS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "fcos_lite, fp32 inference": ("fcos_lite", {"cpu_bf16": False}, False),
    "fcos_lite, bf16 training": ("fcos_lite", {}, True),
    "fcos_lite, contiguous": ("fcos_lite", {"channels_last": False}, False),
    "fcos_lite, 1 trainable level": ("fcos_lite", {"trainable_layers": 1}, False),
    "fcos_lite, 3 trainable levels": ("fcos_lite", {"trainable_layers": 3}, False),
}


def build(name: str, options: dict[str, Any], image_size: int):
    torch.manual_seed(0)
    return create_detector(name, num_classes=len(CLASSES), pretrained_backbone=True, min_size=image_size,
                           max_size=image_size, **options)


def gflops(det, image_size: int) -> float:
    det.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        det.predict([torch.rand(3, image_size, image_size)])
    return counter.get_total_flops() / 1e9


def body_gflops(det, image_size: int) -> float:
    """The frozen body's share of gflops(): what a cache hit saves."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        det.body_features([torch.rand(3, image_size, image_size)])
    return counter.get_total_flops() / 1e9


def timed(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def train_rate(det, samples, args, bf16: bool) -> float:
    """Images/s of training steps after one warm-up step (decode and augmentation included)."""
    det.train()
    params = [p for p in det.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
    ds = DetectionDataset(samples, CLASSES, train_transform(args.image_size), seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    it = iter(loader)

    def step() -> int:
        images, targets = next(it)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = det.loss(images, [{k: t[k] for k in ("boxes", "labels", "weights")} for t in targets])
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        return len(images)

    step()
    return timed(lambda: sum(step() for _ in range(args.train_steps)))


CACHED = {"fcos_lite, cached features (warm)": "warm", "fcos_lite, cached features (cold: filling)": "cold"}


def cached_rates(det, samples, paths, args, work: Path, state: str, project, tag: int) -> dict[str, float]:
    """Train, forward and end-to-end images/s of the default fcos_lite on its body's cached maps;
    `state` "warm" (filled before timing) or "cold" (a new, empty cache each time)."""
    from boxloop.predict.cached import bind, predict_precision
    from boxloop.train.cached import CachedTrainSet
    from boxloop.predict.feature_cache import FeatureCache

    def fresh(name: str) -> FeatureCache:
        folder = work / f"cache_{name}_{tag}"
        shutil.rmtree(folder, ignore_errors=True)
        return FeatureCache(folder)

    train_cache = fresh("train")
    det.train()
    ds = CachedTrainSet(samples, CLASSES, args.image_size, True, bind(train_cache, det, "fp32"), seed=0)
    if state == "warm":
        for i in range(len(ds)):
            ds[i]
    params = [p for p in det.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    it = iter(loader)

    def step() -> int:
        feats, targets = next(it)
        losses = det.loss_from_features(feats, [{k: t[k] for k in ("boxes", "labels", "weights")} for t in targets])
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        return len(feats)

    step()
    out = {"train": timed(lambda: sum(step() for _ in range(args.train_steps)))}
    det.eval()
    cache = fresh("score")
    bound = bind(cache, det, predict_precision(det, torch.device("cpu")))
    if state == "warm":
        list(predict_paths(det, paths, args.image_size, batch_size=args.batch_size, progress=False,
                           feature_cache=cache))

    def forward() -> int:
        from boxloop.predict.cached import predict_cached
        from boxloop.predict.inference import _FileDataset, to_original

        files = _FileDataset(paths, args.image_size, False)
        for _ in predict_cached(det, bound, paths, paths, args.image_size, args.batch_size, 0.05,
                                lambda p, e: None, to_original, files.__getitem__):
            pass
        return len(paths)

    out["forward"] = timed(forward)
    if state == "cold":
        cache = fresh("score")

    def end_to_end() -> int:
        buf = {path.name: d for path, d in predict_paths(det, paths, args.image_size, batch_size=args.batch_size,
                                                         score_threshold=0.05, progress=False, feature_cache=cache)}
        project.save_predictions(tag, buf, model="fcos_lite")
        return len(paths)

    out["end_to_end"] = timed(end_to_end)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (median and spread)")
    ap.add_argument("--train-steps", type=int, default=4, help="timed training steps per repeat")
    ap.add_argument("--images", type=int, default=40, help="generated 640x480 JPEGs")
    ap.add_argument("--extras", action="store_true", help="also time the variants that show each CPU choice")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cpu_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {**BASE, **(EXTRAS if args.extras else {})}
    need = args.batch_size * (args.train_steps + 1)

    from boxloop.project import init_project
    from boxloop.store import Project

    raw: dict[str, dict[str, list[float]]] = {v: {"train": [], "forward": [], "end_to_end": []}
                                              for v in [*variants, *CACHED]}
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="boxloop_cpu_speed_") as tmp:
        work = Path(tmp)
        samples = make_images(work / "images", max(args.images, need), 640, 480)
        project = init_project(work / "project", work / "images", None, classes=CLASSES, progress=False)
        project.close()
        paths = [s.path for s in samples[: args.images]]
        tensors = preload(paths, args.image_size, torch.device("cpu"))
        models = {v: build(n, o, args.image_size) for v, (n, o, _) in variants.items()}
        for v, det in models.items():
            flops[v] = gflops(det, args.image_size)
        for rep in range(args.repeats):
            for v, (name, options, bf16) in variants.items():
                det = models[v]
                det.load_state_dict(build(name, options, args.image_size).state_dict())  # same start each time
                raw[v]["train"].append(train_rate(det, samples[:need], args, bf16))
                det.eval()

                def forward() -> int:
                    for i in range(0, len(tensors), args.batch_size):
                        det.predict(tensors[i:i + args.batch_size], score_threshold=0.05)
                    return len(tensors)

                det.predict(tensors[: args.batch_size], score_threshold=0.05)  # warm-up after training
                raw[v]["forward"].append(timed(forward))
                proj = Project.open(work / "project")
                try:
                    def end_to_end() -> int:
                        buf = {}
                        for path, d in predict_paths(det, paths, args.image_size, batch_size=args.batch_size,
                                                     score_threshold=0.05, progress=False):
                            buf[path.name] = d
                        proj.save_predictions(1000 * rep + list(variants).index(v) + 1, buf, model=name)
                        return len(paths)

                    raw[v]["end_to_end"].append(timed(end_to_end))
                finally:
                    proj.close()
            lite = models["fcos_lite (new default)"]
            for v, state in CACHED.items():
                lite.load_state_dict(build("fcos_lite", {}, args.image_size).state_dict())
                proj = Project.open(work / "project")
                try:
                    rates = cached_rates(lite, samples[:need], paths, args, work, state, proj,
                                         1000 * rep + 100 + list(CACHED).index(v))
                finally:
                    proj.close()
                for k, r in rates.items():
                    raw[v][k].append(r)
            print(f"repeat {rep + 1}/{args.repeats} done", flush=True)

    first = next(iter(variants))
    rows = []
    flops.update({v: flops["fcos_lite (new default)"] - body_gflops(models["fcos_lite (new default)"], args.image_size)
                  for v in CACHED})
    for v in [*variants, *CACHED]:
        row: dict[str, Any] = {"variant": v, "gflops_320": round(flops[v], 3)}
        for k in ("train", "forward", "end_to_end"):
            xs = raw[v][k]
            row[k] = {"median_img_s": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}
            row[k]["x_vs_first"] = statistics.median(xs) / statistics.median(raw[first][k])
            row[k]["x_vs_fcos_lite"] = statistics.median(xs) / statistics.median(raw["fcos_lite (new default)"][k])
        rows.append(row)

    print(f"\n{args.image_size} px, batch {args.batch_size}, {args.threads} threads, {args.repeats} interleaved "
          f"repeats; images/s as median (min..max); x = ratio of medians to {first!r}")
    head = f"{'variant':<32} {'GFLOPs':>6}  {'train img/s':>22}  {'forward img/s':>22}  {'end-to-end img/s':>22}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = [f"{r[k]['median_img_s']:6.2f} ({r[k]['min']:.1f}..{r[k]['max']:.1f}) {r[k]['x_vs_first']:4.1f}x"
                 for k in ("train", "forward", "end_to_end")]
        print(f"{r['variant']:<32} {r['gflops_320']:6.2f}  {cells[0]:>22}  {cells[1]:>22}  {cells[2]:>22}")

    for r in rows[len(variants):]:
        print(f"{r['variant']}: x fcos_lite (new default), same run: train {r['train']['x_vs_fcos_lite']:.2f}x, "
              f"forward {r['forward']['x_vs_fcos_lite']:.2f}x, end-to-end {r['end_to_end']['x_vs_fcos_lite']:.2f}x")

    report = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": args.threads,
                    "cpu_bf16": cpu_bf16_supported(),
                    "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": {k: getattr(args, k) for k in ("image_size", "batch_size", "threads", "repeats", "train_steps",
                                                   "images")},
        "variants": {**{v: {"detector": n, "options": o, "bf16_training": b} for v, (n, o, b) in variants.items()},
                     **{v: {"detector": "fcos_lite", "feature_cache": st} for v, st in CACHED.items()}},
        "rows": rows,
        "targets": {"train_x": 4.0, "inference_x": 3.0, "gflops_320": 2.4,
                    "cached_vs_fcos_lite": {"train_x": 2.0, "forward_x": 4.0, "end_to_end_x": 2.5}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
