"""Finding, measuring, hashing and decoding images.

Pillow does the decoding, the EXIF parsing and the lazy header reads; `hashlib` the hashing. Written
by hand: the recursive listing that refuses symlinks leaving the image root, the EXIF-orientation
aware size (so boxes drawn on the rotated view stay right), the conversion of every mode a labelling
project meets (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB, the translation of Pillow's
many exception types into one `ImageError` that names the file and says what to do, and the second,
lenient decode of a truncated file (the part that is there, as browsers and OpenCV show it) with a
`TruncatedImageWarning` naming it. Pillow's switch for that, `ImageFile.LOAD_TRUNCATED_IMAGES`, is
process-wide, so it is turned on only under a lock and only for that second try.
No torch import here.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# EXIF orientations 5-8 rotate by 90 or 270 degrees: the displayed image has width and height swapped.
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Everything Pillow raises for a file it cannot read (struct.error and EOFError escape some plugins).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageError(ValueError):
    """An image that cannot be read. The message names the file, the problem and what to do.

    `kind` says which: 'missing', 'unidentified' (not an image), 'bomb' (too many pixels) or 'decode'
    (the pixels fail to decode: truncated or corrupt; only these are worth a lenient second try)."""

    def __init__(self, path: str | Path, problem: str, hint: str = "", kind: str = "decode") -> None:
        self.path = str(path)
        self.problem = problem
        self.kind = kind
        self.hint = hint or "re-export or replace the file, or remove it from the image folder"
        super().__init__(f"{path}: {problem} ({self.hint})")


class TruncatedImageWarning(UserWarning):
    """A truncated image was decoded as far as its data goes (the rest is grey)."""


_LENIENT = threading.Lock()


@contextmanager
def _lenient() -> Iterator[None]:
    """Pillow decodes truncated files while this is held (a process-wide switch, hence the lock)."""
    with _LENIENT:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def truncated_note(path: str | Path, problem: str) -> str:
    """The warning for a truncated image that was loaded anyway."""
    return (f"{path}: {problem}; loaded the part that is there (the rest is grey, as image viewers show it); "
            "replace the file with a complete copy if you have one")


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _regular_file(path: Path) -> bool:
    """True for a regular file (through symlinks); a pipe, socket, device or loop is no image."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def list_images(root: str | Path) -> list[str]:
    """Every image under `root`, recursively, as sorted '/'-separated paths relative to `root`.

    Symlinks are followed only while they stay inside `root` (a link to /etc must not become part of
    a project); links that leave it, broken links, link loops and anything but a regular file (a FIFO
    named x.jpg would block the first read forever) are skipped with a warning. Hidden files and folders (names
    starting with '.', e.g. macOS '._x.jpg' resource forks) are skipped.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: image folder does not exist (pass the folder that holds your images)")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder (pass the folder that holds your images, not a file)")
    real_root = root.resolve()
    out: list[str] = []
    seen_dirs: set[Path] = {real_root}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        keep: list[str] = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = (here / d).resolve()
            if not real.is_relative_to(real_root):
                warnings.warn(f"{here / d}: symlink leads outside {root} ({real}); skipped", stacklevel=2)
                continue
            if real in seen_dirs:  # a link back into the tree: visit each real folder once
                continue
            seen_dirs.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith(".") or not is_image_file(f):
                continue
            p = here / f
            if p.is_symlink():
                try:
                    real = p.resolve(strict=True)
                except (OSError, RuntimeError):  # ELOOP, or Python's own "Symlink loop" before 3.13
                    warnings.warn(f"{p}: broken symlink or symlink loop; skipped", stacklevel=2)
                    continue
                if not real.is_relative_to(real_root):
                    warnings.warn(f"{p}: symlink leads outside {root} ({real}); skipped", stacklevel=2)
                    continue
            if not _regular_file(p):  # a FIFO or a device named x.jpg: opening it would block or never end
                warnings.warn(f"{p}: not a regular file (a pipe, socket or device); skipped", stacklevel=2)
                continue
            out.append(p.relative_to(root).as_posix())
    return sorted(out)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation without decoding pixels (Pillow's PNG getexif() would load the image)."""
    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = im.getexif()
    value = exif.get(_ORIENTATION_TAG, 1)
    return int(value) if isinstance(value, int) else 1


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    if _orientation(im) in _SWAPPING_ORIENTATIONS:
        return h, w
    return w, h


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _oriented_size(im)
    except FileNotFoundError as e:
        raise ImageError(path, "image file not found", "check the image folder and the annotation's file name",
                         kind="missing") from e
    except UnidentifiedImageError as e:
        raise ImageError(path, "not an image Pillow can read", kind="unidentified") from e
    except _DECODE_ERRORS as e:
        raise ImageError(path, f"cannot read the image header: {e}", kind="unidentified") from e


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (a large TIFF must not land in memory at once)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _to_uint8(arr: np.ndarray, bits16: bool) -> np.ndarray:
    """Scale an integer or float single-channel array to 0..255.

    16-bit data maps 0..65535 linearly to 0..255 (x/257 rounded: 65535 -> 255, 257 -> 1). Data that
    does not fit 16 bits (32-bit ints, floats) is stretched min..max; floats already in [0, 1] are
    taken as fractions.
    """
    a = arr.astype(np.float64)
    if bits16 or (np.issubdtype(arr.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 65535):
        out = a / 257.0
    elif np.issubdtype(arr.dtype, np.floating) and a.size and a.min() >= 0 and a.max() <= 1:
        out = a * 255.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(im), bits16=mode.startswith("I;16"))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        # Transparent pixels keep arbitrary colours underneath; show them on white, as viewers do.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


_ALL_ERRORS = (FileNotFoundError, UnidentifiedImageError, *_DECODE_ERRORS)


def _image_error(path: str | Path, e: BaseException) -> ImageError:
    """One ImageError (with its kind) for whatever Pillow raised."""
    if isinstance(e, FileNotFoundError):
        return ImageError(path, "image file not found", "check the image folder", kind="missing")
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(path, f"image is too large to decode safely ({e})",
                          "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file", kind="bomb")
    if isinstance(e, UnidentifiedImageError):
        return ImageError(path, "not an image Pillow can read", kind="unidentified")
    return ImageError(path, f"cannot decode the image (corrupt or truncated?): {e}")


def load_rgb(path: str | Path, allow_truncated: bool = True, reduce_to: int | None = None) -> Image.Image:
    """Decode to 8-bit RGB, EXIF orientation applied. Bad files raise ImageError naming the file.

    A truncated file (`allow_truncated`) is decoded again as far as its data goes, with a
    `TruncatedImageWarning` naming it; a file that does not decode even so raises the first error.

    reduce_to: the caller will resize so the longer side is this many pixels; a JPEG is then decoded
    at the smallest of libjpeg's 1/2, 1/4, 1/8 scales that still covers it (DCT scaling: 3x faster
    than a full decode and a resize of a 640x480 photo to 320 px). `info["original_size"]` holds
    the full (width, height), which boxes are measured in.
    """
    try:
        return _decode_rgb(path, reduce_to)
    except ImageError as e:
        if not allow_truncated or e.kind != "decode":
            raise
        with _lenient():
            try:
                rgb = _decode_rgb(path, reduce_to)
            except ImageError:
                raise e from None
        warnings.warn(truncated_note(path, e.problem), TruncatedImageWarning, stacklevel=2)
        return rgb


def _decode_rgb(path: str | Path, reduce_to: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                original = _oriented_size(im)
                if reduce_to is not None and im.format == "JPEG":
                    scale = reduce_to / max(im.size)
                    if scale < 1:
                        im.draft("RGB", (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
                rgb.load()
                rgb.info["original_size"] = original
                return rgb
    except _ALL_ERRORS as e:
        raise _image_error(path, e) from e


def check_image(path: str | Path) -> tuple[int, int]:
    """Prove a file decodes, cheaply, and return its displayed (width, height).

    JPEGs are decoded at 1/8 scale (libjpeg's DCT scaling still reads every byte, so truncation
    shows); PNGs have every chunk's CRC checked (`verify()`), then are decoded; other formats are
    decoded fully. Used by `init` to find broken images before anything is written; one that fails
    with kind 'decode' may still pass `check_truncated`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = _oriented_size(im)
                if im.format == "PNG":
                    im.verify()
                    with Image.open(path) as again:
                        again.load()
                elif im.format == "JPEG":
                    w, h = im.size
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                    im.load()
                else:
                    im.load()
                return size
    except _ALL_ERRORS as e:
        raise _image_error(path, e) from e


def check_truncated(path: str | Path) -> tuple[int, int]:
    """The lenient second try after `check_image` failed with kind 'decode': decode what is there.

    Returns the displayed (width, height) when the file decodes so (a truncated image, usable with a
    warning); raises ImageError when even that fails (the file is unusable)."""
    try:
        with _lenient(), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # TIFF warns 'Truncated File Read' as it goes
            with Image.open(path) as im:
                size = _oriented_size(im)
                im.load()
                return size
    except _ALL_ERRORS as e:
        raise _image_error(path, e) from e


def resized_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(height, width) with the longer side equal to `image_size`, aspect kept."""
    scale = image_size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))
