"""A corpus of hostile and broken inputs, generated in code at test time (nothing big is committed).

Each function writes one file (or a few) and returns its path. Images are tiny except the
decompression bomb, whose PNG *header* claims 50000x50000 pixels while the file is a few hundred
bytes. Written by hand; Pillow writes the valid images, `zlib`/`struct` craft the bomb header.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "BILLION_LAUGHS",
    "XXE",
    "voc_xml",
    "write_image",
    "write_cmyk_jpeg",
    "write_16bit_png",
    "write_rgba_png",
    "write_truncated",
    "write_png_bomb",
    "write_coco",
    "write_short",
    "write_foreign_sqlite",
    "write_classes_txt",
    "COLLIDING_NAMES",
    "write_labelstudio_export",
]

# Classic entity-expansion attack: 10 levels of 10x expansion = 10^9 "lol"s if a parser expands it.
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>{filename}</filename><object><name>&lol9;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""

# External entity: a parser that resolves it would put /etc/passwd into the class name.
XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<annotation><filename>{filename}</filename><object><name>&xxe;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""


def voc_xml(filename: str, boxes: list[tuple[str, float, float, float, float]] = (), size: tuple[int, int] = (32, 32),
            path: str | None = None) -> str:
    """A VOC annotation as text; coordinates are written with repr so nan/inf/1e308 pass through."""
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x1!r}</xmin><ymin>{y1!r}</ymin><xmax>{x2!r}</xmax>"
        f"<ymax>{y2!r}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2 in boxes
    )
    path_el = f"<path>{path}</path>" if path is not None else ""
    return (f"<annotation><filename>{filename}</filename>{path_el}<size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def write_image(path: Path, size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """A plain RGB image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_cmyk_jpeg(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    """All-zero CMYK (no ink) is white."""
    Image.new("CMYK", size, (0, 0, 0, 0)).save(path, "JPEG", quality=95)
    return path


def write_16bit_png(path: Path, size: tuple[int, int] = (32, 24), value: int = 65535) -> Path:
    """16-bit grayscale ('I;16'); the left half at `value`, the right half at 0."""
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint16)
    arr[:, : w // 2] = value
    Image.fromarray(arr).save(path)  # numpy uint16 -> Pillow 'I;16'
    return path


def write_rgba_png(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    """Left half opaque red, right half fully transparent (black underneath)."""
    w, h = size
    arr = np.zeros((h, w, 4), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0, 255)
    arr[:, w // 2 :] = (0, 0, 0, 0)
    Image.fromarray(arr, "RGBA").save(path)
    return path


def write_truncated(path: Path, size: tuple[int, int] = (64, 48), keep: float = 0.5) -> Path:
    """A noisy image (so the compressed data is long) cut to `keep` of its bytes."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(64, int(len(data) * keep))])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, width: int = 50000, height: int = 50000) -> Path:
    """A valid PNG header claiming width x height (2.5 G pixels at the default), a few hundred bytes.

    The IDAT holds the zlib stream of a few all-zero rows: a decoder that trusts the header would
    try to allocate 7.5 GB.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    raw = b"\x00" + b"\x00" * (3 * width)  # one filtered row
    idat = zlib.compress(raw * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[str] = ("a",),
               raw: str | None = None) -> Path:
    """A COCO file; `raw` writes that text instead (for NaN literals and truncation)."""
    if raw is None:
        raw = json.dumps({"images": images, "annotations": annotations,
                          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]})
    path.write_text(raw, encoding="utf-8")
    return path


# -- issue 12: what a real dataset and a deliberate attack brought ---------------------------------

def write_short(path: Path, missing: int = 20, size: tuple[int, int] = (64, 48)) -> Path:
    """A noisy image whose last `missing` bytes are gone: BCCD's BloodImage_00xxx.jpg was 20 bytes
    short ("image file is truncated (20 bytes not processed)"); browsers and OpenCV still show it."""
    rng = np.random.default_rng(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - missing])
    return path


def write_foreign_sqlite(path: Path) -> Path:
    """Another program's SQLite database (rollback journal, one table, user_version 0)."""
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    con.execute("INSERT INTO contacts VALUES ('ada', '123')")
    con.commit()
    con.close()
    return path


def write_classes_txt(path: Path, names: list[str], bom: bool = False, newline: str = "\n") -> Path:
    """classes.txt as editors write it: optionally with a UTF-8 byte-order mark or CRLF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(n + newline for n in names)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# Image paths whose batch names collide once subfolders are flattened ('/' -> '__'), or differ only in
# case (macOS and Windows file systems ignore it), or in extension (answer files are named by stem).
COLLIDING_NAMES = ("a/b.jpg", "a__b.jpg", "A__B.png", "x/y/z.png", "x__y/z.png", "x__y__z.jpg")


def write_labelstudio_export(tasks_json: Path, out: Path, boxes: dict[str, list[tuple[str, float, float, float, float]]],
                             size: tuple[int, int] = (32, 32)) -> Path:
    """Label Studio's JSON export of the tasks boxloop wrote: each task whose boxloop_key is in `boxes`
    gets one annotation with those (label, x1, y1, x2, y2) pixel boxes; the other tasks stay unanswered."""
    tasks = json.loads(tasks_json.read_text())
    w, h = size
    for i, task in enumerate(tasks):
        task["id"] = i + 1
        key = task["data"]["boxloop_key"]
        if key not in boxes:
            continue
        task["annotations"] = [{"id": i + 1, "was_cancelled": False, "result": [
            {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": w,
             "original_height": h, "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w,
                                             "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [n]}}
            for n, x1, y1, x2, y2 in boxes[key]]}]
    out.write_text(json.dumps(tasks))
    return out
