"""`boxloop demo`: the whole story on generated data, offline on CPU in a few minutes.

Each step is a small function (the dataset, the project, the test set's sensitivity) and
`run_demo` tells the story in order: generate shapes, init a project, run active learning against
random with a simulated annotator and the never-worse auto-labelling for each seed, print the
learning curves, write report.html. Written by hand here: the demo's settings and its messages;
the work is delegated to `synthetic`, `project`, `simulate`, `compare` and `report`. It prints
through the command line's console (boxloop.cli.output); the `demo` command in boxloop.cli.main parses
the options and calls `run_demo`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import typer
from rich.markup import escape

from boxloop.cli.options import loop_config
from boxloop.cli.output import out, print_status, warn

if TYPE_CHECKING:
    from boxloop.store import Project

DEMO_MARKER = ".boxloop-demo"


def demo_dataset(root: Path, n_images: int, image_size: int, seed: int) -> Path:
    """Generate the synthetic dataset under root/data (replacing an earlier demo's)."""
    from boxloop.synthetic import make_dataset

    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()) and not (root / DEMO_MARKER).exists():
        raise ValueError(f"{root} is not empty and was not made by `boxloop demo`; choose another --out")
    (root / DEMO_MARKER).write_text("made by boxloop demo; safe to delete\n")
    data = root / "data"
    if data.exists():
        shutil.rmtree(data)
    make_dataset(data, n_images=n_images, image_size=image_size, seed=seed)
    return data


DEMO_TEST_FRACTION = 0.25  # 60 of the default 240 images: one test image moves mAP50 by <= 2 points (50 images: 2.1)


def demo_project(root: Path, data: Path, seed: int) -> Project:
    """Init the demo project (replacing an earlier demo's) with the demo's fixed test set."""
    from boxloop.project import init_project

    return init_project(root / "project", data / "images", data / "annotations", test_fraction=DEMO_TEST_FRACTION,
                        seed=seed, force=True, progress=False, log=warn)


def demo_test_sensitivity(run_dir: Path, image_size: int, device: str) -> dict[str, Any]:
    """How far one test image moves the final model's mAP50 (compare.leave_one_out_map50): the
    test set is big enough for the demo's differences when that is small."""
    from boxloop.metrics.compare import leave_one_out_map50
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.model import current_checkpoint
    from boxloop.store import Project
    from boxloop.train.checkpoints import load_detector

    with Project.open(run_dir) as proj:
        truth = proj.annotations("test")
        det, classes, _ = load_detector(current_checkpoint(proj), expect_classes=proj.classes, device=device)
        keys = list(truth)
        preds = {k: d.to_annotation(k, classes) for k, d in
                 predict_paths(det, [proj.image_root / k for k in keys], image_size, device=device,
                               progress=False, keys=keys)}
    return leave_one_out_map50(truth, preds, classes)


def run_demo(out_dir: Path, n_images: int, image_size: int, rounds: int, steps: int, warm_steps: int,
             initial: int, budget: int, seeds: Sequence[int], device: str) -> Path:
    """Run the demo into `out_dir` (its data, project, runs and report), printing each step;
    returns the report's path. `seeds`: one run per seed, the first also draws the data and splits."""
    from boxloop.report import format_table, learning_curve_table, write_report
    from boxloop.loop.simulate import run_name, simulate as run_sim

    seed_list = list(seeds)
    out.print(f"[bold]1.[/bold] generating {n_images} synthetic images ({image_size} px: circles, squares and a rare "
              f"triangle) in {escape(str(out_dir))}/data")
    data = demo_dataset(out_dir, n_images, image_size, seed_list[0])
    out.print(f"[bold]2.[/bold] a project over all of it (every label kept; {DEMO_TEST_FRACTION:.0%} fixed test set): "
              f"{escape(str(out_dir))}/project")
    with demo_project(out_dir, data, seed_list[0]) as proj:
        print_status(proj.status())
    out.print(f"[bold]3.[/bold] active learning with a simulated annotator, seeds {', '.join(map(str, seed_list))}: "
              f"{initial} labelled images to start, {budget} more per round, {rounds} rounds. The first model trains "
              f"{steps} steps (fcos_lite, offline EfficientNet-Lite0), each later round {warm_steps} more from the one "
              "before; every round measures mAP50 on the fixed test set, asks about the most informative images and "
              "auto-labels the confident rest, which the next round keeps only if validation says they help")
    cfg = loop_config(steps=steps, image_size=image_size, batch_size=8, device=device, seed=seed_list[0],
                      strategy="localization_aware", budget=budget, semi="autolabel", pseudo_threshold=0.7,
                      val_every=10 ** 6, warm_start=True, warm_steps=warm_steps)
    sim = out_dir / "simulate"
    if sim.exists():  # an earlier demo's runs (demo_dataset checked that the folder is the demo's own)
        shutil.rmtree(sim)
    strategies = ["random", "localization_aware"]
    res = run_sim(data / "images", sim, strategies, initial=initial, budget=budget, rounds=rounds,
                  seeds=seed_list, config=cfg, annotations=data / "annotations", progress=False,
                  test_fraction=DEMO_TEST_FRACTION, echo=lambda m: out.print("   " + escape(m)))
    typer.echo(format_table(learning_curve_table(res)))  # a wide table: never wrapped to the terminal
    guarded = [r for run in res["runs"] for r in run["rounds"] if "pseudo_kept" in r]
    if guarded:
        kept = sum(bool(r["pseudo_kept"]) for r in guarded)
        out.print(f"   never-worse rule: auto-labels kept in {kept} of {len(guarded)} rounds that had them "
                  "(each such round trained with and without them; results.json says why)")
    last = sim / f"seed{seed_list[-1]}" / run_name(strategies[-1], cfg.pseudo.semi).replace("+", "_")
    loo = demo_test_sensitivity(last, image_size, device)
    if loo["max_change"] is not None:
        out.print(f"   test set: {loo['images']} images; leaving any one out moves the last model's mAP50 by at most "
                  f"{100 * loo['max_change']:.1f} points (mean {100 * loo['mean_change']:.1f})")
    (sim / "test_sensitivity.json").write_text(json.dumps(loo, indent=1))
    report_path = write_report(sim, out_dir / "report.html", title="boxloop demo", overwrite=True)  # the demo's own
    out.print(f"[bold]4.[/bold] [green]report:[/green] {escape(str(report_path.resolve()))}")
    return report_path
