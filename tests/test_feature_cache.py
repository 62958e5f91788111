"""The frozen body's feature cache: equal to the uncached maps within float16's rounding, invalidated
by a changed image, safe against damaged entries, kills mid-write and folders it cannot write, bounded."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxloop.predict import feature_cache as fc
from boxloop.train.cached import CachedTrainSet
from boxloop.predict.cached import bind
from boxloop.train.data import Sample
from boxloop.detectors import create_detector
from boxloop.detectors.common import predict_context
from boxloop.predict.feature_cache import FP16_ATOL, FP16_RTOL, FeatureCache, cache_dir, cache_status, clear_cache
from boxloop.predict.inference import predict_paths
from boxloop.structures import Annotation, Boxes


def _detector(**kw):
    torch.manual_seed(0)
    kw.setdefault("trainable_layers", 0)
    return create_detector("fcos_lite", num_classes=3, pretrained_backbone=False, min_size=64, max_size=64,
                           score_thresh=0.0, **kw)


def _image(path: Path, seed: int, w: int = 80, h: int = 60) -> Path:
    arr = np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [_image(folder / f"im{i}.png", i) for i in range(n)]


def _predict(det, paths, cache=None):
    return dict(predict_paths(det, paths, 64, batch_size=2, progress=False, score_threshold=0.0, feature_cache=cache))


def test_cached_maps_equal_uncached_within_fp16_rounding(tmp_path: Path) -> None:
    det = _detector()
    assert det.frozen_body() is not None
    images = [torch.rand(3, 48, 64) for _ in range(2)]
    exact = det.body_features(images)[0]
    cache = FeatureCache(tmp_path)
    cache.put("ab" * 20, exact.maps, {"x": 1})
    maps, meta = cache.get("ab" * 20)
    assert meta == {"x": 1} and list(maps) == list(exact.maps)
    for name, t in exact.maps.items():
        err = (maps[name].float() - t).abs()
        assert maps[name].dtype == torch.float16 and maps[name].shape == t.shape
        assert bool((err <= FP16_RTOL * t.abs() + FP16_ATOL).all()), float(err.max())
    # bfloat16 maps (CPU inference under autocast) are stored as they are: bit for bit
    bf = {k: v.to(torch.bfloat16) for k, v in exact.maps.items()}
    cache.put("cd" * 20, bf, {})
    got, _ = cache.get("cd" * 20)
    assert all(torch.equal(got[k], bf[k]) for k in bf)


def test_training_loss_on_cached_maps_matches_pixels(tmp_path: Path) -> None:
    det = _detector()
    images = [torch.rand(3, 48, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in images]
    det.train()
    on_pixels = det.loss(images, targets)
    cache = FeatureCache(tmp_path)
    feats = det.body_features(images)
    for i, f in enumerate(feats):
        cache.put(f"{i:02d}" * 20, f.maps, {})
    for i, f in enumerate(feats):
        f.maps = cache.get(f"{i:02d}" * 20)[0]
    on_cache = det.loss_from_features(feats, targets)
    for k, v in on_pixels.items():
        assert float(on_cache[k]) == pytest.approx(float(v), rel=2e-3)


def test_scoring_from_cache_equals_pixels_and_a_changed_image_misses(tmp_path: Path) -> None:
    det = _detector(cpu_bf16=False)
    paths = _images(tmp_path / "im")
    plain = _predict(det, paths)
    cache = FeatureCache(cache_dir(tmp_path))
    first = _predict(det, paths, cache)
    again = _predict(det, paths, cache)
    assert cache_status(tmp_path)["hits"] == 3 and cache_status(tmp_path)["misses"] == 3
    for p in paths:
        assert len(plain[p]) == len(again[p]) > 0
        np.testing.assert_allclose(again[p].scores, first[p].scores, rtol=0, atol=0)  # a hit = the maps stored
        np.testing.assert_allclose(again[p].scores, plain[p].scores, atol=2e-3)  # float16 maps, float32 head
    old = paths[1].stat()
    _image(paths[1], 99)
    os.utime(paths[1], ns=(old.st_atime_ns, old.st_mtime_ns))  # same size and mtime, new bytes
    _predict(det, paths, cache)
    st = cache_status(tmp_path)
    assert (st["hits"], st["misses"], st["entries"]) == (5, 4, 4)
    assert clear_cache(cache_dir(tmp_path)) > 0 and cache_status(tmp_path)["entries"] == 0


def test_damaged_entries_are_recomputed_with_one_warning_each(tmp_path: Path, caplog) -> None:
    det = _detector(cpu_bf16=False)
    paths = _images(tmp_path / "im")
    cache = FeatureCache(cache_dir(tmp_path))
    _predict(det, paths, cache)
    files = sorted(cache.root.glob("*/*.bxf"))
    assert len(files) == 3
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # truncated (a full disk, a torn copy)
    data = bytearray(files[1].read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the payload
    files[1].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="boxloop"):
        _predict(det, paths, cache)
    damaged = [r for r in caplog.records if "damaged entry" in r.getMessage()]
    assert len(damaged) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="boxloop"):
        _predict(det, paths, cache)  # rewritten: all hits, no warning
    assert not caplog.records and len(list(cache.root.glob("*/*.bxf"))) == 3


def test_a_folder_that_cannot_be_written_runs_uncached_with_one_warning(tmp_path: Path, caplog, monkeypatch) -> None:
    det = _detector(cpu_bf16=False)
    paths = _images(tmp_path / "im")
    root = cache_dir(tmp_path)
    root.mkdir(parents=True)
    if os.geteuid() != 0:
        root.chmod(0o555)
    else:  # root writes anywhere: make every write fail as on a read-only file system
        def refuse(f, blob):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(fc, "_write", refuse)
    try:
        with caplog.at_level(logging.WARNING, logger="boxloop"):
            got = _predict(det, paths, FeatureCache(root))
    finally:
        root.chmod(0o755)
    assert len(got) == 3 and all(len(d) for d in got.values())
    assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1
    assert not list(root.glob("*/*.bxf")) and not list(root.glob("*/.*.tmp"))


def test_lru_bound_keeps_the_recently_used(tmp_path: Path) -> None:
    maps = {"0": torch.rand(8, 16, 16)}
    root = cache_dir(tmp_path)
    cache = FeatureCache(root, max_bytes=10**9)
    cache.put("00" * 20, maps, {})
    size = cache._path("00" * 20).stat().st_size
    cache = FeatureCache(root, max_bytes=5 * size)
    keys = [f"{i:02d}" * 20 for i in range(12)]
    for i, k in enumerate(keys):
        cache.put(k, maps, {})
        os.utime(cache._path(k), (1000 + i, 1000 + i))  # a clear order of last use
        if i == 2:
            assert cache.get(keys[0]) is not None  # used again: now the most recent
            os.utime(cache._path(keys[0]), (1002.5, 1002.5))
        assert cache_status(tmp_path)["bytes"] <= 5 * size
    left = {p.stem for p in root.glob("*/*.bxf")}
    assert keys[-1] in left and keys[1] not in left


def test_a_kill_mid_write_never_leaves_an_entry_that_is_read(tmp_path: Path, caplog) -> None:
    script = textwrap.dedent(f"""
        import os, torch
        from boxloop.predict import feature_cache as fc
        def half_then_die(f, blob):
            f.write(blob[: len(blob) // 2]); f.flush(); os._exit(9)
        fc._write = half_then_die
        fc.FeatureCache({str(tmp_path)!r}).put("ee" * 20, {{"0": torch.rand(4, 8, 8)}}, {{}})
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(fc.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert list(tmp_path.glob("*/.*.tmp")) and not list(tmp_path.glob("*/*.bxf"))
    cache = FeatureCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="boxloop"):
        assert cache.get("ee" * 20) is None  # a plain miss: nothing half-written is ever opened
    assert not caplog.records
    assert cache.put("ee" * 20, {"0": torch.rand(4, 8, 8)}, {}) and cache.get("ee" * 20) is not None


def test_training_items_come_from_the_cache_in_two_views(tmp_path: Path) -> None:
    det = _detector()
    paths = _images(tmp_path / "im", 2)
    ann = Annotation(image="x", boxes=Boxes(np.array([[8.0, 6.0, 40.0, 30.0]]), (80, 60)), labels=("a",))
    samples = [Sample(p, ann) for p in paths]
    bound = bind(FeatureCache(cache_dir(tmp_path)), det, "fp32")
    ds = CachedTrainSet(samples, ["a", "b", "c"], 64, True, bound, seed=0)
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i in range(2):
            feats, target = ds[i]
            assert feats.input_size == (48, 64)
            x0 = float(target["boxes"][0, 0])
            assert x0 == pytest.approx(6.4) or x0 == pytest.approx(64 - 32.0)  # plain or flipped (scale 0.8)
            seen.add((i, round(x0, 3)))
    assert {x0 for _, x0 in seen} == {6.4, 32.0}
    bound.cache.flush()
    st = cache_status(tmp_path)
    assert st["entries"] == len(seen) and st["misses"] == len(seen) and st["hits"] == 16 - len(seen)
    assert bind(FeatureCache(tmp_path / "c2"), _detector(trainable_layers=1), "fp32") is None  # pixels, as today


def test_status_shows_the_cache_and_clear_cache_empties_it(synthetic_project) -> None:
    from typer.testing import CliRunner

    from boxloop.cli import app

    det = _detector()
    root = synthetic_project.image_root
    keys = sorted(synthetic_project.annotations("test"))[:3]
    cache = FeatureCache(cache_dir(synthetic_project.dir))
    for _ in range(2):
        _predict(det, [root / k for k in keys], cache)
    synthetic_project.close()
    res = CliRunner().invoke(app, ["status", str(synthetic_project.dir)])
    assert res.exit_code == 0, res.output
    assert "feature cache: 3 entries" in res.output and "hit rate 50%" in res.output
    res = CliRunner().invoke(app, ["status", str(synthetic_project.dir), "--clear-cache", "--json"])
    assert res.exit_code == 0, res.output
    assert cache_status(synthetic_project.dir)["entries"] == 0


def test_maps_beyond_float16_are_used_as_computed_and_not_stored(tmp_path: Path, caplog) -> None:
    from boxloop.predict.cached import BoundCache
    from boxloop.detectors.features import BodyFeatures

    bound = BoundCache(FeatureCache(cache_dir(tmp_path)), _detector(), "fp32")
    big = BodyFeatures({"0": torch.full((2, 4, 4), 1e6)}, (32, 32), (32, 32), (32, 32))
    with caplog.at_level(logging.WARNING, logger="boxloop"):
        got = bound.put("ff" * 20, big, (32, 32))
    assert torch.equal(got.maps["0"], big.maps["0"]) and bound.cache.get("ff" * 20) is None
    assert len([r for r in caplog.records if "float16's range" in r.getMessage()]) == 1


def test_other_body_weights_or_size_miss_the_cache(tmp_path: Path) -> None:
    det = _detector(cpu_bf16=False)
    paths = _images(tmp_path / "im", 2)
    cache = FeatureCache(cache_dir(tmp_path))
    _predict(det, paths, cache)
    before = det.body_identity()
    state = det.state_dict()
    name = next(k for k in state if k.startswith("model.backbone.body") and state[k].is_floating_point())
    state[name] = state[name] + 0.01
    det.load_state_dict(state)  # in place: the memoised identity must notice
    assert det.body_identity() != before
    _predict(det, paths, cache)
    list(predict_paths(det, paths, 48, progress=False, feature_cache=cache))  # another size
    assert (cache_status(tmp_path)["hits"], cache_status(tmp_path)["entries"]) == (0, 6)
