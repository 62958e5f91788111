"""Annotation file formats: each module holds a load_*/dump_* pair. No torch import here.

`load(fmt, ...)` returns a `LoadResult`: the Annotations found (keyed by image path relative to the
image root, '/'-separated), the class names the files declare or use (in file order), and the
warnings a user should read (a dropped degenerate box, a clipped box). An image with an annotation
of zero boxes is a negative; an image with no annotation at all is unlabelled and is simply absent
from `annotations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from boxloop.structures import Annotation

FORMATS = ("voc", "coco", "yolo")


class FormatError(ValueError):
    """A file that cannot be read as labels. The message names the file, what is wrong and what to do."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{path}: {problem}" + (f" ({hint})" if hint else ""))


@dataclass
class LoadResult:
    annotations: dict[str, Annotation]
    classes: list[str]
    warnings: list[str] = field(default_factory=list)
