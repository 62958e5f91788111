"""Benchmark strategies on a dataset that is already labelled, with a simulated annotator.

For each seed: one base project gets the fixed test set and a seed set of `initial` labelled images
(every other label withheld), and trains the round-0 model once. The seed set is drawn at random, or
with `initial_strategy="typical"` chosen by typicality in the pretrained backbone's embedding (the
cold start a real project gets from `boxloop query`). Every strategy
starts from a copy of that base (same seed set, same initial model), then runs its rounds with the
withheld labels as the oracle. Results of all runs go to OUT/results.json in the schema of issue 4,
plots beside it. Re-running the same command on the same OUT resumes each project where it stopped
(projects are copied whole or not at all; each round resumes at its step).

Written by hand: the experiment layout and the withholding of labels; the rest is loop.run_round.
With `workers`/`ray_address` the same `seed_base` and `run_strategy` calls run as Ray tasks
(boxloop.scale.ray_simulate), each in its own folder; only their scheduling differs.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from boxloop.loop.forecast import forecast_line
from boxloop.loop.history import round_history
from boxloop.loop.round import step_pause, assign_splits, run_round
from boxloop.loop.config import LoopConfig
from boxloop.scale.ray_simulate import Job, simulate_on_ray
from boxloop.store import DB_NAME, Project
from boxloop.strategies import NEEDS_EMBEDDING
from boxloop.structures import Annotation


def dataset_paths(dataset: Path, annotations: Path | None) -> tuple[Path, Path | None]:
    """(images dir, annotations dir|file) for a VOC root or an images folder with labels beside it."""
    from boxloop.formats.voc import find_voc_layout

    dataset = Path(dataset)
    if annotations is not None:
        return dataset, Path(annotations)
    layout = find_voc_layout(dataset)
    if layout is not None:
        return layout[0], layout[1]
    for name in ("annotations", "Annotations", "labels"):
        if (dataset.parent / name).exists():
            return dataset, dataset.parent / name
    raise ValueError(f"{dataset}: cannot find annotations for the simulation; give --annotations DIR|FILE "
                     "(the simulated oracle answers from them)")


def load_truth(images: Path, annotations: Path, fmt: str | None = None, classes: Sequence[str] | None = None
               ) -> dict[str, Annotation]:
    from boxloop import formats

    return formats.load(fmt, annotations, images_root=images, classes=classes).annotations


INITIAL_STRATEGIES = ("random", "typical")


def initial_set(project: Project, candidates: Sequence[str], initial: int, seed: int, strategy: str = "random",
                device: str = "auto") -> list[str]:
    """The seed set: `initial` of `candidates`, at random or by `typical` (seeded either way)."""
    if strategy not in INITIAL_STRATEGIES:
        raise ValueError(f"initial strategy must be one of {', '.join(INITIAL_STRATEGIES)}, got {strategy!r}")
    rng = np.random.default_rng([seed, 12345])
    if strategy == "random":
        return sorted(candidates[i] for i in rng.choice(len(candidates), size=initial, replace=False))
    from boxloop.predict.embedding import project_embeddings
    from boxloop.strategies import DetectionTable, select

    table = DetectionTable.empty(keys=list(candidates), num_classes=project.num_classes)
    sel = select("typical", table, initial, rng=rng, image_features=project_embeddings(project, candidates, device))
    return sorted(sel.items)


def withhold(project: Project, initial: int, seed: int, config: LoopConfig, initial_strategy: str = "random"
             ) -> list[str]:
    """Keep `initial` labelled non-test images labelled (chosen by `initial_strategy`); make every other
    non-test image unlabelled."""
    candidates = project.image_set("labelled_not_test")
    if initial > len(candidates):
        raise ValueError(f"--initial {initial} is more than the {len(candidates)} labelled non-test images")
    keep = initial_set(project, candidates, initial, seed, initial_strategy, config.training.device)
    keep_set = set(keep)
    with project.transaction():
        hidden = [p for p in candidates if p not in keep_set]
        for p in hidden:
            project.deactivate_boxes(p)
        project.set_status(hidden, "unlabelled")
        project.set_split(hidden, None)
        project.set_split(keep, None)
        assign_splits(project, keep, config.with_(val_fraction=0.2), 0)
        project.set_meta("initial_strategy", initial_strategy)
        project.set_meta("withheld_for_simulation", len(hidden))
    return keep


def copy_project(src: Project, dst: Path) -> None:
    """The database (SQLite backup API: consistent even with WAL) and the round-0 model, atomically.

    The copy is built in DST.XXXXXXXX (tempfile.mkdtemp beside DST) and renamed to DST when whole;
    until then that folder is a copy in flight, not a run: a kill leaves it there, and the next copy
    to DST removes it first. Its database file exists, empty, from the connect on: SQLite writes the
    backup's pages at its commit. The step pause (env BOXLOOP_STEP_PAUSE, as before each loop step)
    holds the copy in that state, so that the crash-safety harness can kill it there."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(glob.escape(dst.name) + ".????????"):  # a copy killed before its rename
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=dst.name + ".", dir=dst.parent))
    try:
        pause = step_pause()
        src.backup_to(tmp / DB_NAME, before=(lambda: time.sleep(pause)) if pause else None)
        models = src.dir / "models" / "round_000"
        if models.exists():
            shutil.copytree(models, tmp / "models" / "round_000")
        cache = src.dir / "cache"  # image embeddings (typical, budget_aware): the same images, no need to redo
        if cache.exists():
            shutil.copytree(cache, tmp / "cache")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_name(strategy: str, semi: str | None) -> str:
    return strategy if not semi else f"{strategy}+{semi}"


@dataclass(frozen=True)
class SimSpec:
    """What every run of one `simulate` command shares (picklable: Ray ships it to its workers)."""

    out: Path
    images: Path
    annotations: Path | None
    fmt: str | None
    test_list: Path | None
    test_fraction: float | None
    initial: int
    budget: int
    rounds: int
    config: LoopConfig
    initial_strategy: str = "random"
    embed: bool = False  # some strategy needs image embeddings: the base computes them once, runs copy the cache

    def base_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}" / "base"

    def run_dir(self, seed: int, strategy: str) -> Path:
        return self.out / f"seed{seed}" / run_name(strategy, self.config.pseudo.semi).replace("+", "_")


EXPERIMENT_FILE = "simulate_config.json"
# What a rerun on the same OUT may change: the runs it adds (strategies, seeds, --semi) and where it runs.
_PER_RUN = ("strategy", "semi", "device")


def experiment(spec: SimSpec, dataset: Path) -> dict[str, Any]:
    """What one OUT holds one of: the data, the test split, the seed set and every setting of the rounds.
    Runs of another strategy, seed or --semi join the same OUT; anything else is another experiment."""
    settings = {k: v for k, v in spec.config.flat().items() if k not in _PER_RUN}
    return {"dataset": str(Path(dataset).resolve()), "images": str(spec.images.resolve()),
            "annotations": None if spec.annotations is None else str(spec.annotations.resolve()), "format": spec.fmt,
            "test_list": None if spec.test_list is None else str(Path(spec.test_list).resolve()),
            "test_fraction": None if spec.test_list else spec.test_fraction, "initial": spec.initial,
            "initial_strategy": spec.initial_strategy, "rounds": spec.rounds, **settings, "budget": spec.budget}


def check_experiment(out: Path, current: dict[str, Any]) -> None:
    """Refuse an OUT made by another experiment, naming what differs: its runs would be taken as this
    one's (a rerun only resumes). OUTs written before the experiment was recorded compare what they kept."""
    path = out / EXPERIMENT_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}), so {out} may hold another experiment's runs; "
                         "use another --out") from None
    old = saved.get("experiment")
    if not isinstance(old, dict):  # before the experiment was recorded: the command's fields and config
        old = {k: saved[k] for k in ("initial", "initial_strategy", "budget", "rounds") if k in saved}
        if "dataset" in saved:
            old["dataset"] = str(Path(saved["dataset"]).resolve())
        if isinstance(saved.get("config"), dict):
            from boxloop.loop.config import LoopConfig

            old.update({k: v for k, v in LoopConfig.from_dict(saved["config"]).flat().items()
                        if k not in _PER_RUN and k != "budget"})
    differ = [f"--{k.replace('_', '-')} {old[k]} (now {current[k]})" for k in current
              if k in old and json.dumps(old[k], sort_keys=True) != json.dumps(current[k], sort_keys=True, default=str)]
    if differ:
        raise ValueError(f"{out} holds the runs of another experiment: {'; '.join(differ)}. A rerun on the same "
                         "--out only resumes the same experiment (other strategies, seeds or --semi may join it); "
                         "use another --out for this one")


def seed_base(spec: SimSpec, seed: int, truth: dict[str, Annotation], progress: bool = True,
              echo: Callable[[str], None] = print) -> Path:
    """OUT/seedS/base: the seed set kept (chosen by `spec.initial_strategy`), every other label
    withheld, image embeddings when a strategy needs them, the round-0 model trained (resumes)."""
    from boxloop.project import init_project

    cfg0 = spec.config.with_(seed=seed, budget=spec.budget)
    base_dir = spec.base_dir(seed)
    if not (base_dir / DB_NAME).exists() or Project.open(base_dir).get_meta("withheld_for_simulation") is None:
        project = init_project(base_dir, spec.images, spec.annotations, fmt=spec.fmt, test_list=spec.test_list,
                               test_fraction=None if spec.test_list else spec.test_fraction, seed=seed, force=True,
                               progress=progress)
        withhold(project, spec.initial, seed, cfg0, spec.initial_strategy)
    else:  # the same experiment (simulate's check_experiment)
        project = Project.open(base_dir)
    with project:
        if spec.embed:  # embed once here; every run's copy takes the cache
            from boxloop.predict.embedding import project_embeddings

            project_embeddings(project, [r.path for r in project.images(...) if r.split != "test"],
                               spec.config.training.device)
        echo(f"seed {seed}: initial model on {spec.initial} labelled images ({spec.initial_strategy} seed set)")
        run_round(project, cfg0, truth, 0, progress=progress, stop_at="predict")
    return base_dir


def run_strategy(spec: SimSpec, seed: int, strategy: str, truth: dict[str, Annotation], progress: bool = True,
                 echo: Callable[[str], None] = print) -> Path:
    """One strategy's rounds in its own folder, started from a copy of the seed's base (resumes)."""
    run_dir = spec.run_dir(seed, strategy)
    if not (run_dir / DB_NAME).exists():
        with Project.open(spec.base_dir(seed)) as base:
            copy_project(base, run_dir)
    cfg = spec.config.with_(seed=seed, budget=spec.budget, strategy=strategy)
    name = run_name(strategy, spec.config.pseudo.semi)
    with Project.open(run_dir) as run:
        for r in range(spec.rounds + 1):
            echo(f"seed {seed} {name}: round {r}/{spec.rounds}")
            run_round(run, cfg, truth, r, last=(r == spec.rounds), progress=progress)
            line = forecast_line(round_history(run), spec.config.selection.unit, spec.budget)  # from the third round on
            if line:
                echo(f"seed {seed} {name}: {line}")
    return run_dir


def run_finished(spec: SimSpec, seed: int, strategy: str) -> bool:
    """True when the run's last round is done (a rerun has nothing left to do for it)."""
    db = spec.run_dir(seed, strategy) / DB_NAME
    if not db.exists():
        return False
    with Project.open(db.parent) as p:
        last = p.round(spec.rounds)
    return last is not None and last.status == "done"


def simulate(dataset: Path, out: Path, strategies: Sequence[str], initial: int, budget: int, rounds: int,
             seeds: Sequence[int], config: LoopConfig, annotations: Path | None = None, fmt: str | None = None,
             test_list: Path | None = None, test_fraction: float | None = 0.2, progress: bool = True,
             echo: Callable[[str], None] = print, initial_strategy: str = "random", workers: int | None = None,
             ray_address: str | None = None) -> dict[str, Any]:
    """Run every (seed, strategy) for `rounds` query rounds; returns (and writes) the results dict.
    `initial_strategy`: how the seed set is chosen, "random" or "typical"; one OUT holds one kind.

    With `workers` or `ray_address`, every run is a Ray task (boxloop.scale.ray_simulate); the results are
    the same as those of the sequential runs."""
    if not strategies or not seeds:
        raise ValueError("give at least one strategy and one seed")
    if initial_strategy not in INITIAL_STRATEGIES:
        raise ValueError(f"--initial-strategy must be one of {', '.join(INITIAL_STRATEGIES)}, got {initial_strategy!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, ann = dataset_paths(Path(dataset), annotations)
    truth = load_truth(images, ann, fmt)
    spec = SimSpec(out=out, images=images, annotations=ann, fmt=fmt, test_list=test_list,
                   test_fraction=test_fraction, initial=initial, budget=budget, rounds=rounds, config=config,
                   initial_strategy=initial_strategy, embed=any(s in NEEDS_EMBEDDING for s in strategies))
    current = experiment(spec, dataset)
    check_experiment(out, current)  # before any work, also when every run is finished
    tmp = out / (EXPERIMENT_FILE + ".tmp")
    tmp.write_text(json.dumps(
        {"dataset": str(dataset), "strategies": list(strategies), "initial": initial,
         "initial_strategy": initial_strategy, "budget": budget, "rounds": rounds, "seeds": list(seeds),
         "config": config.to_dict(), "experiment": current}, indent=2, default=str))
    os.replace(tmp, out / EXPERIMENT_FILE)
    if workers is not None or ray_address is not None:
        simulate_on_ray(missing_jobs(spec, seeds, strategies), run_job, spec, truth, workers=workers,
                        address=ray_address, echo=echo)
    else:
        for seed in seeds:
            seed_base(spec, seed, truth, progress, echo)
            for strategy in strategies:
                run_strategy(spec, seed, strategy, truth, progress, echo)
    results = collect_results(out, strategies, seeds, config, initial_strategy)
    write_results(out, results)
    write_gallery(spec.run_dir(seeds[-1], strategies[-1]), out)
    return results


def write_gallery(run_dir: Path, out: Path) -> None:
    """OUT/gallery.json: the last query of one run, boxes coloured by provenance in the report."""
    from boxloop.report import project_gallery

    if not (run_dir / DB_NAME).exists():
        return
    with Project.open(run_dir) as p:
        items = project_gallery(p)
    tmp = out / "gallery.json.tmp"
    tmp.write_text(json.dumps(items, indent=1))
    os.replace(tmp, out / "gallery.json")


def collect_results(out: Path, strategies: Sequence[str], seeds: Sequence[int], config: LoopConfig,
                    initial_strategy: str = "random") -> dict[str, Any]:
    runs = []
    for seed in seeds:
        for strategy in strategies:
            name = run_name(strategy, config.pseudo.semi)
            run_dir = out / f"seed{seed}" / name.replace("+", "_")
            if not (run_dir / DB_NAME).exists():
                continue
            with Project.open(run_dir) as p:
                rows = round_history(p)
            run = {"strategy": strategy, "seed": seed, "unit": config.selection.unit, "semi": config.pseudo.semi,
                   "initial_strategy": initial_strategy, "project": str(run_dir), "rounds": rows}
            if any("phase" in r for r in rows):  # budget_aware: the first round that queried by localization
                run["switch_round"] = next((r["round"] for r in rows if r.get("phase") == "localization_aware"), None)
            runs.append(run)
    return {"runs": runs}


def write_results(out: Path, results: dict[str, Any]) -> Path:
    """results.json written atomically, then the plots beside it (when matplotlib is at hand)."""
    path = out / "results.json"
    existing = {"runs": []}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {"runs": []}
    # keep runs of other commands (e.g. with and without --semi) on the same OUT
    key = lambda r: (r["strategy"], r["seed"], r["unit"], r.get("semi"))  # noqa: E731
    merged = {key(r): r for r in existing.get("runs", [])}
    merged.update({key(r): r for r in results["runs"]})
    results = {"runs": list(merged.values())}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False, default=float))
    os.replace(tmp, path)
    try:
        from boxloop.report import plot_learning_curves
    except ImportError:
        return path
    plot_learning_curves(results, out / "plots")
    return path


# -- the jobs of `--workers`: what scale/ray_simulate.py schedules as Ray tasks -------------------

def run_job(job: Job, spec: SimSpec, truth: dict[str, Annotation], threads: int = 1) -> Job:
    """The body of one Ray task: a seed's base or one run, quietly, with `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    kind, seed, strategy = job
    if kind == "base":
        seed_base(spec, seed, truth, progress=False, echo=lambda m: None)
    else:
        assert strategy is not None
        run_strategy(spec, seed, strategy, truth, progress=False, echo=lambda m: None)
    return job


def missing_jobs(spec: SimSpec, seeds: Sequence[int], strategies: Sequence[str]) -> list[Job]:
    """Bases, then runs, of what a rerun still has to do (a finished run is left alone)."""
    runs = [("run", s, st) for s in seeds for st in strategies if not run_finished(spec, s, st)]
    bases = [("base", s, None) for s in dict.fromkeys(s for _, s, _ in runs)]
    return bases + runs  # type: ignore[return-value]
