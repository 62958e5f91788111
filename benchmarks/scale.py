"""Scale benchmark (issue 7 item 6): a project of 200,000 images and 2,000,000 boxes.

Builds a real project store (SQLite, through `Project`; rows inserted in bulk, no image files):
--images images over 3 classes, of which --pool are the unlabelled pool and the rest labelled
(train / val / test), --boxes boxes in all (human boxes on the labelled images, the loop's pseudo
boxes on a share of the pool), one round at step `select`, and that round's stored predictions for
every pool image (Poisson(--dets-per-image) detections each, with class_probs, loc_quality and
--feature-dim features, written by `Project.save_predictions` as the loop's predict step writes
them). Then times what a user waits for:

1. `Project.status()` in-process, and the real CLI `boxloop status PROJECT --json` as a subprocess
   (wall time; plus, in a second subprocess, the split into imports and the command itself);
2. selection for one query, budget 100, by `loop.step_select` itself (load the round's stored
   predictions, keep the pool, run the strategy, write the queries and the round's step): image
   level localization_aware, least_confidence, entropy, random, coreset; box level
   least_confidence. For coreset, `step_select` would first run the round's detector over the
   labelled training images to get their features (a model inference, not selection); here that
   one function returns 1,000 stored labelled-feature vectors instead, everything else is the loop's
   own code. One extra run times the parts of a selection (pool list, the stored predictions
   decoded into a DetectionTable with and without features, strategy, write) with the same
   functions; --per-image-path also times the older way (a Detections per image, ~6 s here);
3. the database file size (MB, plus -wal and -shm) and the build time.

Prints a table and writes benchmarks/results/scale.json. Targets: status < 1 s, selection < 5 s.

    .venv/bin/python benchmarks/scale.py                 # 200,000 images / 2,000,000 boxes
    .venv/bin/python benchmarks/scale.py --quick         # 20,000 / 200,000: a smoke run
    .venv/bin/python benchmarks/scale.py --workdir /tmp/big --keep   # reuse the store next time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from boxloop.loop import fallback
from boxloop.loop.round import pool_paths, step_select
from boxloop.loop.config import LoopConfig
from boxloop.store import DB_NAME, ImageRecord, Project
from boxloop.strategies import DetectionTable, select
from boxloop.structures import Boxes, Detections

CLASSES = ("rbc", "wbc", "platelets")
ROUND = 1
STATUS_TARGET_S = 1.0
SELECT_TARGET_S = 5.0
SELECTIONS = [  # (unit, strategy)
    ("images", "localization_aware"),
    ("images", "least_confidence"),
    ("images", "entropy"),
    ("images", "random"),
    ("images", "coreset"),
    ("boxes", "least_confidence"),
]


# -- building the store ---------------------------------------------------------------------------


def build_store(project_dir: Path, n_images: int, n_boxes: int, n_pool: int, dets_per_image: float,
                feature_dim: int, seed: int = 0, chunk: int = 5000) -> dict:
    """A real project store of the requested size; returns the build timings and counts."""
    if n_pool >= n_images:
        raise ValueError(f"--pool ({n_pool}) must be smaller than --images ({n_images})")
    rng = np.random.default_rng(seed)
    t_all = time.perf_counter()
    proj = Project.create(project_dir, project_dir / "images", CLASSES, seed=seed, force=True)
    n_lab = n_images - n_pool
    # labelled images first (10% test, 10% val, 80% train), then the pool (no split, unlabelled)
    split = rng.choice(["test", "val", "train"], size=n_lab, p=[0.1, 0.1, 0.8])
    t0 = time.perf_counter()
    with proj.transaction():
        records = (ImageRecord(f"img_{i:07d}.jpg", 640, 480, f"{i:064x}",
                               split=str(split[i]) if i < n_lab else None,
                               status="labelled" if i < n_lab else "unlabelled",
                               round_labelled=0 if i < n_lab else None) for i in range(n_images))
        ids = proj.add_images(records)
    images_s = time.perf_counter() - t0
    first_id = ids["img_0000000.jpg"]
    lab_ids = np.arange(first_id, first_id + n_lab)
    pool_ids = np.arange(first_id + n_lab, first_id + n_images)

    # boxes: 85% human on labelled images (some images get none: negatives), 15% pseudo on a third
    # of the pool (the loop's earlier auto-labels)
    t0 = time.perf_counter()
    n_human = int(round(0.85 * n_boxes))
    n_pseudo = n_boxes - n_human
    pseudo_imgs = rng.choice(pool_ids, size=max(1, len(pool_ids) // 3), replace=False)
    with proj.transaction():
        for source, n, owners in (("human", n_human, lab_ids), ("pseudo", n_pseudo, pseudo_imgs)):
            for s in range(0, n, 200_000):
                m = min(200_000, n - s)
                img = np.sort(rng.choice(owners, size=m))
                cls = rng.integers(0, len(CLASSES), m)
                xy = rng.uniform(0, 600, (m, 2))
                wh = rng.uniform(8, 40, (m, 2))
                score = rng.uniform(0.8, 1.0, m) if source == "pseudo" else np.full(m, np.nan)
                model = "loop_round_000" if source == "pseudo" else None
                proj.add_box_arrays(img, cls, np.hstack([xy, xy + wh]), source, round=0, model=model, scores=score,
                                    weights=np.ones(m) if source == "human" else score)
    boxes_s = time.perf_counter() - t0

    # the round, and its predictions on every pool image, stored as the loop's predict step does
    proj.start_round(LoopConfig.make(pretrained_backbone=False).to_dict(), step="select", round_id=ROUND)
    t0 = time.perf_counter()
    n_dets = 0
    for s in range(0, len(pool_ids), chunk):
        part = pool_ids[s:s + chunk]
        counts = rng.poisson(dets_per_image, len(part))
        total = int(counts.sum())
        logits = rng.standard_normal((total, len(CLASSES))).astype(np.float32) * 2.0
        probs = 1.0 / (1.0 + np.exp(-logits))
        xy = rng.uniform(0, 600, (total, 2))
        wh = rng.uniform(8, 40, (total, 2))
        xyxy = np.concatenate([xy, xy + wh], axis=1)
        lq = rng.uniform(0.2, 1.0, total).astype(np.float32)
        feats = rng.standard_normal((total, feature_dim)).astype(np.float32)
        out: dict[int, Detections] = {}
        o = 0
        for iid, c in zip(part, counts):
            e = o + int(c)
            out[int(iid)] = Detections(Boxes(xyxy[o:e], (640, 480)), probs[o:e].argmax(1), probs[o:e].max(1),
                                       probs[o:e], lq[o:e], feats[o:e])
            o = e
        proj.save_predictions(ROUND, out)
        n_dets += total
    predictions_s = time.perf_counter() - t0
    wal = Path(str(proj.db_path) + "-wal")
    wal_open_mb = wal.stat().st_size / 2**20 if wal.exists() else 0.0  # before close() checkpoints it away
    proj.close()
    return {"build_s": time.perf_counter() - t_all, "images_s": images_s, "boxes_s": boxes_s,
            "predictions_s": predictions_s, "wal_mb_while_open": round(wal_open_mb, 1), "labelled_images": n_lab,
            "pool_images": len(pool_ids),
            "human_boxes": n_human, "pseudo_boxes": n_pseudo, "stored_detections": n_dets}


def db_sizes(project_dir: Path) -> dict:
    db = project_dir / DB_NAME
    size = {suffix or "db": (Path(str(db) + suffix).stat().st_size / 2**20 if Path(str(db) + suffix).exists() else 0.0)
            for suffix in ("", "-wal", "-shm")}
    out = {"db_mb": round(size["db"], 1), "wal_mb": round(size["-wal"], 1), "shm_mb": round(size["-shm"], 2)}
    try:  # per-table share, where SQLite was built with the dbstat table
        with Project.open(project_dir) as p:
            sizes = p.table_sizes()
        if sizes is not None:
            out["by_table_mb"] = {n: round(b / 2**20, 1) for n, b in sizes.items()}
    except Exception:  # noqa: BLE001 - optional detail
        pass
    return out


# -- timing -----------------------------------------------------------------------------------------


def timed(fn, repeats: int) -> tuple[float, float, list[float], object]:
    """(best wall s, cpu s of that run, all wall times, result)."""
    best, cpu, walls, out = float("inf"), 0.0, [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        w = time.perf_counter() - t
        walls.append(w)
        if w < best:
            best, cpu = w, time.process_time() - c
    return best, cpu, walls, out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli_status(project_dir: Path, repeats: int) -> dict:
    """`boxloop status PROJECT --json` as a user runs it, and the same split into import + command."""
    exe = Path(sys.executable).with_name("boxloop")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "boxloop.cli.main"]
    cmd += ["status", str(project_dir), "--json"]
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), _children_cpu()
        r = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        cpus.append(_children_cpu() - c)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    images = json.loads(r.stdout)["images"]
    probe = (
        "import sys, time, io, contextlib\n"
        "t0 = time.perf_counter()\n"
        "from boxloop.cli.main import app\n"
        "t1 = time.perf_counter()\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    app(['status', sys.argv[1], '--json'], standalone_mode=False)\n"
        "t2 = time.perf_counter()\n"
        "print(t1 - t0, t2 - t1)\n"
    )
    parts = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", probe, str(project_dir)], capture_output=True, text=True, check=True)
        parts.append([float(v) for v in r.stdout.split()])
    best = min(parts, key=sum)
    return {"command": " ".join(cmd), "wall_s_best": min(walls), "wall_s_all": walls,
            "cpu_s_of_best": cpus[walls.index(min(walls))], "images_reported": images,
            "import_s": best[0], "command_s": best[1]}


def labelled_centres(n: int, feature_dim: int, seed: int) -> np.ndarray:
    """Stand-in for what `labelled_image_features` computes with the detector: one mean feature per
    labelled training image (n of them)."""
    return np.random.default_rng(seed + 1).standard_normal((n, feature_dim)).astype(np.float32)


def run_selection(project_dir: Path, unit: str, strategy: str, budget: int, repeats: int,
                  centres: np.ndarray) -> dict:
    config = LoopConfig.make(strategy=strategy, unit=unit, budget=budget, pretrained_backbone=False)
    original = fallback.labelled_image_features
    fallback.labelled_image_features = lambda *_: centres  # the detector pass over labelled images (see doc)
    try:
        with Project.open(project_dir) as proj:
            def once():
                proj.update_round(ROUND, step="select")
                step_select(proj, ROUND, config)
            best, cpu, walls, _ = timed(once, repeats)
            opened = proj.queries(round=ROUND, state="open")
    finally:
        fallback.labelled_image_features = original
    return {"unit": unit, "strategy": strategy, "wall_s_best": best, "cpu_s": cpu, "wall_s_all": walls,
            "queries_written": len(opened)}


def selection_parts(project_dir: Path, budget: int, per_image_path: bool) -> dict:
    """The parts of one image-level localization_aware selection, by the functions step_select
    calls; with `per_image_path`, also the older way (a Detections per image, then the table)."""
    parts = {}
    with Project.open(project_dir) as proj:
        t = time.perf_counter()
        keys = pool_paths(proj)
        parts["pool_paths"] = time.perf_counter() - t
        t = time.perf_counter()
        table = proj.prediction_table(ROUND, keys=keys, features=False)
        parts["prediction_table (no features)"] = time.perf_counter() - t
        t = time.perf_counter()
        sel = select("localization_aware", table, budget, unit="images", rng=0, empty_share=0.0)
        parts["strategy localization_aware"] = time.perf_counter() - t
        t = time.perf_counter()
        with proj.transaction():
            proj.mark_stale()
            proj.add_queries(ROUND, [(k, None, s) for k, s in zip(sel.items, sel.scores)], strategy="parts",
                             batch=ROUND)
        parts["write queries"] = time.perf_counter() - t
        del table
        t = time.perf_counter()
        proj.prediction_table(ROUND, keys=keys, features=True)
        parts["prediction_table (with features, coreset)"] = time.perf_counter() - t
        if per_image_path:
            t = time.perf_counter()
            preds = proj.load_predictions(ROUND)
            parts["old path: load_predictions"] = time.perf_counter() - t
            t = time.perf_counter()
            DetectionTable.from_detections({k: preds[k] for k in keys if k in preds})
            parts["old path: DetectionTable.from_detections"] = time.perf_counter() - t
    return {k: round(v, 4) for k, v in parts.items()}


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--boxes", type=int, default=2_000_000)
    ap.add_argument("--pool", type=int, default=None, help="unlabelled pool images with predictions (default images/2)")
    ap.add_argument("--dets-per-image", type=float, default=10.0, help="mean stored detections per pool image")
    ap.add_argument("--feature-dim", type=int, default=128, help="per-box feature size (FCOS default FPN width)")
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each selection (best is reported); "
                    "status runs at least 3 times")
    ap.add_argument("--per-image-path", action="store_true", help="also time the older per-image way to load "
                    "predictions (load_predictions + DetectionTable.from_detections)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20,000 images / 200,000 boxes")
    ap.add_argument("--workdir", type=Path, default=None, help="build here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the store; a later run with the same "
                    "--workdir and sizes reuses it instead of building again")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = ap.parse_args()
    if args.quick:
        args.images, args.boxes = 20_000, 200_000
    args.pool = args.pool if args.pool is not None else args.images // 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="boxloop-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    project_dir = workdir / "project"
    settings = {"images": args.images, "boxes": args.boxes, "pool": args.pool, "classes": len(CLASSES),
                "dets_per_image": args.dets_per_image, "feature_dim": args.feature_dim, "budget": args.budget,
                "repeats": args.repeats}
    store_settings = {k: settings[k] for k in ("images", "boxes", "pool", "classes", "dets_per_image", "feature_dim")}
    marker = workdir / "scale_settings.json"
    load0 = os.getloadavg()
    try:
        reuse = (marker.exists() and json.loads(marker.read_text()) == store_settings
                 and (project_dir / DB_NAME).exists())
        if reuse:
            build = json.loads((workdir / "scale_build.json").read_text())
            build["reused"] = True
            print(f"reusing the store in {project_dir}")
        else:
            print(f"building {args.images} images / {args.boxes} boxes / {args.pool} pool images with predictions "
                  f"in {project_dir} ...", flush=True)
            marker.unlink(missing_ok=True)
            build = build_store(project_dir, args.images, args.boxes, args.pool, args.dets_per_image, args.feature_dim)
            (workdir / "scale_build.json").write_text(json.dumps(build))
            marker.write_text(json.dumps(store_settings))
        sizes = db_sizes(project_dir)

        with Project.open(project_dir) as proj:
            st_best, st_cpu, st_all, s = timed(proj.status, max(3, args.repeats))
        stored_boxes = s["boxes_per_source"]["human"] + s["boxes_per_source"]["pseudo"]
        if s["images"] != args.images or stored_boxes != args.boxes:
            raise RuntimeError(f"the store holds {s['images']} images / {s['boxes_per_source']}, not what was asked")
        cli = cli_status(project_dir, max(3, args.repeats))

        centres = labelled_centres(1000, args.feature_dim, 0)
        parts = selection_parts(project_dir, args.budget, args.per_image_path)
        sels = [run_selection(project_dir, u, n, args.budget, args.repeats, centres) for u, n in SELECTIONS]
        sizes_after = db_sizes(project_dir)
    finally:
        if args.workdir is None or not args.keep:
            shutil.rmtree(project_dir if args.workdir else workdir, ignore_errors=True)
            if args.workdir:
                marker.unlink(missing_ok=True)

    status_pass = st_best < STATUS_TARGET_S and cli["wall_s_best"] < STATUS_TARGET_S
    select_worst = max(r["wall_s_best"] for r in sels)
    select_pass = select_worst < SELECT_TARGET_S
    load1 = os.getloadavg()

    rows = [("build store (images, boxes, predictions)", build["build_s"],
             f"images {build['images_s']:.1f} s, boxes {build['boxes_s']:.1f} s, "
             f"predictions {build['predictions_s']:.1f} s"
             + (" (reused)" if build.get("reused") else "")),
            ("Project.status()", st_best, f"cpu {st_cpu:.3f} s"),
            ("boxloop status --json (subprocess)", cli["wall_s_best"],
             f"cpu {cli['cpu_s_of_best']:.3f} s; in a process: imports {cli['import_s']:.3f} s + "
             f"command {cli['command_s']:.3f} s")]
    for k, v in parts.items():
        rows.append((f"  part: {k}", v, ""))
    for r in sels:
        rows.append((f"step_select {r['unit']}/{r['strategy']}", r["wall_s_best"],
                     f"cpu {r['cpu_s']:.2f} s, {r['queries_written']} queries"))
    width = max(len(r[0]) for r in rows)
    print(f"{build['labelled_images']} labelled + {build['pool_images']} pool images, {args.boxes} boxes "
          f"({build['human_boxes']} human, {build['pseudo_boxes']} pseudo), {build['stored_detections']} stored "
          f"detections x {args.feature_dim}-d features")
    print(f"{'step'.ljust(width)}  wall s  note")
    for name, sec, note in rows:
        print(f"{name.ljust(width)}  {sec:6.3f}  {note}")
    print(f"database {sizes['db_mb']:.1f} MB (+ wal {sizes['wal_mb']:.1f} MB; {build['wal_mb_while_open']:.1f} MB "
          f"before the builder closed it) after build; "
          f"{sizes_after['db_mb']:.1f} MB (+ wal {sizes_after['wal_mb']:.1f} MB) after the selections"
          + ("; by table/index: " + ", ".join(f"{k} {v:.0f}" for k, v in sizes["by_table_mb"].items() if v >= 1)
             if "by_table_mb" in sizes else ""))
    print(f"status < {STATUS_TARGET_S:g} s: {'PASS' if status_pass else 'FAIL'}; "
          f"selection < {SELECT_TARGET_S:g} s (worst {select_worst:.2f} s): {'PASS' if select_pass else 'FAIL'}; "
          f"load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} cpus")

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "numpy": np.__version__,
                    "load_average_1min_before_after": [round(load0[0], 2), round(load1[0], 2)]},
        "settings": settings,
        "build": build,
        "database": {"after_build": sizes, "after_selections": sizes_after},
        "status": {"project_status_s_best": st_best, "project_status_s_all": st_all, "cli": cli},
        "selection_parts_s": parts,
        "selection": sels,
        "targets": {"status_s": STATUS_TARGET_S, "status_pass": status_pass,
                    "selection_s": SELECT_TARGET_S, "selection_worst_s": select_worst, "selection_pass": select_pass},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
