"""The `boxloop` command line: one thin function per command over the modules that do the work.

Typer parses the arguments and rich prints tables and messages. The shared option types and their
reading into configs are in boxloop.cli.options, the consoles and tables in boxloop.cli.output, and
the mapping from user errors (bad labels, broken images, a busy or missing project, invalid values)
to one red line and exit code 1 (usage errors: 2, from click; BOXLOOP_DEBUG=1 shows the traceback)
in boxloop.cli.errors; the demo's story is boxloop.cli.demo. Add a command as one more `@app.command()`
function that calls a module and prints; keep the work in the module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from boxloop.cli.errors import user_errors
from boxloop.cli.options import (BackboneOpt, BatchOpt, DetectorOpt, DeviceOpt, EpochsOpt, ModelOpt, NoPretrainedOpt,
                                 OverwriteOpt, RayAddressOpt, SeedOpt, SizeOpt, StepsOpt, StrictOpt, WorkersOpt,
                                 FORMATS_HELP, INITIAL_STRATEGY_HELP, LR_HELP, OPTIMIZER_HELP, STRATEGY_HELP,
                                 check_detector_options, detector_options, fill_defaults, loop_config, name_list,
                                 open_detector, project_image_size, ray_scoring, unit_float)
from boxloop.cli.output import out, print_autolabel_rows, print_metrics, show_status, warn, wrap_help_as_sentences
from boxloop.defaults import CERTAINTY
from boxloop.strategies import COLD_START_STRATEGY, DEFAULT_STRATEGY, SEED_SET_STRATEGY

app = typer.Typer(
    name="boxloop",
    help="Active learning + auto-labelling around one object detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- commands -----------------------------------------------------------------------------------

@app.command()
@user_errors
def init(
    project: Annotated[Path, typer.Argument(help="Project folder to create.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of images (searched recursively).")],
    annotations: Annotated[Optional[Path], typer.Option(help="Labels: a folder (VOC XML, YOLO txt) or a COCO JSON file.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help=f"{FORMATS_HELP} (detected when omitted).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names, in id order; other names are an error.")] = None,
    test_list: Annotated[Optional[Path], typer.Option(help="Fixed test set: image names without extension, one per line.")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="Fixed test set: this class-stratified fraction of the labelled images.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Validation share of the other labelled images.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the test/val draws.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing project.")] = False,
    strict: StrictOpt = False,
) -> None:
    """Create a project from a folder of images and (optionally) their labels. A truncated image is
    loaded as far as it goes, with a warning; one that cannot be decoded is left out and listed."""
    from boxloop.project import init_project

    if test_list is not None and test_fraction is not None:
        raise typer.BadParameter("pass --test-list or --test-fraction, not both", param_hint="--test-list")
    names = [c for c in classes.split(",")] if classes is not None else None
    proj = init_project(project, images, annotations, fmt=fmt, classes=names, test_list=test_list,
                        test_fraction=test_fraction, seed=seed, force=force, val_fraction=val_fraction,
                        progress=True, log=warn, strict=strict)
    with proj:
        project_image_size(proj, None)  # chosen from the labelled boxes, recorded and said
        s = proj.status()
    out.print(f"[green]created[/green] {escape(str(project))}: {s['images']} images, {s['labelled_images']} labelled "
              f"({s['negative_images']} negative), {s['test_images']} test, {s['boxes']} boxes, "
              f"{len(s['classes'])} classes" + (f", {s['warnings']} warning(s)" if s["warnings"] else ""))
    if s["skipped_images"]:
        out.print(f"[yellow]skipped {len(s['skipped_images'])} image(s) that cannot be decoded:[/yellow] "
                  + escape(", ".join(f"{x['path']} ({x['reason']})" for x in s["skipped_images"][:10]))
                  + (" ..." if len(s["skipped_images"]) > 10 else "") + " (all in `boxloop status --json`)")


@app.command()
@user_errors
def status(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the init warnings).")] = False,
    clear_cache: Annotated[bool, typer.Option("--clear-cache", help="Delete the cached backbone features.")] = False,
) -> None:
    """Counts of images, labels, boxes per class and source, and rounds; the feature cache's size and hit rate."""
    from boxloop.store import Project

    with Project.open(project) as proj:
        show_status(proj, as_json, clear_cache)


@app.command()
@user_errors
def export(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    fmt: Annotated[str, typer.Option("--format", help=f"{FORMATS_HELP}.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the labels into.")],
    subset: Annotated[str, typer.Option(help="labelled, pseudo, all (and train, val, test, partial, predicted).")] = "labelled",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the project's labels in VOC, COCO or YOLO (images stay where they are). COCO and Label
    Studio write one file when --out ends in .json, CVAT when it ends in .xml."""
    from boxloop.loop.review import export_subset
    from boxloop.store import Project

    with Project.open(project) as proj:
        n = len(proj.annotations(subset))
        path = export_subset(proj, fmt, out_dir, subset=subset, overwrite=overwrite, log=warn)
    out.print(f"[green]exported[/green] {n} images ({subset}) as {fmt} to {escape(str(path))}" + ("; correct them there, then "
              "`boxloop import` that folder" if subset == "pseudo" and (path / "batch.json").is_file() else ""))


# -- the detector: train, evaluate, predict ------------------------------------------------------

@app.command()
@user_errors
def train(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    model: ModelOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    epochs: EpochsOpt = None,
    steps: StepsOpt = None,
    image_size: SizeOpt = None,
    batch_size: BatchOpt = None,
    lr: Annotated[Optional[float], typer.Option(help=LR_HELP)] = None,
    optimizer: Annotated[Optional[str], typer.Option(help=OPTIMIZER_HELP)] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    no_pretrained: NoPretrainedOpt = False,
    detector_option: DetectorOpt = None,
    semi: Annotated[bool, typer.Option("--semi", help="Certainty-aware teacher-student training on the unlabelled images (CertaintySSOD).")] = False,
    tau: Annotated[float, typer.Option(help="--semi: base pseudo-label threshold.")] = CERTAINTY.tau,
    gamma1: Annotated[float, typer.Option(help="--semi: exponent of the class-wise dynamic thresholds (eq. 6).")] = CERTAINTY.gamma1,
    gamma2: Annotated[float, typer.Option(help="--semi: exponent of the class re-weighting (eq. 6).")] = CERTAINTY.gamma2,
    no_dynamic_threshold: Annotated[bool, typer.Option("--no-dynamic-threshold", help="--semi: one fixed threshold tau.")] = False,
    no_reweight: Annotated[bool, typer.Option("--no-reweight", help="--semi: no class re-weighting.")] = False,
    no_certainty: Annotated[bool, typer.Option("--no-certainty", help="--semi: score p alone, without localization quality v.")] = False,
    strict: StrictOpt = False,
    nproc: Annotated[Optional[int], typer.Option(min=1, help="Train on this many processes through torchrun (DDP: gloo on CPU, nccl on GPU); --batch-size is the total.")] = None,
    torchrun_args: Annotated[Optional[str], typer.Option(help="With --nproc: torchrun's own options for several machines, e.g. '--nnodes=2 --node-rank=0 --rdzv-endpoint=head:29500'.")] = None,
) -> None:
    """Train on the project's labels (human, partial and auto-labels); keep the best by validation mAP50.

    With --semi, a teacher trained on the labels auto-labels the unlabelled images with class-wise
    thresholds and a student learns from both; "teacher continued" trains as long, as augmented, on
    the labels alone; the student is kept only when it beats teacher continued on validation by more
    than the images' noise (a paired bootstrap interval above 0), else teacher continued is kept.
    Re-running the same command after an interruption resumes from the last checkpoint."""
    from boxloop.loop.model import set_current_checkpoint, test_metrics, train_project
    from boxloop.store import Project
    from boxloop.train.checkpoints import load_detector

    if nproc is not None and semi:
        raise ValueError("--nproc trains supervised only; drop --semi or --nproc")
    with Project.open(project) as proj, proj.writer_lock():
        cfg = loop_config(model=model, backbone=backbone, epochs=epochs, steps=steps, batch_size=batch_size,
                          image_size=project_image_size(proj, image_size, device), device=device, seed=seed,
                          no_pretrained=no_pretrained, detector_option=detector_option, lr=lr, optimizer=optimizer,
                          semi="certainty" if semi else None)
        if semi:
            from boxloop.semi.certainty import SemiConfig, fit_semi

            sc = SemiConfig(tau=tau, gamma1=gamma1, gamma2=gamma2, dynamic_threshold=not no_dynamic_threshold,
                            reweight=not no_reweight, certainty=not no_certainty)
            res = fit_semi(proj, None, cfg.train_config(0), sc, proj.dir / "models" / "semi", model=cfg.detector.model,
                           detector_kwargs=cfg.detector_spec().kwargs())
            set_current_checkpoint(proj, res.best_checkpoint)
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            out.print(f"semi-supervised: {res.pseudo_images} images auto-labelled ({res.pseudo_boxes} boxes); "
                      f"validation mAP50 teacher continued {fmt(res.supervised_val_map50)}, semi {fmt(res.semi_val_map50)}; "
                      f"kept [bold]{res.chosen}[/bold]" + (f" ({res.message})" if res.message else ""))
            best = res.best_checkpoint
        else:
            import shlex

            result, n_train, n_val = train_project(proj, cfg, strict=strict, nproc=nproc,
                                                   torchrun_args=shlex.split(torchrun_args or ""))
            out.print(f"trained {cfg.detector.model} on {n_train} images ({n_val} validation): best validation mAP50 "
                      f"{'-' if result.best_map50 is None else f'{result.best_map50:.3f}'}; checkpoint "
                      f"{escape(str(result.best_checkpoint))}")
            best = result.best_checkpoint
        det, _, _ = load_detector(best, expect_classes=proj.classes)
        m = test_metrics(proj, det, cfg.training.image_size, device)
        if m:
            print_metrics(m, "fixed test set")


@app.command()
@user_errors
def evaluate(
    project: Annotated[Optional[Path], typer.Argument(help="Project folder (evaluates on its fixed test set).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A checkpoint instead of the project's current model.")] = None,
    ground_truth: Annotated[Optional[Path], typer.Option(help="Ground-truth labels (folder of VOC XML, or COCO JSON).")] = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Predictions: VOC XML with <confidence>, COCO JSON or a COCO results list.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="voc or coco (detected when omitted).")] = None,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """mAP50 (VOC all-point), COCO AP/AP50/AP75 and per-class AP: of a model on the fixed test set,
    or of any predictions against any ground truth."""
    if ground_truth is not None or predictions is not None:
        if ground_truth is None or predictions is None:
            raise typer.BadParameter("give both --ground-truth and --predictions", param_hint="--predictions")
        from boxloop.metrics.evaluate import evaluate as run_eval
        from boxloop.predict.files import load_pair

        truth, preds, classes = load_pair(ground_truth, predictions, fmt)
        m = run_eval(truth, preds, classes)
    else:
        if project is None:
            raise typer.BadParameter("give a PROJECT, or --ground-truth and --predictions", param_hint="PROJECT")
        from boxloop.loop.model import test_metrics
        from boxloop.store import Project

        det, _, image_size, ckpt = open_detector(project, checkpoint, device)
        with Project.open(project) as proj:
            m = test_metrics(proj, det, image_size, device, progress=not as_json)
        if not m:
            raise ValueError(f"{project} has no fixed test set; init it with --test-list or --test-fraction")
    if as_json:
        typer.echo(json.dumps(m, indent=2))
    else:
        print_metrics(m, "evaluation")


@app.command()
@user_errors
def predict(
    project: Annotated[Optional[Path], typer.Argument(help="Project folder (uses its current model).")] = None,
    images: Annotated[Path, typer.Option("--images", help="Folder of images to predict.")] = Path("."),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the predictions.")] = Path("predictions"),
    checkpoint: Annotated[Optional[Path], typer.Option(help="A checkpoint instead of a project's model.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="voc (one XML per image with <confidence>) or coco (results list).")] = "voc",
    threshold: Annotated[float, typer.Option(help="Keep boxes scoring at least this.")] = 0.3,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Predict boxes on a folder of images with a trained model (with --workers: on Ray actors). Images
    that cannot be decoded are left out and named; files already in --out are not replaced unless
    --overwrite."""
    from boxloop.predict.files import write_predictions

    if not 0 <= threshold < 1:
        raise ValueError(f"--threshold must lie in [0, 1), got {threshold}")
    from boxloop.defaults import run_defaults

    det, names, image_size, ckpt = open_detector(project, checkpoint, device)
    scoring = ray_scoring(workers, ray_address, device)
    path, n, boxes, skipped = write_predictions(det, names, images, out_dir, fmt, threshold, image_size,
                                                batch_size or run_defaults(device).batch_size, device,
                                                overwrite=overwrite, strict=strict, scoring=scoring, checkpoint=ckpt)
    for rel, problem in skipped:
        warn(f"{images / rel}: {problem}; left out (--strict makes this an error)")
    out.print(f"[green]predicted[/green] {n} images, {boxes} boxes >= {threshold} -> {escape(str(path))}"
              + (f"; {len(skipped)} image(s) could not be decoded and were left out" if skipped else ""))


# -- active learning: query, import, simulate -------------------------------------------------------

@app.command()
@user_errors
def query(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    strategy: Annotated[str, typer.Option(help=STRATEGY_HELP)] = DEFAULT_STRATEGY,
    budget: Annotated[int, typer.Option(help="Images (or boxes) to ask about.")] = 20,
    unit: Annotated[str, typer.Option(help="images or boxes.")] = "images",
    out_dir: Annotated[Path, typer.Option("--out", help="A new or empty folder for the batch (images + pre-annotations).")] = Path("query"),
    fmt: Annotated[str, typer.Option("--format", help=f"{FORMATS_HELP} (voc: LabelImg, CVAT).")] = "voc",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Use this model instead of training one for the round.")] = None,
    model: ModelOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    epochs: EpochsOpt = None,
    steps: StepsOpt = None,
    image_size: SizeOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    no_pretrained: NoPretrainedOpt = False,
    detector_option: DetectorOpt = None,
    empty_share: Annotated[float, typer.Option(help="Share of the batch for images where the model sees nothing.")] = 0.0,
    semi: Annotated[Optional[str], typer.Option(help="After the answers: autolabel or certainty.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an open batch that was never answered (it goes stale).")] = False,
    strict: StrictOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """One round for a human annotator: train, predict the pool, pick the most informative images
    (or boxes), and write them pre-annotated for a labelling tool. Answer with `boxloop import`.
    A project with no model and no label yet gets its first batch from `typical` (no training)."""
    from boxloop.loop.human import check_batch_target, query_round, write_batch
    from boxloop.store import Project, QueryState

    cfg = loop_config(model=model, backbone=backbone, epochs=epochs, steps=steps, image_size=image_size,
                      batch_size=batch_size, device=device, seed=seed, no_pretrained=no_pretrained,
                      detector_option=detector_option, strategy=strategy, unit=unit, budget=budget,
                      empty_share=empty_share, semi=semi)
    check_batch_target(out_dir, fmt)  # before any work: a wrong --format or --out must change nothing
    scoring = ray_scoring(workers, ray_address, device)  # the pool is scored on Ray actors
    with Project.open(project) as proj, proj.writer_lock():
        round_id, m, cold = query_round(proj, cfg, checkpoint, force=force, strict=strict, scoring=scoring)
        path = write_batch(proj, round_id, out_dir, fmt)
        n = len(proj.queries(round=round_id, state=QueryState.OPEN))
        from boxloop.loop.forecast import forecast_line
        from boxloop.loop.history import round_history

        ahead = forecast_line(round_history(proj), unit, budget)  # what the next batch should buy (3+ rounds)
    if m.get("map50") is not None:
        out.print(f"round {round_id}: model mAP50 {m['map50']:.3f} on the fixed test set")
    if ahead:
        out.print(escape(ahead))
    if cold:
        out.print(f"no trained model and no labelled image yet: the first batch is chosen by [bold]{COLD_START_STRATEGY}[/bold] "
                  "(the most representative images of each cluster of the pretrained backbone's embedding), "
                  "not by " + escape(strategy) + "; its images come without pre-annotations")
        strategy, unit = COLD_START_STRATEGY, "images"
    todo = "draw the boxes there (an image saved with none is taken as holding no object)" if cold else \
        "correct the pre-annotated boxes there"
    out.print(f"[green]asked[/green] about {n} {unit} ({strategy}); batch in {escape(str(path))}\n"
              f"{todo}, then run: boxloop import {escape(str(project))} "
              f"--annotations {escape(str(path))}")


@app.command("import")
@user_errors
def import_(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    annotations: Annotated[Path, typer.Option(help="The answered batch folder or file.")],
    fmt: Annotated[Optional[str], typer.Option("--format", help=f"{FORMATS_HELP} (detected when omitted).")] = None,
    unchanged: Annotated[Optional[str], typer.Option(help="Images whose labels are still exactly the pre-annotations where import cannot tell whether a person checked them (a COCO or CVAT file; a label file with boxloop's bytes under a new time): 'answered' (they were checked) or 'open' (leave them for later); without it import stops and names them. A file never saved stays open either way.")] = None,
) -> None:
    """Take an annotator's answers for the open query batch or a review batch; nothing is written if any answer is wrong."""
    from boxloop.loop.review import import_batch
    from boxloop.store import IMPORT_LOCK, Project

    with Project.open(project) as proj, proj.writer_lock(IMPORT_LOCK):  # beside training, not another import
        res = import_batch(proj, annotations, fmt, unchanged=unchanged)
    for w in res["warnings"]:
        warn(w)
    c = res["cost"]
    out.print(f"[green]imported[/green] {res['images']} images, {res['boxes']} boxes for round {res['round']}: "
              f"{c['boxes_verified']} verified, {c['boxes_drawn']} drawn, {c['boxes_removed']} removed "
              f"(~{c['seconds'] / 60:.1f} min of annotation)" + (f"; {res['left_open']} queries still open" if res['left_open'] else ""))


@app.command()
@user_errors
def simulate(
    dataset: Annotated[Path, typer.Option("--dataset", help="A labelled dataset: a VOC root or an images folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the runs, results.json and plots.")],
    annotations: Annotated[Optional[Path], typer.Option(help="Its labels (when not a VOC root).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help=f"{FORMATS_HELP} (detected when omitted).")] = None,
    test_list: Annotated[Optional[Path], typer.Option(help="Fixed test set names (else --test-fraction).")] = None,
    test_fraction: Annotated[float, typer.Option(help="Class-stratified test share when no --test-list.")] = 0.2,
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies to compare.")] = "random,localization_aware",
    initial: Annotated[int, typer.Option(help="Seed set: images labelled before round 0.")] = 20,
    initial_strategy: Annotated[str, typer.Option(help=INITIAL_STRATEGY_HELP)] = SEED_SET_STRATEGY,
    budget: Annotated[int, typer.Option(help="Images (or boxes) asked per round.")] = 20,
    rounds: Annotated[int, typer.Option(min=0, help="Query rounds after the initial one.")] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="Random seeds (each: its own seed set and initial model).")] = 1,
    unit: Annotated[str, typer.Option(help="images or boxes.")] = "images",
    model: ModelOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    epochs: EpochsOpt = None,
    steps: StepsOpt = None,
    image_size: SizeOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    semi: Annotated[Optional[str], typer.Option(help="Add auto-labelling to every round: autolabel or certainty.")] = None,
    take_all_last: Annotated[bool, typer.Option(help="The last round takes every image left (LocAwareAL §6.6).")] = False,
    no_pretrained: NoPretrainedOpt = False,
    detector_option: DetectorOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Compare strategies on labelled data with a simulated annotator; writes OUT/results.json and plots.
    Re-running the same command resumes where it stopped. With --workers, each strategy x seed run is
    a Ray task (one torch thread each)."""
    from boxloop.report import format_table, learning_curve_table
    from boxloop.loop.simulate import simulate as run_sim

    names = name_list(strategies, "--strategies")
    cfg = loop_config(model=model, backbone=backbone, epochs=epochs, steps=steps, image_size=image_size,
                      batch_size=batch_size, device=device, no_pretrained=no_pretrained,
                      detector_option=detector_option, strategy=names[0], unit=unit, budget=budget, semi=semi,
                      take_all_last=take_all_last)
    for name in names[1:]:
        cfg.with_(strategy=name)  # validates every name before any work
    res = run_sim(dataset, out_dir, names, initial, budget, rounds, list(range(seeds)), cfg,
                  annotations=annotations, fmt=fmt, test_list=test_list, test_fraction=test_fraction,
                  echo=lambda m: out.print(escape(m)), initial_strategy=initial_strategy, workers=workers,
                  ray_address=ray_address)
    typer.echo(format_table(learning_curve_table(res)))  # a wide table: never wrapped to the terminal
    out.print(f"results: {escape(str(out_dir / 'results.json'))}, plots: {escape(str(out_dir / 'plots'))}")


@app.command()
@user_errors
def autolabel(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    threshold: Annotated[str, typer.Option(help="An image joins training when a detection scores above this (TSODA: 0.8; 0.9 works better there), or 'auto': the lowest threshold whose validation precision is >= --target-precision.")] = "0.8",
    target_precision: Annotated[float, typer.Option(help="--threshold auto: the validation precision to reach.")] = 0.9,
    iterations: Annotated[Optional[int], typer.Option(help="At most this many iterations (default: until the pool is empty).")] = None,
    steps_first: Annotated[Optional[int], typer.Option(help="Training steps of the first iteration (default: TSODA's 2,500 scaled to the dataset).")] = None,
    steps_increment: Annotated[Optional[int], typer.Option(help="Steps added per iteration (default: 1,500 scaled).")] = None,
    steps_max: Annotated[Optional[int], typer.Option(help="Most steps of one iteration (default: 8,500 scaled).")] = None,
    model: ModelOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    image_size: SizeOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    no_pretrained: NoPretrainedOpt = False,
    detector_option: DetectorOpt = None,
) -> None:
    """Iterative self-training (TSODA, TSODA): train, auto-label the images the model is sure of,
    retrain, repeat. Writes PROJECT/autolabel.json; `export --subset pseudo` hands the auto-labels to a
    labelling tool for review. Re-running after an interruption resumes."""
    from boxloop.semi.autolabel_config import AutolabelConfig
    from boxloop.semi.autolabel import autolabel as run_autolabel, autolabel_pool
    from boxloop.store import Project

    thr: float | str = "auto" if threshold.strip().lower() == "auto" else unit_float(threshold, "--threshold")
    from boxloop.defaults import run_defaults

    d = run_defaults(device)
    model, image_size, batch_size = fill_defaults(d, model, image_size, batch_size)
    options = detector_options(detector_option)
    check_detector_options(model, {"backbone": backbone, **options})
    config = AutolabelConfig.make(  # the command's options, in one place
        threshold=thr, target_precision=target_precision, iterations=iterations, steps_first=steps_first,
        steps_increment=steps_increment, steps_max=steps_max, model=model, backbone=backbone,
        pretrained_backbone=not no_pretrained, image_size=image_size, batch_size=batch_size, device=device, seed=seed,
        detector_options=options)
    with Project.open(project) as proj, proj.writer_lock():
        if not autolabel_pool(proj) and not (proj.dir / "autolabel.json").exists():
            out.print("no unlabelled images: nothing to auto-label (train supervised with `boxloop train`)")
            return
        rows = run_autolabel(proj, config)
    print_autolabel_rows(rows)
    if rows and rows[-1].get("guidance"):
        out.print(f"[yellow]nothing auto-labelled in iteration {rows[-1]['iteration']}:[/yellow] {escape(rows[-1]['guidance'])}")
    out.print(f"rows in {escape(str(project / 'autolabel.json'))}; review the auto-labels: boxloop export {escape(str(project))} "
              f"--subset pseudo --format voc --out review/, then boxloop import {escape(str(project))} --annotations review/")


@app.command()
@user_errors
def report(
    source: Annotated[Path, typer.Argument(help="A simulate --out folder (or its results.json), or a project folder.")],
    out_html: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
    overwrite: OverwriteOpt = False,
) -> None:
    """One self-contained HTML page: learning curves, per-class AP, labels per class, thresholds,
    pseudo-labels, annotation cost and a gallery of the last query. A file already at --out is not
    replaced unless --overwrite."""
    from boxloop.report import write_report
    from boxloop.report import report_source

    data, gallery, title = report_source(source)
    path = write_report(data, out_html, title=title, gallery=gallery, overwrite=overwrite)
    out.print(f"[green]report[/green] {escape(str(path))}")


@app.command()
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, runs and report.")] = Path("demo_out"),
    n_images: Annotated[int, typer.Option("--images", help="Synthetic images to generate (a quarter is the test set).")] = 240,
    image_size: Annotated[int, typer.Option(help="Side of each square image, pixels.")] = 96,
    rounds: Annotated[int, typer.Option(help="Active-learning rounds after the initial one.")] = 3,
    steps: Annotated[int, typer.Option(help="Training steps of the first model.")] = 150,
    warm_steps: Annotated[int, typer.Option(help="Training steps of each later round, from the round before.")] = 60,
    initial: Annotated[int, typer.Option(help="Images labelled at random before the first round.")] = 10,
    budget: Annotated[int, typer.Option(help="Images the simulated annotator labels per round.")] = 10,
    seeds: Annotated[str, typer.Option(help="Seeds for splits and training, comma-separated: the spread is shown.")] = "0,1",
    device: DeviceOpt = "cpu",
) -> None:
    """The whole story, offline on CPU in a few minutes: a generated dataset, a project, active learning
    (localization-aware against random) plus auto-labelling with a simulated annotator, mAP on the fixed
    test set every round for two seeds, and report.html. Auto-labels train a round's model only when
    validation shows they help (the never-worse rule: the round also trains without them)."""
    from boxloop.cli.demo import run_demo

    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    if not seed_list:
        raise typer.BadParameter("give at least one seed, e.g. 0,1", param_hint="--seeds")
    run_demo(out_dir, n_images, image_size, rounds, steps, warm_steps, initial, budget, seed_list, device)


wrap_help_as_sentences(app)  # after every command is registered; `python -m boxloop.cli` is __main__.py
