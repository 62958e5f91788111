"""What the `boxloop` command line prints: its two consoles, warning lines and the result tables.

rich does the printing (markup, tables, escaping); written by hand here are only the tables'
rows and wording: the status table, the metrics table, the auto-labelling table. Commands
(boxloop.cli.main) and the demo (boxloop.cli.demo) print through these, so every message looks the same.
"""

from __future__ import annotations

import inspect
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False, emoji=False)  # a class named cat:x:dog is printed as written
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}")


def show_status(proj: Any, as_json: bool, clear_cache: bool) -> None:
    """`boxloop status`: the project's counts and its feature cache (emptied first with `clear_cache`),
    as JSON (with the init warnings) or as tables."""
    import json

    import typer

    from boxloop.predict.feature_cache import cache_status

    s = {**proj.status(), "feature_cache": cache_status(proj.dir, clear=clear_cache)}
    if as_json:
        s["warning_messages"] = proj.warnings
        typer.echo(json.dumps(s, indent=2))
    else:
        print_status(s)


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
    fc = status.get("feature_cache")
    if fc and fc.get("freed"):
        out.print(f"feature cache cleared: {fc['freed'] / 1e6:.1f} MB freed")
    if fc and (fc["entries"] or fc["hits"] or fc["misses"]):
        rate = "-" if fc["hit_rate"] is None else f"{100 * fc['hit_rate']:.0f}%"
        out.print(f"feature cache: {fc['entries']} entries, {fc['bytes'] / 1e6:.1f} MB, hit rate {rate} "
                  f"({fc['hits']} hits, {fc['misses']} misses; `boxloop status --clear-cache` empties it)")
    if "input_size" in status:
        print_input_size(status["input_size"], "recorded ")
    if status.get("warnings"):
        out.print(f"[yellow]{status['warnings']} warning(s) at init[/yellow] (see `boxloop status --json`)")
    if status.get("skipped_images"):
        out.print(f"[yellow]{len(status['skipped_images'])} image(s) left out[/yellow] because they cannot be used "
                  "(see `boxloop status --json`, skipped_images)")


def print_input_size(choice: dict[str, Any] | None, what: str = "") -> None:
    """The project's input size (boxloop.loop.input_size) with its reason, and the warning of objects too small."""
    if not choice:
        out.print("input size: not chosen yet (`boxloop train` chooses it from the labelled boxes)")
        return
    out.print(f"{what}input size [bold]{choice['image_size']} px[/bold] ({escape(choice['reason'])})")
    if choice.get("warning"):
        warn(choice["warning"])


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


def print_autolabel_rows(rows: list[dict[str, Any]]) -> None:
    """The rows of `autolabel.autolabel`, one per iteration (TSODA Table 3)."""
    t = Table(title="auto-labelling (TSODA Table 3)", title_justify="left")
    for c in ("iteration", "steps", "threshold", "new images", "total", "boxes", "left", "test mAP50"):
        t.add_column(c, justify="right")
    for r in rows:
        m, th = r.get("map50"), r.get("threshold")
        t.add_row(str(r["iteration"]), str(r["steps"]), "-" if th is None else f"{th:.2f}", str(r["images_auto_labelled"]),
                  str(r["total_auto_labelled"]), str(r["boxes"]), str(r["remaining_unlabelled"]),
                  "-" if m is None else f"{m:.3f}")
    out.print(t)


def help_as_sentences(text: str) -> str:
    """A docstring as --help should show it: the hard line breaks inside each paragraph joined, so the
    terminal wraps sentences at its own width (typer keeps single line breaks after the first
    paragraph). Lines that start a list item or are indented keep their break."""
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.split("\n"):
            if lines and line and not line.startswith((" ", "-", "*")):
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def wrap_help_as_sentences(app: typer.Typer) -> None:
    """Every command's help (its docstring unless given) through `help_as_sentences`."""
    for command in app.registered_commands:
        text = command.help or inspect.getdoc(command.callback) or ""
        command.help = help_as_sentences(text)
