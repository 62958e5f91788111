"""Pooled Lite0 embeddings and their per-image cache (the offline pretrained weights, tiny images)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from boxloop.predict.embedding import EMBED_SIZE, embed_paths


def _image(path: Path, seed: int, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    arr[: size // 2] = rng.integers(0, 255, size=3, dtype=np.uint8)  # a flat half: not only noise
    Image.fromarray(arr).save(path)


def test_cache_hits_and_invalidates_when_an_image_changes(tmp_path: Path) -> None:
    paths = [tmp_path / f"im{i}.png" for i in range(3)]
    for i, p in enumerate(paths):
        _image(p, i)
    cache = tmp_path / "cache"
    st: dict = {}
    first = embed_paths(paths, cache, stats=st)
    assert first.shape == (3, 472) and st == {"hits": 0, "computed": 3}
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert len(list(cache.glob("*/*.npy"))) == 3

    again = embed_paths(paths, cache, stats=st)
    assert st == {"hits": 3, "computed": 0} and np.array_equal(first, again)

    # rewrite one file under the same name and set its modification time back: new bytes, noticed
    old = paths[1].stat()
    _image(paths[1], 99)
    os.utime(paths[1], ns=(old.st_atime_ns, old.st_mtime_ns))
    changed = embed_paths(paths, cache, stats=st)
    assert st == {"hits": 2, "computed": 1}
    assert np.array_equal(changed[[0, 2]], first[[0, 2]]) and not np.allclose(changed[1], first[1])

    # touched but identical bytes (a copy, a restore from backup): the hash matches, nothing to compute
    os.utime(paths[0], None)
    embed_paths(paths, cache, stats=st)
    assert st == {"hits": 3, "computed": 0}
    # a lost index only costs hashing; a damaged vector is recomputed
    (cache / "index.json").unlink()
    next(iter(cache.glob("*/*.npy"))).write_bytes(b"junk")
    again = embed_paths(paths, cache, stats=st)
    assert st["computed"] == 1 and np.allclose(again, changed, atol=1e-6)


def test_embedding_is_deterministic_and_size_independent(tmp_path: Path) -> None:
    """The same picture at two file sizes lands close (every image is resized to EMBED_SIZE first)."""
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    _image(a, 1, size=64)
    Image.open(a).resize((128, 128), Image.NEAREST).save(b)
    _image(c, 2, size=64)
    e = embed_paths([a, b, c])
    assert np.linalg.norm(e[0] - e[1]) < np.linalg.norm(e[0] - e[2])
    assert np.array_equal(e, embed_paths([a, b, c]))
    assert EMBED_SIZE == 224
