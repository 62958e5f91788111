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
import os
import shutil
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


def user_errors(fn: F) -> F:
    """Decorator: a user error becomes one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            if os.environ.get("BOXLOOP_DEBUG"):
                raise  # the full traceback, for bug reports
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            err.print(f"[bold red]error:[/bold red] [red]{escape(str(msg))}[/red]")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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


# -- commands -----------------------------------------------------------------------------------

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
) -> None:
    """Create a project from a folder of images and (optionally) their labels."""
    from boxloop.project import init_project

    if test_list is not None and test_fraction is not None:
        raise typer.BadParameter("pass --test-list or --test-fraction, not both", param_hint="--test-list")
    names = [c for c in classes.split(",")] if classes is not None else None
    proj = init_project(project, images, annotations, fmt=fmt, classes=names, test_list=test_list,
                        test_fraction=test_fraction, seed=seed, force=force, val_fraction=val_fraction,
                        progress=True, log=warn)
    with proj:
        s = proj.status()
    out.print(f"[green]created[/green] {escape(str(project))}: {s['images']} images, {s['labelled_images']} labelled "
              f"({s['negative_images']} negative), {s['test_images']} test, {s['boxes']} boxes, "
              f"{len(s['classes'])} classes" + (f", {s['warnings']} warning(s)" if s["warnings"] else ""))


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
) -> None:
    """Write the project's labels in VOC, COCO or YOLO (images stay where they are)."""
    from boxloop.project import export_project
    from boxloop.store import Project

    with Project.open(project) as proj:
        n = len(proj.annotations(subset))
        path = export_project(proj, fmt, out_dir, subset=subset)
    out.print(f"[green]exported[/green] {n} images ({subset}) as {fmt} to {escape(str(path))}")


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


def demo_project(root: Path, data: Path, seed: int) -> Project:
    """Init the demo project (replacing an earlier demo's) with a 20% fixed test set."""
    from boxloop.project import init_project

    return init_project(root / "project", data / "images", data / "annotations", test_fraction=0.2,
                        seed=seed, force=True, progress=False, log=warn)


@app.command()
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and project.")] = Path("demo_out"),
    n_images: Annotated[int, typer.Option("--images", help="Synthetic images to generate.")] = 60,
    image_size: Annotated[int, typer.Option(help="Side of each square image, pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for data and splits.")] = 0,
) -> None:
    """Offline, CPU-only: generate a synthetic dataset, make a project of it, show its status."""
    out.print(f"[bold]1.[/bold] generating {n_images} synthetic images ({image_size} px) in {escape(str(out_dir))}/data")
    data = demo_dataset(out_dir, n_images, image_size, seed)
    out.print(f"[bold]2.[/bold] creating the project {escape(str(out_dir))}/project")
    with demo_project(out_dir, data, seed) as proj:
        print_status(proj.status())


def main() -> None:  # pragma: no cover - console entry point alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
