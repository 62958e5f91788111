"""Benchmark (issue 16): a typical seed set against a random one, and the budget_aware hybrid against random
and the best single strategy, paired per seed, via `boxloop.loop.simulate`.

    .venv/bin/python benchmarks/cold_start.py --preset cpu --threads 1     # BCCD, 3 seeds (hours on 2 cores)
    .venv/bin/python benchmarks/cold_start.py --preset gpu                 # BCCD, bigger rounds
    .venv/bin/python benchmarks/cold_start.py --dataset synthetic --threads 1   # a smoke run, ~2 min

Two `simulate` arms share the dataset, the fixed test set, the settings and the seeds; only the seed set
differs:
  random_init/   the seed set drawn at random (today's default), strategies --strategies-random
                 (random, the single strategies, budget_aware);
  typical_init/  the seed set chosen by `typical` (what `boxloop query` gives a fresh project),
                 strategies --strategies-typical (random, budget_aware, localization_aware).
Every run of one arm and seed starts from the same round-0 model, so round 0 of the two arms compares the
seed sets, and everything after compares strategies. Per seed (paired):
  round 0:   mAP50(typical seed set) - mAP50(random seed set);                   target: mean over seeds > 0
  AUC:       normalised area under mAP50 vs labelled images (trapezoid / x range), for
             hybrid  = budget_aware with the typical seed set (the cold-start pipeline a user gets),
             against random with a random seed set (today), target: above on every seed, and against
             the best single strategy (highest mean AUC among the non-random, non-hybrid strategies of
             the random arm); plus the same-arm differences (hybrid - random with the same seed set),
             which separate the seed set's share of the gain from the strategy's.
The hybrid's switch round and its coverage per round come from results.json (`phase`, `coverage`).

On the learning-curve protocol (issue 13's label_efficiency.py: steps with warm start, 3 seeds, the same
seed sets and test set), which is how the targets are measured on 2 cores: the random arm IS that
benchmark's image-level runs, and the typical arm is the same benchmark with `--initial-strategy typical`;
`--protocol` pairs the two, trains nothing:
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --shard 0/2 --threads 1 &   # + 1/2
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --initial-strategy typical --unit images \
        --strategies random,budget_aware --no-full-data --shard 0/2 --threads 1 &            # + 1/2
    .venv/bin/python benchmarks/cold_start.py --protocol                                      # the pairing
The presets below run the two arms here through `simulate` instead (an epochs schedule without warm
start, of its own). Resumable: re-run the same command with the same --workdir; each arm is one
`simulate` OUT, which resumes where it stopped.
Writes benchmarks/results/cold_start.json (or --json): the command, the machine, the settings, the
per-seed table, the target checks and every run's rounds. Absent BCCD: says so and exits 0.

Written here: the two arms, AUC and the paired comparisons. boxloop does the rest.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import (  # noqa: E402
    HERE, add_dataset_args, choose_preset, csv, dataset_or_skip, machine, resolve, settings, write_json,
)

HYBRID = "budget_aware"
# Every value is a default of a flag of the same name (underscores as dashes).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(model="fcos_lite", image_size=320, epochs=12, min_steps=150, batch_size=8, val_every=2, initial=20,
                budget=20, rounds=4, seeds="0,1,2", strategies_random="random,least_confidence,localization_aware,"
                + HYBRID, strategies_typical=f"random,localization_aware,{HYBRID}", detector_options="{}"),
    "gpu": dict(model="fcos_lite", image_size=480, epochs=24, min_steps=300, batch_size=8, val_every=2, initial=20,
                budget=20, rounds=6, seeds="0,1,2,3,4", strategies_random="random,least_confidence,entropy,"
                f"localization_aware,coreset,{HYBRID}", strategies_typical=f"random,localization_aware,{HYBRID}",
                detector_options="{}"),
    # --dataset synthetic: every step runs, nothing is measured
    # (2 seeds to exercise the pairing; only the runs the headline comparisons need: 10 trainings)
    "synthetic": dict(model="fcos_lite", image_size=64, epochs=None, steps=60, min_steps=None, batch_size=4,
                      val_every=1000, initial=6, budget=4, rounds=1, seeds="0,1",
                      strategies_random="random,localization_aware", strategies_typical=HYBRID,
                      detector_options='{"channels": 32, "head_convs": 1}'),
}


def auc(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Area under mAP50 over labelled images, divided by the x range (a mean mAP50 over the curve)."""
    pts = [(r["images_labelled"], r["map50"]) for r in rows if r.get("map50") is not None]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=np.float64).T
    return float(np.trapezoid(y, x) / (x[-1] - x[0])) if x[-1] > x[0] else None


def _by(results: Mapping[str, Any]) -> dict[tuple[str, int], list[dict]]:
    return {(r["strategy"], int(r["seed"])): r["rounds"] for r in results["runs"]}


def paired(a: dict[int, float | None], b: dict[int, float | None]) -> dict[str, Any]:
    """Per seed a - b, their mean and std, and on how many seeds a is above b."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    d = {s: a[s] - b[s] for s in seeds}
    v = np.array(list(d.values()), dtype=np.float64)
    return {"per_seed": d, "mean": float(v.mean()) if v.size else None, "std": float(v.std(ddof=1)) if v.size > 1
            else None, "above_on": int((v > 0).sum()), "seeds": len(seeds)}


def compare(rand: Mapping[str, Any], typ: Mapping[str, Any], seeds: Sequence[int], singles: Sequence[str]
            ) -> dict[str, Any]:
    R, T = _by(rand), _by(typ)
    out: dict[str, Any] = {}
    # round 0: the seed sets (every strategy of an arm shares its round-0 model; take any one)
    r0 = lambda runs: {s: next((rows[0]["map50"] for (n, sd), rows in runs.items() if sd == s and rows), None)  # noqa: E731
                       for s in seeds}
    out["round0_typical_minus_random"] = paired(r0(T), r0(R))
    aucs = {("random_init", n): {s: auc(R[(n, s)]) if (n, s) in R else None for s in seeds} for n, _ in R}
    aucs.update({("typical_init", n): {s: auc(T[(n, s)]) if (n, s) in T else None for s in seeds} for n, _ in T})
    out["auc"] = {f"{arm}/{n}": v for (arm, n), v in aucs.items()}
    best = None
    cands = [n for n in singles if ("random_init", n) in aucs]
    if cands:
        def mean_auc(n: str) -> float:
            v = [x for x in aucs[("random_init", n)].values() if x is not None]
            return float(np.mean(v)) if v else float("-inf")

        best = max(cands, key=mean_auc)
    out["best_single"] = best
    hyb = aucs.get(("typical_init", HYBRID))
    if hyb is not None and ("random_init", "random") in aucs:
        out["hybrid_typical_minus_random_random"] = paired(hyb, aucs[("random_init", "random")])
    if hyb is not None and best is not None:
        out["hybrid_typical_minus_best_single"] = paired(hyb, aucs[("random_init", best)])
    for arm, runs in (("random_init", R), ("typical_init", T)):
        if (arm, HYBRID) in aucs and (arm, "random") in aucs:
            out[f"{arm}_hybrid_minus_random"] = paired(aucs[(arm, HYBRID)], aucs[(arm, "random")])
    # the hybrid's switch: first round whose query was made by localization_aware, and the coverage
    out["switch"] = {arm: {s: {"switch_round": next((r["round"] for r in runs.get((HYBRID, s), [])
                                                     if r.get("phase") == "localization_aware"), None),
                               "coverage": [r.get("coverage") for r in runs.get((HYBRID, s), [])]}
                           for s in seeds} for arm, runs in (("random_init", R), ("typical_init", T))}
    return out


def targets(cmp: Mapping[str, Any], seeds: int) -> dict[str, Any]:
    r0 = cmp["round0_typical_minus_random"]
    h = cmp.get("hybrid_typical_minus_random_random") or {}
    return {"enough_seeds": seeds >= 3,
            "typical_seed_set_beats_random_at_round0_mean": r0["mean"] is not None and r0["mean"] > 0,
            "hybrid_auc_above_random_every_seed": bool(h) and h["seeds"] == seeds and h["above_on"] == seeds}


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:+.{digits}f}" if digits else str(x)


def report(cmp: Mapping[str, Any], seeds: Sequence[int]) -> str:
    lines = ["| comparison (paired per seed) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | above |",
             "|---|" + "---|" * len(seeds) + "---|---|"]
    names = [("round0_typical_minus_random", "round 0 mAP50: typical - random seed set"),
             ("hybrid_typical_minus_random_random", "AUC: hybrid (typical seed) - random (random seed)"),
             ("hybrid_typical_minus_best_single", f"AUC: hybrid (typical seed) - {cmp.get('best_single')} (random seed)"),
             ("random_init_hybrid_minus_random", "AUC, random seed set: hybrid - random"),
             ("typical_init_hybrid_minus_random", "AUC, typical seed set: hybrid - random")]
    for key, label in names:
        p = cmp.get(key)
        if not p:
            continue
        cells = [fmt(p["per_seed"].get(s)) for s in seeds]
        ms = "-" if p["mean"] is None else f"{p['mean']:+.3f} ± {p['std']:.3f}" if p["std"] is not None \
            else f"{p['mean']:+.3f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ms} | {p['above_on']}/{p['seeds']} |")
    lines.append("")
    lines.append("AUC (mean mAP50 over the curve) per run:")
    for name, per in cmp["auc"].items():
        lines.append(f"  {name:40s} " + "  ".join(f"s{s}={'-' if per.get(s) is None else format(per[s], '.3f')}"
                                                   for s in seeds))
    lines.append("hybrid switch round (first query by localization_aware) per seed: " + json.dumps(
        {arm: {s: v["switch_round"] for s, v in per.items()} for arm, per in cmp["switch"].items()}))
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap, synthetic_images=40, synthetic_size=64)
    ap.add_argument("--preset", choices=(*PRESETS, "bccd"), default=None, help="cpu (= bccd, the default), gpu; "
                    "synthetic is implied by --dataset synthetic")
    ap.add_argument("--strategies-random", default=None, help="strategies of the random-seed-set arm")
    ap.add_argument("--strategies-typical", default=None, help="strategies of the typical-seed-set arm")
    ap.add_argument("--initial", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    ap.add_argument("--model", default=None)
    ap.add_argument("--detector-options", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--min-steps", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--val-every", type=int, default=None)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (shared CPU: 1-2)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: benchmarks/results/cold_start_<dataset>")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/cold_start[_synthetic].json")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--protocol", nargs="?", const="/tmp/boxloop_label_efficiency_bccd_cpu", default=None,
                    metavar="WORKDIR", help="pair label_efficiency.py's random-seed-set runs in WORKDIR/images with "
                    "its --initial-strategy typical runs in WORKDIR_typical/images; train nothing")
    args = ap.parse_args(argv)
    args.preset = choose_preset(args, PRESETS)
    resolve(args, PRESETS[args.preset])
    tag = Path(args.dataset).name
    args.workdir = args.workdir or HERE / "results" / f"cold_start_{tag}"
    args.json = args.json or HERE / "results" / ("cold_start.json" if tag == "bccd" else f"cold_start_{tag}.json")
    return args


def protocol_arms(workdir: Path) -> dict[str, dict[str, Any]]:
    """The two arms from label_efficiency.py's results.json files (written by its report)."""
    arms = {}
    for arm, folder in (("random_init", workdir), ("typical_init", Path(f"{workdir}_typical"))):
        path = folder / "images" / "results.json"
        if not path.exists():
            flag = "" if arm == "random_init" else " --initial-strategy typical"
            raise SystemExit(f"{path} is missing: run `benchmarks/label_efficiency.py --preset cpu{flag} "
                             f"--workdir {folder}` (or its --report-only) first")
        arms[arm] = json.loads(path.read_text())
    return arms


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.protocol:
        return main_protocol(args, argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = dataset_or_skip(args)
    if spec is None:
        return 0
    from boxloop.loop.config import LoopConfig
    from boxloop.loop.simulate import simulate

    seeds = [int(s) for s in csv(args.seeds)]
    cfg = LoopConfig.make(model=args.model, detector_options=json.loads(args.detector_options), epochs=args.epochs,
                          steps=getattr(args, "steps", None), min_steps=args.min_steps, image_size=args.image_size,
                          batch_size=args.batch_size, device=args.device, val_every=args.val_every,
                          strategy="random", budget=args.budget)
    t0 = time.perf_counter()
    arms = {}
    for arm, init, names in (("random_init", "random", csv(args.strategies_random)),
                             ("typical_init", "typical", csv(args.strategies_typical))):
        print(f"== {arm}: {', '.join(names)}", flush=True)
        arms[arm] = simulate(spec.images, args.workdir / arm, names, args.initial, args.budget, args.rounds, seeds, cfg,
                             annotations=spec.annotations, fmt=spec.fmt, test_list=spec.test_list,
                             progress=args.progress,
                             echo=lambda m: print(m, flush=True), initial_strategy=init)
    singles = [n for n in csv(args.strategies_random) if n not in ("random", HYBRID)]
    return finish(args, argv, arms, seeds, singles, time.perf_counter() - t0, spec.name)


def main_protocol(args: argparse.Namespace, argv: list[str] | None) -> int:
    workdir = Path(args.protocol)
    arms = protocol_arms(workdir)
    seeds = sorted({int(r["seed"]) for r in arms["typical_init"]["runs"]} & {int(r["seed"]) for r in arms["random_init"]["runs"]})
    singles = sorted({r["strategy"] for r in arms["random_init"]["runs"]} - {"random", HYBRID})
    args.preset = "label_efficiency cpu (protocol)"
    return finish(args, argv, arms, seeds, singles, 0.0, str(workdir))


def finish(args: argparse.Namespace, argv: list[str] | None, arms: Mapping[str, Mapping[str, Any]],
           seeds: Sequence[int], singles: Sequence[str], seconds: float, dataset: str) -> int:
    cmp = compare(arms["random_init"], arms["typical_init"], seeds, singles)
    checks = targets(cmp, len(seeds))
    text = report(cmp, seeds)
    print(text)
    print("targets:", json.dumps(checks))
    out = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None
                                                                                   else sys.argv[1:])]),
           "machine": machine(args.device), "dataset": dataset, "preset": args.preset,
           "settings": settings(args),
           "seconds_this_call": round(seconds, 1), "comparisons": cmp, "targets": checks,
           "table": text, "runs": {arm: res["runs"] for arm, res in arms.items()}}
    write_json(args.json, out)
    print(f"wrote {args.json} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
