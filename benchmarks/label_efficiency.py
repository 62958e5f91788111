"""Benchmark: active-learning label efficiency on BCCD (issue 4 targets), via `boxloop.simulate`.

    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --threads 2        # small, CPU
    .venv/bin/python benchmarks/label_efficiency.py --preset gpu                    # full, both units
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --unit boxes       # box level only
    .venv/bin/python benchmarks/label_efficiency.py --dataset synthetic             # minutes, smoke run

What it does: for every unit (images, boxes) one `simulate` run (each seed: one random seed set and
one round-0 model shared by every strategy; the withheld BCCD labels answer the queries), and one
full-data reference model (all of trainval labelled, the same training settings, trained once).
It prints the strategy x round table (mAP50 mean ± std over seeds, labelled share of trainval
images and boxes, mAP50 as a share of the full-data mAP50), checks the issue's targets

    images: the best strategy beats random at every query round (mean of >= 3 seeds), and reaches
            >= 98% of the full-data mAP50 with <= 50% of the trainval images labelled;
    boxes:  >= 95% of the full-data mAP50 with <= 40% of the trainval boxes drawn or verified;

and writes benchmarks/results/label_efficiency.json (or --json): the command, the machine, the
settings, the table, the target checks and every run's rounds. Plots (with the full-data line) go to
WORKDIR/<unit>/plots. An interrupted run resumes: re-run the same command (same --workdir).

BCCD: /work/shared/datasets/bccd (a VOC root); the fixed test set is ImageSets/Main/test.txt, the
rest (trainval) is the pool. Absent: the script says so and exits 0. `--dataset synthetic` builds
boxloop.synthetic's shapes dataset (every 5th image is the test set) for a quick run.

Written here: presets, the full-data reference, the shares and the target checks. boxloop does the
rest (simulate, loop.run_round, report.learning_curve_table / plot_learning_curves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_BCCD = HERE.parents[1] / "shared" / "datasets" / "bccd"

# Every value is a default of a flag of the same name (underscores as dashes).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(image_size=256, epochs=6, batch_size=8, lr=0.01, val_every=2, initial=20, budget=20, rounds=3,
                seeds="0,1,2", strategies="random,least_confidence,localization_aware", units="images",
                box_budget=100, box_strategies="random,least_confidence", model="fcos",
                backbone="efficientnet_lite0", detector_options="{}"),
    "gpu": dict(image_size=480, epochs=24, batch_size=8, lr=0.01, val_every=2, initial=20, budget=30, rounds=6,
                seeds="0,1,2", strategies="random,least_confidence,entropy,localization_aware,coreset",
                units="images,boxes", box_budget=200, box_strategies="random,least_confidence,coreset",
                model="fcos", backbone="efficientnet_lite0", detector_options="{}"),
    # --dataset synthetic: the tiniest settings that still run every step (a smoke run, not a result)
    "synthetic": dict(image_size=128, epochs=6, batch_size=4, lr=0.02, val_every=1, initial=8, budget=6, rounds=2,
                      seeds="0,1", strategies="random,least_confidence,localization_aware", units="images",
                      box_budget=12, box_strategies="random,least_confidence", model="fcos",
                      backbone="efficientnet_lite0", detector_options='{"fpn_channels": 32, "head_convs": 1}'),
}

TARGETS = {"images": {"beats_random_every_round": True, "map50_share": 0.98, "labelled_share": 0.50},
           "boxes": {"map50_share": 0.95, "labelled_share": 0.40}}


# -- shared with semi_supervised.py -----------------------------------------------------------------

def machine(device: str = "auto") -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": device}
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where the images, labels and fixed test list are, and which classes count as rare."""

    name: str
    images: Path
    annotations: Path
    test_list: Path
    rare_classes: tuple[str, ...]


def prepare_dataset(dataset: str, workdir: Path, synthetic_images: int = 60, synthetic_size: int = 96
                    ) -> DatasetSpec | None:
    """BCCD (or any VOC root with ImageSets/Main/test.txt), or a freshly generated synthetic set.
    None when the VOC root is missing (the caller skips)."""
    if dataset == "synthetic":
        from boxloop.synthetic import make_dataset

        root = workdir / "synthetic_data"
        test_list = root / "test.txt"
        if not test_list.exists():
            anns = make_dataset(root, n_images=synthetic_images, image_size=synthetic_size, seed=0)
            stems = [Path(a.image).stem for i, a in enumerate(anns) if i % 5 == 0]
            test_list.write_text("\n".join(stems) + "\n")
        return DatasetSpec("synthetic", root / "images", root / "annotations", test_list, ("triangle",))
    root = Path(dataset)
    if not (root / "Annotations").is_dir() or not (root / "JPEGImages").is_dir():
        return None
    test_list = root / "ImageSets" / "Main" / "test.txt"
    if not test_list.is_file():
        raise SystemExit(f"{test_list} is missing: the fixed test list is needed for a comparable number")
    return DatasetSpec(root.name, root / "JPEGImages", root / "Annotations", test_list, ("WBC", "Platelets"))


def resolve(args: argparse.Namespace, preset: Mapping[str, Any]) -> argparse.Namespace:
    """Flags left at None take the preset's value."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively, so the JSON is strict (learning_curve_table uses NaN for 'none')."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def loop_config(args: argparse.Namespace, **over: Any):
    from boxloop.loop import LoopConfig

    options = json.loads(args.detector_options) if isinstance(args.detector_options, str) else args.detector_options
    kw = dict(model=args.model, backbone=args.backbone, pretrained_backbone=not args.no_pretrained,
              detector_options=options, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
              lr=args.lr, device=args.device, val_every=args.val_every, seed=int(csv(args.seeds)[0]))
    kw.update(over)
    return LoopConfig(**kw)


# -- full-data reference ----------------------------------------------------------------------------

def full_data_reference(spec: DatasetSpec, workdir: Path, config, progress: bool) -> dict[str, Any]:
    """Train once on every trainval image (init_project's stratified train/val split of it) with the
    same settings as the loop's rounds; test-set metrics, and trainval's image and box counts."""
    from boxloop.loop import labelled_counts, round_history, run_round
    from boxloop.project import init_project
    from boxloop.simulate import load_truth
    from boxloop.store import DB_NAME, Project

    pdir = workdir / "full_data"
    project = Project.open(pdir) if (pdir / DB_NAME).exists() else None
    if project is None or not project.rounds():
        if project is not None:
            project.close()
        project = init_project(pdir, spec.images, spec.annotations, test_list=spec.test_list, seed=config.seed,
                               force=True, progress=progress)
    truth = load_truth(spec.images, spec.annotations)
    t0 = time.perf_counter()
    run_round(project, config, truth, 0, last=True, progress=progress)
    seconds = time.perf_counter() - t0
    row = round_history(project)[0]
    counts = labelled_counts(project)
    out = {"map50": row["map50"], "coco_ap": row["coco_ap"], "ap75": row.get("ap75"), "per_class": row["per_class"],
           "trainval_images": counts["images_labelled"], "trainval_boxes": counts["human_boxes"],
           "trainval_boxes_per_class": counts["labelled_per_class"], "seconds_this_call": round(seconds, 1),
           "project": str(pdir)}
    project.close()
    return out


# -- table and targets -------------------------------------------------------------------------------

def add_shares(results: dict[str, Any], full: Mapping[str, Any]) -> dict[str, Any]:
    """Each round row gains full_data_map50 (drawn as a line by report), map50_share, image/box shares."""
    for run in results["runs"]:
        for row in run["rounds"]:
            row["full_data_map50"] = full["map50"]
            row["map50_share"] = None if row.get("map50") is None or not full["map50"] else row["map50"] / full["map50"]
            row["images_share"] = row["images_labelled"] / full["trainval_images"]
            row["boxes_share"] = row["boxes_labelled"] / max(1, full["trainval_boxes"])
    return results


def table_rows(results: Mapping[str, Any], full: Mapping[str, Any]) -> list[dict[str, Any]]:
    from boxloop.report import learning_curve_table

    rows = learning_curve_table(results)
    for r in rows:
        r["images_share"] = r["images_labelled"] / full["trainval_images"]
        r["boxes_share"] = r["boxes_labelled"] / max(1, full["trainval_boxes"])
        r["map50_share"] = (r["map50_mean"] / full["map50"]) if full["map50"] else float("nan")
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: strategy x round with shares of trainval and of the full-data mAP50."""
    head = ["strategy", "round", "images (share)", "boxes (share)", "cost h", "mAP50 mean ± std", "% of full", "seeds"]

    def pct(x: float) -> str:
        return "-" if not np.isfinite(x) else f"{100 * x:.1f}%"

    body = [[str(r["strategy"]), str(r["round"]), f"{r['images_labelled']:.1f} ({pct(r['images_share'])})",
             f"{r['boxes_labelled']:.0f} ({pct(r['boxes_share'])})", f"{r['cost_hours']:.2f}",
             "-" if not np.isfinite(r["map50_mean"]) else f"{r['map50_mean']:.3f} ± {r['map50_std']:.3f}",
             pct(r["map50_share"]), str(r["evaluated"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def check_targets(rows: Sequence[Mapping[str, Any]], unit: str, seeds: int) -> dict[str, Any]:
    """The issue's targets on the mean-over-seeds table. Round 0 is shared by construction (same seed
    set, same model) and not compared; 'best' = the non-random strategy with the highest mean mAP50
    over the query rounds."""
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["strategy"]), {})[int(r["round"])] = r
    target = TARGETS[unit]
    out: dict[str, Any] = {"unit": unit, "seeds": seeds, "enough_seeds": seeds >= 3, **target}

    def curve_mean(s: str) -> float:
        vals = [v["map50_mean"] for k, v in by[s].items() if k >= 1 and np.isfinite(v["map50_mean"])]
        return float(np.mean(vals)) if vals else float("-inf")

    others = [s for s in by if s != "random"]
    best = max(others, key=curve_mean) if others else None
    out["best_strategy"] = best
    share_key = "images_share" if unit == "images" else "boxes_share"
    if best is not None and "random" in by and unit == "images":
        per_round = {k: {"best": by[best][k]["map50_mean"], "random": by["random"][k]["map50_mean"]}
                     for k in sorted(by[best]) if k >= 1 and k in by["random"]}
        out["best_vs_random"] = per_round
        out["beats_random_every_round_met"] = bool(per_round) and all(
            v["best"] > v["random"] for v in per_round.values())
    reached = [{"strategy": s, "round": k, "map50_share": v["map50_share"], share_key: v[share_key]}
               for s in by for k, v in sorted(by[s].items())
               if np.isfinite(v["map50_share"]) and v[share_key] <= target["labelled_share"] + 1e-9
               and v["map50_share"] >= target["map50_share"]]
    out["reached"] = reached
    within = [v for s in by for v in by[s].values() if v[share_key] <= target["labelled_share"] + 1e-9
              and np.isfinite(v["map50_share"])]
    out["best_share_within_budget"] = max((v["map50_share"] for v in within), default=None)
    out["share_met"] = bool(reached) if unit == "boxes" else any(x["strategy"] == best for x in reached)
    met = out["share_met"] and (unit == "boxes" or out.get("beats_random_every_round_met", False))
    out["met"] = bool(met and out["enough_seeds"])
    return out


def describe(check: Mapping[str, Any]) -> str:
    unit = check["unit"]
    lines = [f"targets ({unit}):" + ("" if check["enough_seeds"] else f" [only {check['seeds']} seed(s): "
                                                                          "the issue asks for >= 3]")]
    if unit == "images" and "best_vs_random" in check:
        pr = ", ".join(f"r{k}: {v['best']:.3f} vs {v['random']:.3f}" for k, v in check["best_vs_random"].items())
        lines.append(f"  best strategy {check['best_strategy']} beats random at every query round: "
                     f"{'MET' if check['beats_random_every_round_met'] else 'NOT met'} ({pr})")
    share = "images" if unit == "images" else "boxes"
    best = check["best_share_within_budget"]
    lines.append(f"  >= {100 * check['map50_share']:.0f}% of full-data mAP50 with <= "
                 f"{100 * check['labelled_share']:.0f}% of trainval {share}: {'MET' if check['share_met'] else 'NOT met'}"
                 f" (highest share within that budget: {'-' if best is None else f'{100 * best:.1f}%'}"
                 + ("; reached by " + ", ".join(f"{x['strategy']} r{x['round']}" for x in check["reached"])
                    if check["reached"] else "") + ")")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(DEFAULT_BCCD), help="VOC root with ImageSets/Main/test.txt, or 'synthetic'")
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                    help="defaults for every setting below (--dataset synthetic: its own tiny preset)")
    ap.add_argument("--unit", dest="units", default=None, help="images, boxes, or both (images,boxes)")
    ap.add_argument("--strategies", default=None, help="image-level strategies, comma-separated (random included)")
    ap.add_argument("--box-strategies", default=None, help="box-level strategies, comma-separated")
    ap.add_argument("--initial", type=int, default=None, help="random seed set (images)")
    ap.add_argument("--budget", type=int, default=None, help="images per round")
    ap.add_argument("--box-budget", type=int, default=None, help="boxes per round (--unit boxes)")
    ap.add_argument("--rounds", type=int, default=None, help="query rounds (models evaluated: rounds + 1)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--no-pretrained", action="store_true", help="random backbone weights")
    ap.add_argument("--detector-options", default=None, help='JSON, e.g. \'{"fpn_channels": 32}\'')
    ap.add_argument("--epochs", type=int, default=None, help="epochs per round (and of the full-data model)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--val-every", type=int, default=None, help="epochs between validations")
    ap.add_argument("--take-all-last", action="store_true", help="the last round takes every image left")
    ap.add_argument("--no-full-data", action="store_true", help="skip the full-data reference model")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (shared CPU: 1-2)")
    ap.add_argument("--synthetic-images", type=int, default=60)
    ap.add_argument("--synthetic-size", type=int, default=96)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="projects, models, plots (default /tmp/boxloop_label_efficiency_<dataset>_<preset>)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "label_efficiency.json")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(argv)
    preset = "synthetic" if args.dataset == "synthetic" else args.preset
    args.preset_used = preset
    args = resolve(args, PRESETS[preset])
    if args.units == "both":
        args.units = "images,boxes"
    if args.workdir is None:
        args.workdir = Path(f"/tmp/boxloop_label_efficiency_{Path(args.dataset).name}_{preset}")
    return args


def dataset_or_skip(args):
    """The dataset spec (torch threads set as asked), or None after saying why the run is skipped."""
    spec = prepare_dataset(args.dataset, args.workdir, args.synthetic_images, args.synthetic_size)
    if spec is None:
        print(f"BCCD not found at {args.dataset} (needs Annotations/ and JPEGImages/); skipping. "
              "Pass --dataset PATH to a VOC root, or --dataset synthetic.")
        return None
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return spec


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = dataset_or_skip(args)
    if spec is None:
        return 0
    from boxloop.simulate import copy_project, simulate
    from boxloop.store import DB_NAME, Project

    seeds = [int(s) for s in csv(args.seeds)]
    units = csv(args.units)
    for u in units:
        if u not in ("images", "boxes"):
            raise SystemExit(f"--unit: unknown unit {u!r}; use images, boxes or both")
    base_config = loop_config(args, take_all_last=args.take_all_last)
    say = print
    t_start = time.perf_counter()

    full = None
    if not args.no_full_data:
        say(f"full-data reference: {args.model} at {args.image_size} px, {args.epochs} epochs on all trainval")
        full = full_data_reference(spec, args.workdir, base_config, args.progress)
        say(f"full data: test mAP50 {full['map50']:.4f} (COCO AP {full['coco_ap']:.4f}); trainval "
            f"{full['trainval_images']} images, {full['trainval_boxes']} boxes")

    report: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine(args.device), "dataset": {"name": spec.name, "images": str(spec.images),
                                                     "test_list": str(spec.test_list)},
        "preset": args.preset_used,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loop_config": base_config.to_dict(), "full_data": full, "units": {}, "targets": TARGETS,
    }
    first_out: Path | None = None
    for unit in units:
        out = args.workdir / unit
        strategies = csv(args.strategies if unit == "images" else args.box_strategies)
        budget = args.budget if unit == "images" else args.box_budget
        config = dataclasses.replace(base_config, unit=unit, strategy=strategies[0], budget=budget)
        # the round-0 models do not depend on the unit: reuse the first unit's seed sets and models
        if first_out is not None:
            for seed in seeds:
                src, dst = first_out / f"seed{seed}" / "base", out / f"seed{seed}" / "base"
                if (src / DB_NAME).exists() and not (dst / DB_NAME).exists():
                    with Project.open(src) as p:
                        copy_project(p, dst)
        say(f"\n== unit {unit}: strategies {', '.join(strategies)}; initial {args.initial} images, budget "
            f"{budget} {unit}/round, {args.rounds} rounds, seeds {seeds}")
        t0 = time.perf_counter()
        results = simulate(Path(spec.images), out, strategies, args.initial, budget, args.rounds, seeds, config,
                           annotations=spec.annotations, test_list=spec.test_list, progress=args.progress,
                           echo=say)
        first_out = first_out or out
        seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"strategies": strategies, "budget": budget, "seconds_this_call": round(seconds, 1),
                                 "results_json": str(out / "results.json"), "plots": str(out / "plots")}
        if full is not None:
            from boxloop.report import plot_learning_curves

            results = add_shares(results, full)
            plot_learning_curves(results, out / "plots")
            rows = table_rows(results, full)
            text = format_rows(rows)
            check = check_targets(rows, unit, len(seeds))
            entry.update(table=rows, table_markdown=text, target_check=check)
            say(f"\nBCCD-style learning curves ({unit}; full-data mAP50 {full['map50']:.4f}):\n{text}\n")
            say(describe(check))
        else:
            from boxloop.report import format_table, learning_curve_table

            rows = learning_curve_table(results)
            entry.update(table=rows, table_markdown=format_table(rows))
            say(format_table(rows))
        entry["runs"] = results["runs"]
        report["units"][unit] = entry
    report["seconds_this_call"] = round(time.perf_counter() - t_start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(finite(report), indent=1, allow_nan=False, default=str))
    say(f"\nwrote {args.json}; plots under {args.workdir}/<unit>/plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
