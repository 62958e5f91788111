"""The `boxloop` command line: one thin function per command over the modules that do the work.

Typer parses the arguments and rich prints tables and messages; written by hand here are only the
mapping from user errors (bad labels, broken images, a busy or missing project, invalid values) to
one red line and exit code 1 (usage errors: 2, from click; BOXLOOP_DEBUG=1 shows the traceback),
and the status table. Add a command as
one more `@app.command()` function that calls a module and prints; keep the work in the module.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from boxloop.store import Project

app = typer.Typer(
    name="boxloop",
    help="Active learning + auto-labelling around one object detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'your input is wrong', not 'boxloop is broken' (no traceback)."""
    from boxloop.formats import FormatError
    from boxloop.images import ImageError
    from boxloop.store import ProjectBusy

    return (FormatError, ImageError, ProjectBusy, ValueError, FileNotFoundError, NotADirectoryError, KeyError)


class _EchoWarnings(logging.Handler):
    """boxloop's logged warnings (an image left out, a strategy with nothing to rank) as warning lines."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def user_errors(fn: F) -> F:
    """Decorator: a user error becomes one red line on stderr and exit code 1; logged warnings and
    Python warnings (a truncated image loaded) become yellow warning lines while the command runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logger, echo = logging.getLogger("boxloop"), _EchoWarnings(logging.WARNING)
        logger.addHandler(echo)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, *_a, **_k: warn(str(message))
                return fn(*args, **kwargs)
        except _user_errors() as e:
            if os.environ.get("BOXLOOP_DEBUG"):
                raise  # the full traceback, for bug reports
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            err.print(f"[bold red]error:[/bold red] [red]{escape(str(msg))}[/red]")
            raise typer.Exit(1) from None
        except Exception as e:  # a full disk or a read-only folder is the machine's state, not a bug
            msg = storage_problem(e, kwargs.get("project"))
            if msg is None or os.environ.get("BOXLOOP_DEBUG"):
                raise
            err.print(f"[bold red]error:[/bold red] [red]{escape(msg)}[/red]")
            raise typer.Exit(1) from None
        finally:
            logger.removeHandler(echo)

    return wrapper  # type: ignore[return-value]


def storage_problem(e: BaseException, project: Path | None = None) -> str | None:
    """What to tell the user when `e` (or an exception it was raised from: torch wraps a failed write
    in a RuntimeError) is a full disk, a read-only file system or a denied write; None otherwise."""
    import errno
    import sqlite3

    def readonly(folder: Path) -> bool:
        try:
            return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
        except OSError:
            return False

    def full(folder: Path) -> bool:
        try:
            st = os.statvfs(folder)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 1 << 20

    again = "run the same command again (the project keeps everything saved before this failure)"
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        # a failed copy names (source, destination): the destination is what could not be written
        name = (getattr(x, "filename2", None) or getattr(x, "filename", None) or project or "a file")
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"cannot write {name}: no space left on the device; free some disk space and {again}"
        if isinstance(x, OSError) and x.errno == errno.EROFS:
            return (f"cannot write {name}: read-only file system; make it writable "
                    f"(or copy the project to a writable folder) and {again}")
        if isinstance(x, OSError) and x.errno in (errno.EACCES, errno.EPERM) and x.filename:
            return f"permission denied: {name}; give this user access to it and {again}"
        if isinstance(x, sqlite3.OperationalError) and project is not None:
            text, where = str(x), Path(project)
            db = where / "boxloop.db"
            if "full" in text or ("disk I/O" in text and full(where)):
                return f"cannot write {db}: no space left on the device ({text}); free some disk space and {again}"
            if "readonly" in text or "read-only" in text or ("unable to open" in text and readonly(where)):
                return (f"cannot write {db}: the project folder is read-only ({text}); make it writable "
                        f"(or copy the project to a writable folder) and {again}")
            if "disk I/O" in text or "unable to open" in text:
                return f"cannot use {db}: {text}; check the disk and the folder's permissions, then {again}"
        x = x.__cause__ or x.__context__
    return None


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}")


def print_status(status: dict[str, Any]) -> None:
    """The human-readable form of `Project.status()`."""
    t = Table(title=f"boxloop project {status['project']}", show_header=False, title_justify="left")
    t.add_column("what")
    t.add_column("count", justify="right")
    rows = [
        ("images", status["images"]),
        ("  test (fixed)", status["test_images"]),
        ("  train", status["train_images"]),
        ("  val", status["val_images"]),
        ("  pool (no split)", status["pool_images"]),
        ("labelled images", status["labelled_images"]),
        ("  of which negative", status["negative_images"]),
        ("partially labelled images", status["partial_images"]),
        ("unlabelled images", status["unlabelled_images"]),
        ("auto-labelled images", status["pseudo_images"]),
        ("human boxes", status["boxes"]),
        ("rounds", status["rounds"]),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    out.print(t)
    c = Table(title="boxes", title_justify="left")
    c.add_column("class")
    c.add_column("human", justify="right")
    for name, n in status["boxes_per_class"].items():
        c.add_row(escape(name), str(n))
    out.print(c)
    out.print("boxes by source: " + ", ".join(f"{k} {v}" for k, v in status["boxes_per_source"].items()))
    if status.get("last_round"):
        r = status["last_round"]
        out.print(f"last round: {r['id']} ({r['status']}, step {r['step']})")
    if status.get("warnings"):
        out.print(f"[yellow]{status['warnings']} warning(s) at init[/yellow] (see `boxloop status --json`)")
    if status.get("skipped_images"):
        out.print(f"[yellow]{len(status['skipped_images'])} image(s) left out[/yellow] because they cannot be used "
                  "(see `boxloop status --json`, skipped_images)")


# -- commands -----------------------------------------------------------------------------------

StrictOpt = Annotated[bool, typer.Option("--strict", help="An image that is truncated, cannot be decoded or changed under its labels is an error, not left out with a warning.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace files already in --out (otherwise a clash stops before anything is written).")]



@app.command()
@user_errors
def init(
    project: Annotated[Path, typer.Argument(help="Project folder to create.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of images (searched recursively).")],
    annotations: Annotated[Optional[Path], typer.Option(help="Labels: a folder (VOC XML, YOLO txt) or a COCO JSON file.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="voc, coco or yolo (detected when omitted).")] = None,
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
) -> None:
    """Counts of images, labels, boxes per class and source, and rounds."""
    from boxloop.store import Project

    with Project.open(project) as proj:
        s = proj.status()
        if as_json:
            s["warning_messages"] = proj.warnings
            typer.echo(json.dumps(s, indent=2))
        else:
            print_status(s)


@app.command()
@user_errors
def export(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    fmt: Annotated[str, typer.Option("--format", help="voc, coco or yolo.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the labels into.")],
    subset: Annotated[str, typer.Option(help="labelled, pseudo, all (and train, val, test, partial, predicted).")] = "labelled",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the project's labels in VOC, COCO or YOLO (images stay where they are). COCO and Label
    Studio write one file when --out ends in .json, CVAT when it ends in .xml."""
    from boxloop.project import export_project
    from boxloop.store import Project

    with Project.open(project) as proj:
        n = len(proj.annotations(subset))
        path = export_project(proj, fmt, out_dir, subset=subset, overwrite=overwrite, log=warn)
    out.print(f"[green]exported[/green] {n} images ({subset}) as {fmt} to {escape(str(path))}")


# -- the detector: train, evaluate, predict ------------------------------------------------------

ModelOpt = Annotated[Optional[str], typer.Option("--model", help="fcos_lite (default: the CPU-first one), fcos (with IoU branch), faster_rcnn or retinanet.")]
BackboneOpt = Annotated[str, typer.Option(help="efficientnet_lite0 (offline ImageNet weights), resnet50, mobilenet_v3_large.")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Training epochs (default 12, and at least 600 steps, unless --steps).")]
StepsOpt = Annotated[Optional[int], typer.Option(help="Training steps instead of epochs.")]
SizeOpt = Annotated[Optional[int], typer.Option(help="Longer image side for training and prediction, pixels (default: 320 on a CPU, 480 on a GPU).")]
BatchOpt = Annotated[Optional[int], typer.Option(help="Images per batch (default 8).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
SeedOpt = Annotated[int, typer.Option(help="Seed: training, selection and splits.")]
NoPretrainedOpt = Annotated[bool, typer.Option("--no-pretrained", help="Random backbone initialisation.")]
DetectorOpt = Annotated[Optional[list[str]], typer.Option(
    "--detector-option", help="A detector builder option KEY=VALUE (repeatable), e.g. trainable_layers=2.")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="Run on Ray with this many workers (a local Ray unless --ray-address); needs boxloop[ray].")]
RayAddressOpt = Annotated[Optional[str], typer.Option(help="Join this Ray cluster (auto, or HEAD:6379; run on one of its nodes) instead of starting a local Ray.")]


def check_detector_options(model: str, options: dict[str, Any]) -> None:
    """Refuse an unknown model or option before any work (the error lists the valid ones)."""
    from boxloop.detectors import check_options

    check_options(model, options)


def detector_options(pairs: list[str] | None) -> dict[str, Any]:
    """--detector-option KEY=VALUE pairs -> builder keyword arguments (values read as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--detector-option")
        out[key.strip()] = yaml.safe_load(value)
    return out


def loop_config(model: str | None = None, backbone: str = "efficientnet_lite0", epochs: int | None = None,
                steps: int | None = None, image_size: int | None = None, batch_size: int | None = None,
                device: str = "auto", seed: int = 0, no_pretrained: bool = False, **kw: Any):  # -> loop.LoopConfig
    """The loop's config from CLI options; what the user left unset comes from `run_defaults(device)`."""
    from boxloop.defaults import run_defaults
    from boxloop.loop import LoopConfig

    d = run_defaults(device)
    model, image_size, batch_size = model or d.detector, image_size or d.image_size, batch_size or d.batch_size
    check_detector_options(model, {"backbone": backbone, **kw.get("detector_options", {})})
    if epochs is not None and steps is not None:
        raise typer.BadParameter("pass --epochs or --steps, not both", param_hint="--epochs")
    if epochs is None and steps is None:  # the default schedule: epochs, with a floor in steps
        epochs = d.epochs
        kw.setdefault("min_steps", d.min_steps)
    return LoopConfig(model=model, backbone=backbone, pretrained_backbone=not no_pretrained, epochs=epochs,
                      steps=steps, image_size=image_size, batch_size=batch_size, device=device, seed=seed, **kw)


def _open_detector(project: Path | None, checkpoint: Path | None, device: str):
    """(detector, class names, image size) from --checkpoint or the project's current model."""
    from boxloop.train import load_detector

    if checkpoint is None:
        if project is None:
            raise typer.BadParameter("give a PROJECT or --checkpoint PATH", param_hint="--checkpoint")
        from boxloop.loop import current_checkpoint
        from boxloop.store import Project

        with Project.open(project) as proj:
            checkpoint = current_checkpoint(proj)
            classes = proj.classes
    else:
        classes = None
        if project is not None:
            from boxloop.store import Project

            with Project.open(project) as proj:
                classes = proj.classes
    det, names, meta = load_detector(checkpoint, expect_classes=classes, device="cpu")
    image_size = int((meta.get("train_config") or {}).get("image_size", 512))
    return det, names, image_size, checkpoint


def print_metrics(m: dict[str, Any], title: str) -> None:
    t = Table(title=title, title_justify="left")
    for c in ("class", "AP50 (VOC)", "COCO AP", "boxes"):
        t.add_column(c, justify="left" if c == "class" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, v in m.get("per_class", {}).items():
        t.add_row(escape(name), fmt(v.get("ap50")), fmt(v.get("coco_ap")), str(v.get("num_gt", "")))
    t.add_row("[bold]mean[/bold]", fmt(m.get("map50")), fmt(m.get("coco_ap")), str(m.get("num_gt", "")))
    out.print(t)
    out.print(f"AP50 {fmt(m.get('ap50'))}  AP75 {fmt(m.get('ap75'))}  APs/m/l {fmt(m.get('ap_small'))}/"
              f"{fmt(m.get('ap_medium'))}/{fmt(m.get('ap_large'))}")


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
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: the model's recipe; fcos_lite 0.002 with adamw, others 0.01 with sgd).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd or adamw (default: the model's recipe).")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    no_pretrained: NoPretrainedOpt = False,
    detector_option: DetectorOpt = None,
    semi: Annotated[bool, typer.Option("--semi", help="Certainty-aware teacher-student training on the unlabelled images (seed 001).")] = False,
    tau: Annotated[float, typer.Option(help="--semi: base pseudo-label threshold.")] = 0.7,
    gamma1: Annotated[float, typer.Option(help="--semi: exponent of the class-wise dynamic thresholds (eq. 6).")] = 0.05,
    gamma2: Annotated[float, typer.Option(help="--semi: exponent of the class re-weighting (eq. 6).")] = 0.6,
    no_dynamic_threshold: Annotated[bool, typer.Option("--no-dynamic-threshold", help="--semi: one fixed threshold tau.")] = False,
    no_reweight: Annotated[bool, typer.Option("--no-reweight", help="--semi: no class re-weighting.")] = False,
    no_certainty: Annotated[bool, typer.Option("--no-certainty", help="--semi: score p alone, without localization quality v.")] = False,
    strict: StrictOpt = False,
    nproc: Annotated[Optional[int], typer.Option(help="Train on this many processes through torchrun (DDP: gloo on CPU, nccl on GPU); --batch-size is the total.")] = None,
    torchrun_args: Annotated[Optional[str], typer.Option(help="With --nproc: torchrun's own options for several machines, e.g. '--nnodes=2 --node-rank=0 --rdzv-endpoint=head:29500'.")] = None,
) -> None:
    """Train on the project's labels (human, partial and auto-labels); keep the best by validation mAP50.

    With --semi, a teacher trained on the labels auto-labels the unlabelled images with class-wise
    thresholds and a student learns from both; "teacher continued" trains as long, as augmented, on
    the labels alone; the student is kept only when it beats teacher continued on validation by more
    than the images' noise (a paired bootstrap interval above 0), else teacher continued is kept.
    Re-running the same command after an interruption resumes from the last checkpoint."""
    from boxloop.loop import set_current_checkpoint, test_metrics, train_project
    from boxloop.store import Project
    from boxloop.train import load_detector

    cfg = loop_config(model, backbone, epochs, steps, image_size, batch_size, device, seed, no_pretrained,
                      detector_options=detector_options(detector_option),
                      lr=lr, optimizer=optimizer, semi="certainty" if semi else None)
    if nproc is not None and semi:
        raise ValueError("--nproc trains supervised only; drop --semi or --nproc")
    with Project.open(project) as proj, proj.writer_lock():
        if semi:
            from boxloop.semi import SemiConfig, fit_semi

            sc = SemiConfig(tau=tau, gamma1=gamma1, gamma2=gamma2, dynamic_threshold=not no_dynamic_threshold,
                            reweight=not no_reweight, certainty=not no_certainty)
            res = fit_semi(proj, None, cfg.train_config(0), sc, proj.dir / "models" / "semi", model=cfg.model,
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
            out.print(f"trained {cfg.model} on {n_train} images ({n_val} validation): best validation mAP50 "
                      f"{'-' if result.best_map50 is None else f'{result.best_map50:.3f}'}; checkpoint "
                      f"{escape(str(result.best_checkpoint))}")
            best = result.best_checkpoint
        det, _, _ = load_detector(best, expect_classes=proj.classes)
        m = test_metrics(proj, det, cfg.image_size, device)
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
        from boxloop.evaluate import evaluate as run_eval
        from boxloop.predictions import load_pair

        truth, preds, classes = load_pair(ground_truth, predictions, fmt)
        m = run_eval(truth, preds, classes)
    else:
        if project is None:
            raise typer.BadParameter("give a PROJECT, or --ground-truth and --predictions", param_hint="PROJECT")
        from boxloop.loop import test_metrics
        from boxloop.store import Project

        det, _, image_size, ckpt = _open_detector(project, checkpoint, device)
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
    from boxloop.predictions import write_predictions

    if not 0 <= threshold < 1:
        raise ValueError(f"--threshold must lie in [0, 1), got {threshold}")
    from boxloop.defaults import run_defaults

    det, names, image_size, ckpt = _open_detector(project, checkpoint, device)
    scoring = None
    if workers is not None or ray_address is not None:
        from boxloop.ray_scoring import RayScoring

        scoring = RayScoring.from_cli(workers, ray_address, device)
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
    strategy: Annotated[str, typer.Option(help="random, least_confidence, entropy, localization_aware, coreset, typical, budget_aware (boxes: random, least_confidence, coreset).")] = "localization_aware",
    budget: Annotated[int, typer.Option(help="Images (or boxes) to ask about.")] = 20,
    unit: Annotated[str, typer.Option(help="images or boxes.")] = "images",
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the batch (images + pre-annotations).")] = Path("query"),
    fmt: Annotated[str, typer.Option("--format", help="voc (LabelImg, CVAT), coco, yolo, labelstudio or cvat.")] = "voc",
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
    from boxloop.coldstart import needs_cold_start, open_select_round
    from boxloop.human import check_batch_target, open_round, write_batch
    from boxloop.loop import model_dir, run_round
    from boxloop.store import Project

    cfg = loop_config(model, backbone, epochs, steps, image_size, batch_size, device, seed, no_pretrained,
                      detector_options=detector_options(detector_option),
                      strategy=strategy, unit=unit, budget=budget, empty_share=empty_share, semi=semi)
    check_batch_target(out_dir, fmt)  # before any work: a wrong --format or --out must change nothing
    scoring = None
    if workers is not None or ray_address is not None:  # the pool is scored on Ray actors
        from boxloop.ray_scoring import RayScoring

        scoring = RayScoring.from_cli(workers, ray_address, device)
    with Project.open(project) as proj, proj.writer_lock():
        pending = open_round(proj)
        if pending is not None and not force:
            n = len(proj.queries(round=pending["id"], state="open"))
            raise ValueError(f"round {pending['id']} still has {n} open queries: answer them with `boxloop import` "
                             "or pass --force to replace the batch")
        last = proj.last_round()
        if last is not None and last["step"] == "semi":
            run_round(proj, cfg, None, last["id"])
        if pending is not None:
            with proj.transaction():
                proj.mark_stale()
                proj.update_round(pending["id"], step="done", status="done")
        last = proj.last_round()
        round_id = 1 if last is None else (last["id"] if last["step"] not in ("done", None) else last["id"] + 1)
        if checkpoint is not None and round_id not in {r["id"] for r in proj.rounds()}:
            # the round row decides, not the file: a copy killed before its round row is made again
            from boxloop.train import load_detector

            load_detector(checkpoint, expect_classes=proj.classes)  # refuses another class list
            from boxloop.checkpoints import copy_checkpoint

            copy_checkpoint(checkpoint, model_dir(proj, round_id) / "best.pt")
            proj.start_round(cfg.to_dict(), step="evaluate", round_id=round_id)
        cold = checkpoint is None and needs_cold_start(proj)
        if cold:  # nothing to train on: the first batch by typicality in the pretrained embedding
            cfg = open_select_round(proj, cfg, round_id)
        m = run_round(proj, cfg, None, round_id, strict=strict, scoring=scoring)
        path = write_batch(proj, round_id, out_dir, fmt)
        n = len(proj.queries(round=round_id, state="open"))
        from boxloop.forecast import forecast_line
        from boxloop.loop import round_history

        ahead = forecast_line(round_history(proj), unit, budget)  # what the next batch should buy (3+ rounds)
    if m.get("map50") is not None:
        out.print(f"round {round_id}: model mAP50 {m['map50']:.3f} on the fixed test set")
    if ahead:
        out.print(escape(ahead))
    if cold:
        out.print("no trained model and no labelled image yet: the first batch is chosen by [bold]typical[/bold] "
                  "(the most representative images of each cluster of the pretrained backbone's embedding), "
                  "not by " + escape(strategy) + "; its images come without pre-annotations")
        strategy, unit = "typical", "images"
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
    fmt: Annotated[Optional[str], typer.Option("--format", help="voc, coco, yolo, labelstudio or cvat (detected when omitted).")] = None,
) -> None:
    """Take an annotator's answers for the open query batch; nothing is written if any answer is wrong."""
    from boxloop.human import import_answers
    from boxloop.store import Project

    with Project.open(project) as proj:
        res = import_answers(proj, annotations, fmt)
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
    fmt: Annotated[Optional[str], typer.Option("--format", help="voc, coco or yolo (detected when omitted).")] = None,
    test_list: Annotated[Optional[Path], typer.Option(help="Fixed test set names (else --test-fraction).")] = None,
    test_fraction: Annotated[float, typer.Option(help="Class-stratified test share when no --test-list.")] = 0.2,
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies to compare.")] = "random,localization_aware",
    initial: Annotated[int, typer.Option(help="Seed set: images labelled before round 0.")] = 20,
    initial_strategy: Annotated[str, typer.Option(help="How the seed set is chosen: random, or typical (TypiClust in the pretrained backbone's embedding).")] = "random",
    budget: Annotated[int, typer.Option(help="Images (or boxes) asked per round.")] = 20,
    rounds: Annotated[int, typer.Option(help="Query rounds after the initial one.")] = 3,
    seeds: Annotated[int, typer.Option(help="Random seeds (each: its own seed set and initial model).")] = 1,
    unit: Annotated[str, typer.Option(help="images or boxes.")] = "images",
    model: ModelOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    epochs: EpochsOpt = None,
    steps: StepsOpt = None,
    image_size: SizeOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    semi: Annotated[Optional[str], typer.Option(help="Add auto-labelling to every round: autolabel or certainty.")] = None,
    take_all_last: Annotated[bool, typer.Option(help="The last round takes every image left (seed 003 §6.6).")] = False,
    no_pretrained: NoPretrainedOpt = False,
    detector_option: DetectorOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Compare strategies on labelled data with a simulated annotator; writes OUT/results.json and plots.
    Re-running the same command resumes where it stopped. With --workers, each strategy x seed run is
    a Ray task (one torch thread each)."""
    from boxloop.report import format_table, learning_curve_table
    from boxloop.simulate import simulate as run_sim

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    cfg = loop_config(model, backbone, epochs, steps, image_size, batch_size, device, 0, no_pretrained,
                      detector_options=detector_options(detector_option),
                      strategy=names[0], unit=unit, budget=budget, semi=semi, take_all_last=take_all_last)
    for name in names[1:]:
        loop_config(model, backbone, epochs, steps, image_size, batch_size, device, 0, no_pretrained,
                    strategy=name, unit=unit, budget=budget)  # validates every name before any work
    res = run_sim(dataset, out_dir, names, initial, budget, rounds, list(range(seeds)), cfg,
                  annotations=annotations, fmt=fmt, test_list=test_list, test_fraction=test_fraction,
                  echo=lambda m: out.print(escape(m)), initial_strategy=initial_strategy, workers=workers,
                  ray_address=ray_address)
    typer.echo(format_table(learning_curve_table(res)))  # a wide table: never wrapped to the terminal
    out.print(f"results: {escape(str(out_dir / 'results.json'))}, plots: {escape(str(out_dir / 'plots'))}")


def _unit_float(text: str, name: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number in (0, 1) or 'auto', got {text!r}") from None
    if not 0 < v < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {text}")
    return v


@app.command()
@user_errors
def autolabel(
    project: Annotated[Path, typer.Argument(help="Project folder.")],
    threshold: Annotated[str, typer.Option(help="An image joins training when a detection scores above this (seed 000: 0.8; 0.9 works better there), or 'auto': the lowest threshold whose validation precision is >= --target-precision.")] = "0.8",
    target_precision: Annotated[float, typer.Option(help="--threshold auto: the validation precision to reach.")] = 0.9,
    iterations: Annotated[Optional[int], typer.Option(help="At most this many iterations (default: until the pool is empty).")] = None,
    steps_first: Annotated[Optional[int], typer.Option(help="Training steps of the first iteration (default: seed 000's 2,500 scaled to the dataset).")] = None,
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
    """Iterative self-training (TSODA, seed 000): train, auto-label the images the model is sure of,
    retrain, repeat. Writes PROJECT/autolabel.json; `export --subset pseudo` hands the auto-labels to a
    labelling tool for review. Re-running after an interruption resumes."""
    from boxloop.autolabel import autolabel as run_autolabel, autolabel_pool
    from boxloop.store import Project

    thr: float | str = "auto" if threshold.strip().lower() == "auto" else _unit_float(threshold, "--threshold")
    from boxloop.defaults import run_defaults

    d = run_defaults(device)
    model, image_size, batch_size = model or d.detector, image_size or d.image_size, batch_size or d.batch_size
    options = detector_options(detector_option)
    check_detector_options(model, {"backbone": backbone, **options})
    with Project.open(project) as proj, proj.writer_lock():
        if not autolabel_pool(proj) and not (proj.dir / "autolabel.json").exists():
            out.print("no unlabelled images: nothing to auto-label (train supervised with `boxloop train`)")
            return
        rows = run_autolabel(proj, threshold=thr, target_precision=target_precision, iterations=iterations, steps_first=steps_first,
                             steps_increment=steps_increment, steps_max=steps_max, model=model, backbone=backbone,
                             pretrained_backbone=not no_pretrained, image_size=image_size, batch_size=batch_size,
                             device=device, seed=seed, detector_options=options)
    t = Table(title="auto-labelling (seed 000 Table 3)", title_justify="left")
    for c in ("iteration", "steps", "threshold", "new images", "total", "boxes", "left", "test mAP50"):
        t.add_column(c, justify="right")
    for r in rows:
        m, th = r.get("map50"), r.get("threshold")
        t.add_row(str(r["iteration"]), str(r["steps"]), "-" if th is None else f"{th:.2f}", str(r["images_auto_labelled"]),
                  str(r["total_auto_labelled"]), str(r["boxes"]), str(r["remaining_unlabelled"]),
                  "-" if m is None else f"{m:.3f}")
    out.print(t)
    if rows and rows[-1].get("guidance"):
        out.print(f"[yellow]nothing auto-labelled in iteration {rows[-1]['iteration']}:[/yellow] {escape(rows[-1]['guidance'])}")
    out.print(f"rows in {escape(str(project / 'autolabel.json'))}; review the auto-labels with: boxloop export "
              f"{escape(str(project))} --subset pseudo --format voc --out review/")


@app.command()
@user_errors
def report(
    source: Annotated[Path, typer.Argument(help="A simulate --out folder (or its results.json), or a project folder.")],
    out_html: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page: learning curves, per-class AP, labels per class, thresholds,
    pseudo-labels, annotation cost and a gallery of the last query."""
    from boxloop.report import write_report
    from boxloop.report import report_source

    data, gallery, title = report_source(source)
    path = write_report(data, out_html, title=title, gallery=gallery)
    out.print(f"[green]report[/green] {escape(str(path))}")


# -- demo: each step a small function, so later issues add theirs -------------------------------

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


DEMO_TEST_FRACTION = 0.25  # 50 of the default 200 images: one test image moves mAP50 by ~1 point, not 5


def demo_project(root: Path, data: Path, seed: int) -> Project:
    """Init the demo project (replacing an earlier demo's) with the demo's fixed test set."""
    from boxloop.project import init_project

    return init_project(root / "project", data / "images", data / "annotations", test_fraction=DEMO_TEST_FRACTION,
                        seed=seed, force=True, progress=False, log=warn)


def demo_test_sensitivity(run_dir: Path, image_size: int, device: str) -> dict[str, Any]:
    """How far one test image moves the final model's mAP50 (compare.leave_one_out_map50): the
    test set is big enough for the demo's differences when that is small."""
    from boxloop.compare import leave_one_out_map50
    from boxloop.inference import predict_paths
    from boxloop.loop import current_checkpoint
    from boxloop.store import Project
    from boxloop.train import load_detector

    with Project.open(run_dir) as proj:
        truth = proj.annotations("test")
        det, classes, _ = load_detector(current_checkpoint(proj), expect_classes=proj.classes, device=device)
        keys = list(truth)
        preds = {k: d.to_annotation(k, classes) for k, (_, d) in
                 zip(keys, predict_paths(det, [proj.image_root / k for k in keys], image_size, device=device,
                                         progress=False))}
    return leave_one_out_map50(truth, preds, classes)


@app.command()
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's data, runs and report.")] = Path("demo_out"),
    n_images: Annotated[int, typer.Option("--images", help="Synthetic images to generate (a quarter is the test set).")] = 200,
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
    from boxloop.report import format_table, learning_curve_table, write_report
    from boxloop.simulate import simulate as run_sim

    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    if not seed_list:
        raise typer.BadParameter("give at least one seed, e.g. 0,1", param_hint="--seeds")
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
    cfg = loop_config(None, "efficientnet_lite0", None, steps, image_size, 8, device, seed_list[0], False,
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
    from boxloop.simulate import run_name

    last = sim / f"seed{seed_list[-1]}" / run_name(strategies[-1], cfg.semi).replace("+", "_")
    loo = demo_test_sensitivity(last, image_size, device)
    if loo["max_change"] is not None:
        out.print(f"   test set: {loo['images']} images; leaving any one out moves the last model's mAP50 by at most "
                  f"{100 * loo['max_change']:.1f} points (mean {100 * loo['mean_change']:.1f})")
    (sim / "test_sensitivity.json").write_text(json.dumps(loo, indent=1))
    report_path = write_report(sim, out_dir / "report.html", title="boxloop demo")
    out.print(f"[bold]4.[/bold] [green]report:[/green] {escape(str(report_path.resolve()))}")


def main() -> None:  # pragma: no cover - console entry point alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
