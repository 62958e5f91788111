"""Tool image names to boxloop's image keys, and the one refusal of a file made for another project:
shared by the Label Studio and CVAT readers and `boxloop serve`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from boxloop.formats import FormatError, listing, safe_relative

__all__ = ["check_project", "match_image_key"]


def match_image_key(name: str, known: Mapping[str, object] | None, where: str | Path) -> str | None:
    """The boxloop key a tool's image name stands for, or None if it matches no known image.

    Tools rename paths: Label Studio's local-files URLs are relative to its document root and
    uploads lose their folders; CVAT keeps either the relative path or the file name. So: exact key;
    else the one known key that ends with `name` or that `name` ends with, on '/' boundaries. Two
    candidates are an error (say which), never a guess.
    """
    rel = safe_relative(name, where, "image name")
    if known is None:
        return rel
    if rel in known:
        return rel
    found = [k for k in known if rel.endswith("/" + k) or k.endswith("/" + rel)]
    if len(found) > 1:
        raise FormatError(where, f"image name {name!r} matches several images: {listing(sorted(found), 5)}",
                          "give each image a unique path, or export with the full relative paths")
    return found[0] if found else None


def check_project(source: str | Path, unmatched: Sequence[str], used: Mapping[str, list[str]],
                  classes: Sequence[str] | None, what: str) -> None:
    """One FormatError listing every unknown image and every unknown class, or nothing.

    A file exported from another project usually gets both wrong; the user should see all of it at
    once, and nothing is returned (no partial import).
    """
    unknown = {} if classes is None else {n: f for n, f in used.items() if n not in set(classes)}
    if not unmatched and not unknown:
        return
    parts = []
    if unmatched:
        parts.append(f"{len(unmatched)} {what} name images that are not in this project: {listing(unmatched)}")
    if unknown:
        names = [f"{n!r} (in {listing(sorted(set(f)), 3)})" for n, f in sorted(unknown.items())]
        parts.append(f"{len(unknown)} class name(s) not in the project's classes {list(classes or [])}: "
                     + "; ".join(names))
    raise FormatError(source, "; and ".join(parts) + "; nothing was imported",
                      "is this the export of another project? pass the right file, or add the classes")
