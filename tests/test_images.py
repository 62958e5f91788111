"""Image listing, header sizes, decoding to RGB and the rejection of broken files, on tiny real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxloop.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    TruncatedImageWarning,
    check_image,
    file_sha256,
    image_size,
    list_images,
    load_rgb,
)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _with_orientation(im: Image.Image, orientation: int) -> Image.Exif:
    exif = im.getexif()
    exif[0x0112] = orientation
    return exif


def test_extensions_cover_the_common_formats() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} <= IMAGE_EXTENSIONS


def test_list_images_recursive_sorted_case_insensitive(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ["b.JPG", "a.png", "sub/c.jpeg", "sub/deeper/d.TIFF", ".hidden/e.jpg", "sub/._f.jpg"]:
        _noise(8, 8).save(root / rel, format="PNG")
    (root / "notes.txt").write_text("not an image")
    assert list_images(root) == ["a.png", "b.JPG", "sub/c.jpeg", "sub/deeper/d.TIFF"]


def test_list_images_symlinks_inside_kept_outside_skipped(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    outside = tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    _noise(8, 8).save(root / "a.png")
    _noise(8, 8).save(outside / "secret.png")
    os.symlink(root / "a.png", root / "alias.png")
    os.symlink(outside / "secret.png", root / "leak.png")
    os.symlink(outside, root / "leakdir")
    os.symlink(root, root / "loop")  # a link back into the tree must not recurse forever
    with pytest.warns(UserWarning, match="outside"):
        found = list_images(root)
    assert found == ["a.png", "alias.png"]


def test_list_images_missing_root_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_image_size_reads_header_and_honours_exif(tmp_path: Path) -> None:
    im = _noise(64, 32)
    im.save(tmp_path / "plain.png")
    assert image_size(tmp_path / "plain.png") == (64, 32)
    for orientation, expected in [(1, (64, 32)), (3, (64, 32)), (5, (32, 64)), (6, (32, 64)), (8, (32, 64))]:
        p = tmp_path / f"o{orientation}.jpg"
        im.save(p, exif=_with_orientation(im, orientation))
        assert image_size(p) == expected, orientation
    p = tmp_path / "o6.png"
    im.save(p, exif=_with_orientation(im, 6))
    assert image_size(p) == (32, 64)


def test_image_size_of_a_non_image_raises_image_error(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageError, match="x.jpg"):
        image_size(p)


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "blob.bin"
    data = os.urandom(3_000_001)
    p.write_bytes(data)
    assert file_sha256(p, chunk=65536) == hashlib.sha256(data).hexdigest()


def test_load_rgb_applies_exif_rotation(tmp_path: Path) -> None:
    # A 4x2 image, left half red and right half blue; orientation 6 means: rotate 90 deg clockwise
    # for display, so the displayed 2x4 image is red on top and blue below.
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, :2] = (255, 0, 0)
    arr[:, 2:] = (0, 0, 255)
    im = Image.fromarray(arr)
    p = tmp_path / "rot.png"
    im.save(p, exif=_with_orientation(im, 6))
    out = np.asarray(load_rgb(p))
    assert out.shape == (4, 2, 3)
    assert (out[:2] == (255, 0, 0)).all() and (out[2:] == (0, 0, 255)).all()


def test_load_rgb_converts_every_mode_to_8bit_rgb(tmp_path: Path) -> None:
    gray = Image.fromarray(np.full((4, 4), 77, np.uint8), mode="L")
    gray.save(tmp_path / "gray.png")
    assert np.asarray(load_rgb(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, 0, 3] = 0  # transparent: shown on white
    rgba[1:, :, 3] = 255
    rgba[0, 1:, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_rgb(tmp_path / "rgba.png"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 20, 30]

    pal = Image.fromarray(np.asarray([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([200, 0, 0, 0, 100, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    out = np.asarray(load_rgb(tmp_path / "pal.png"))
    assert out[0, 0].tolist() == [200, 0, 0] and out[0, 1].tolist() == [0, 100, 0]

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    out = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))
    assert out.shape == (8, 8, 3) and out[4, 4, 0] > 240 and out[4, 4, 1:].max() < 15

    # 16-bit grayscale: 0..65535 maps linearly onto 0..255 (not clipped at 255 as a naive cast would).
    v16 = np.array([[0, 257 * 100], [65535, 32896]], dtype=np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 100], [255, 128]]

    for name in ("gray.png", "rgba.png", "pal.png", "cmyk.jpg", "g16.png"):
        assert load_rgb(tmp_path / name).mode == "RGB"


def _truncated_jpeg(tmp_path: Path) -> Path:
    p = tmp_path / "cut.jpg"
    _noise(128, 128).save(p, quality=90)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def test_truncated_and_corrupt_files_raise_image_error(tmp_path: Path) -> None:
    cut = _truncated_jpeg(tmp_path)
    with pytest.raises(ImageError, match="cut.jpg"):
        load_rgb(cut, allow_truncated=False)
    with pytest.raises(ImageError, match="cut.jpg"):
        check_image(cut)
    # issue 12: by default a truncated file loads as far as it goes, with a warning naming it
    with pytest.warns(TruncatedImageWarning, match="cut.jpg.*truncated"):
        assert load_rgb(cut).size == (128, 128)

    png = tmp_path / "cut.png"
    _noise(96, 96).save(png)
    data = png.read_bytes()
    png.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="cut.png"):
        check_image(png)

    flipped = tmp_path / "crc.png"
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF  # one damaged byte inside the IDAT data
    flipped.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="crc.png"):
        check_image(flipped)

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageError, match="junk.png"):
        load_rgb(junk)
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "absent.jpg")


def test_check_image_accepts_good_files_and_returns_displayed_size(tmp_path: Path) -> None:
    im = _noise(96, 64)
    im.save(tmp_path / "a.jpg")
    im.save(tmp_path / "b.png")
    im.save(tmp_path / "c.bmp")
    im.save(tmp_path / "d.jpg", exif=_with_orientation(im, 8))
    assert check_image(tmp_path / "a.jpg") == (96, 64)
    assert check_image(tmp_path / "b.png") == (96, 64)
    assert check_image(tmp_path / "c.bmp") == (96, 64)
    assert check_image(tmp_path / "d.jpg") == (64, 96)


def test_decompression_bomb_is_an_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.png"
    Image.new("L", (128, 128)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128 // 4)  # 4x over: DecompressionBombError
    with pytest.raises(ImageError, match="too large"):
        load_rgb(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128 - 1)  # just over: the warning, also refused
    with pytest.raises(ImageError, match="too large"):
        load_rgb(p)
    with pytest.raises(ImageError, match="too large"):
        check_image(p)
