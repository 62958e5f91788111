"""The cold start end to end: `boxloop query` on a project with no model and no label writes a typical
batch; `simulate --initial-strategy typical` chooses its seed set by typicality and records budget_aware's
phase in results.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.loop.config import LoopConfig
from boxloop.loop.simulate import simulate
from boxloop.store import Project

SIZE = 64
TINY = dict(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, epochs=None, steps=4,
            image_size=SIZE, batch_size=4, device="cpu", val_every=1000,
            detector_options={"fpn_channels": 32, "head_convs": 1})


@pytest.fixture(scope="module")
def data(make_synthetic):
    return make_synthetic(n_images=16, image_size=SIZE, seed=7)


def test_query_on_an_untrained_project_writes_a_typical_batch(data, tmp_path: Path) -> None:
    runner = CliRunner()
    proj, batch = tmp_path / "proj", tmp_path / "batch"
    res = runner.invoke(app, ["init", str(proj), "--images", str(data.images), "--classes", "circle,square,triangle"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["query", str(proj), "--budget", "3", "--out", str(batch), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "chosen by typical" in text and "asked about 3 images (typical)" in text
    manifest = json.loads((batch / "batch.json").read_text())
    assert len(manifest["images"]) == 3 and len(list(batch.glob("*.xml"))) == 3
    with Project.open(proj) as p:
        assert not (proj / "models").exists()  # nothing was trained
        (rnd,) = p.rounds()
        assert rnd.step == "oracle" and rnd.config["selection"]["strategy"] == "typical"  # saved nested
        sel = p.metrics(rnd.id)[rnd.id]["selection"]
        assert sel["strategy"] == "typical" and sel["count"] == 3 and sel["clusters"] == 3
        assert len(list((proj / "cache" / "embeddings").rglob("*.npy"))) == 16  # the whole pool, cached
    # answer the batch with the true boxes: the labels land like any other answer
    for name in manifest["images"]:
        shutil.copy(data.annotations_dir / (Path(name).stem + ".xml"), batch / (Path(name).stem + ".xml"))
    res = runner.invoke(app, ["import", str(proj), "--annotations", str(batch)])
    assert res.exit_code == 0, res.output
    assert "imported 3 images" in " ".join(res.stdout.split())
    with Project.open(proj) as p:
        assert {r.path for r in p.images(status="labelled")} == set(manifest["images"].values())
        assert p.last_round().step == "done"


def test_simulate_with_a_typical_seed_set_and_budget_aware(data, tmp_path: Path) -> None:
    kw = dict(dataset=data.images, annotations=data.annotations_dir, strategies=["budget_aware"], initial=4,
              budget=2, rounds=1, seeds=[0], test_fraction=0.25, progress=False, echo=lambda m: None)
    res = simulate(out=tmp_path, config=LoopConfig.make(**TINY), initial_strategy="typical", **kw)
    (run,) = res["runs"]
    assert run["initial_strategy"] == "typical" and run["strategy"] == "budget_aware"
    rows = run["rounds"]
    assert [r["images_labelled"] for r in rows] == [4, 6]
    assert rows[0]["phase"] in ("typical", "localization_aware") and 0.0 <= rows[0]["coverage"] <= 1.0
    assert "switch_round" in run
    assert json.loads((tmp_path / "simulate_config.json").read_text())["initial_strategy"] == "typical"
    # the seed set is the typical pick of the non-test images, the same on every call
    from boxloop.loop.simulate import initial_set

    with Project.open(tmp_path / "seed0" / "base") as p:
        seeded = sorted(r.path for r in p.images(...) if r.split in ("train", "val"))
        candidates = sorted(r.path for r in p.images(...) if r.split != "test")
        assert initial_set(p, candidates, 4, 0, "typical", "cpu") == seeded
        assert p.get_meta("initial_strategy") == "typical"
    # the same OUT refuses the other kind of seed set instead of mixing them
    with pytest.raises(ValueError, match=r"--initial-strategy typical \(now random\)"):
        simulate(out=tmp_path, config=LoopConfig.make(**TINY), initial_strategy="random", **kw)


def test_an_empty_label_file_nobody_saved_is_no_answer(data, tmp_path: Path) -> None:
    """A cold batch labelled half-way: the untouched empty files stay open instead of becoming negatives."""
    runner = CliRunner()
    proj, batch = tmp_path / "proj", tmp_path / "batch"
    assert runner.invoke(app, ["init", str(proj), "--images", str(data.images), "--classes",
                               "circle,square,triangle"]).exit_code == 0
    res = runner.invoke(app, ["query", str(proj), "--budget", "3", "--out", str(batch), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((batch / "batch.json").read_text())
    names = sorted(manifest["images"])
    xmls = sorted(Path(n).stem + ".xml" for n in names)
    assert sorted(manifest["label_files"]) == xmls  # every label file boxloop wrote, each fingerprinted
    # nothing saved yet: a clear error, nothing imported
    res = runner.invoke(app, ["import", str(proj), "--annotations", str(batch)])
    assert res.exit_code != 0 and "never saved" in " ".join(res.output.split())
    with Project.open(proj) as p:
        assert not p.images(status="labelled")
    # two images labelled, the third left as written
    for name in names[:2]:
        shutil.copy(data.annotations_dir / (Path(name).stem + ".xml"), batch / (Path(name).stem + ".xml"))
    res = runner.invoke(app, ["import", str(proj), "--annotations", str(batch)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "imported 2 images" in text and "1 queries still open" in text and names[2] in text
    with Project.open(proj) as p:
        assert {r.path for r in p.images(status="labelled")} == {manifest["images"][n] for n in names[:2]}
        assert p.image(manifest["images"][names[2]]).status == "unlabelled"
    # the same bytes under a new modification time: saved unchanged, or only copied; import asks (issue 31)
    third = batch / (Path(names[2]).stem + ".xml")
    st = third.stat()
    os.utime(third, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    res = runner.invoke(app, ["import", str(proj), "--annotations", str(batch)])
    assert res.exit_code == 1 and "saved unchanged, or copied" in " ".join(res.output.split()), res.output
    # the annotator says it holds nothing: now it is a negative
    res = runner.invoke(app, ["import", str(proj), "--annotations", str(batch), "--unchanged", "answered"])
    assert res.exit_code == 0, res.output
    assert "imported 1 images" in " ".join(res.output.split())
    with Project.open(proj) as p:
        key = manifest["images"][names[2]]
        assert p.image(key).status == "labelled" and len(p.annotations("labelled")[key]) == 0
