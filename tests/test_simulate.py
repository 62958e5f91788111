"""simulate(): the results.json schema of issue 4, plots, a shared seed set and round-0 model for
every strategy, and a process killed between loop steps that resumes to the same results as an
uninterrupted run (the interrupted run is a subprocess, killed with SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from boxloop.loop.config import LoopConfig
from boxloop.loop.simulate import simulate
from boxloop.store import DB_NAME

SIZE = 64
TINY = dict(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, epochs=None, steps=8,
            image_size=SIZE, batch_size=4, device="cpu", val_every=1000,
            detector_options={"fpn_channels": 32, "head_convs": 1})
STRATEGIES = ("random", "least_confidence")
ROUNDS = 1



@pytest.fixture(scope="module")
def data(make_synthetic):
    return make_synthetic(n_images=24, image_size=SIZE, seed=5)


def _sim_kwargs(data) -> dict:
    return dict(dataset=data.images, annotations=data.annotations_dir, strategies=list(STRATEGIES), initial=6,
                budget=3, rounds=ROUNDS, seeds=[0], test_fraction=0.2, progress=False)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim_whole")
    res = simulate(out=out, config=LoopConfig.make(**TINY), echo=lambda m: None, **_sim_kwargs(data))
    return out, res


def test_results_schema_and_plots(uninterrupted):
    out, res = uninterrupted
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(res["runs"]))
    runs = on_disk["runs"]
    assert sorted(r["strategy"] for r in runs) == sorted(STRATEGIES)
    for r in runs:
        assert r["seed"] == 0 and r["unit"] == "images"
        assert [x["round"] for x in r["rounds"]] == list(range(ROUNDS + 1))
        for x in r["rounds"]:
            for key in ("round", "images_labelled", "boxes_labelled", "cost_seconds", "map50", "coco_ap", "per_class"):
                assert key in x, key
            assert 0.0 <= x["map50"] <= 1.0 and 0.0 <= x["coco_ap"] <= 1.0
            assert set(x["per_class"]) == {"circle", "square", "triangle"}
        # each round adds the budget's images, and labelling costs something
        imgs = [x["images_labelled"] for x in r["rounds"]]
        assert imgs == [6 + 3 * i for i in range(ROUNDS + 1)]
        costs = [x["cost_seconds"] for x in r["rounds"]]
        assert all(b > a for a, b in zip(costs, costs[1:]))
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots, "no plots written"
    assert all((out / "plots" / p).stat().st_size > 1000 for p in plots)


def test_strategies_share_seed_set_and_round0_model(uninterrupted):
    out, res = uninterrupted
    # same seed set, same model: identical round-0 metrics (how each strategy then chose its query,
    # e.g. a recorded fallback when the tiny model kept no box, is the strategy's own)
    r0 = [{k: v for k, v in r["rounds"][0].items() if k != "fallback"} for r in res["runs"]]
    assert all(x == r0[0] for x in r0[1:])
    labelled = []
    for s in STRATEGIES:
        with sqlite3.connect(out / "seed0" / s / DB_NAME) as c:
            labelled.append(sorted(p for (p,) in c.execute(
                "SELECT path FROM images WHERE status = 'labelled' AND split != 'test' "
                "AND id NOT IN (SELECT image_id FROM queries)")))
    assert labelled[0] == labelled[1] and len(labelled[0]) == 6
    a = torch.load(out / "seed0" / STRATEGIES[0] / "models" / "round_000" / "best.pt", map_location="cpu",
                   weights_only=False)
    b = torch.load(out / "seed0" / STRATEGIES[1] / "models" / "round_000" / "best.pt", map_location="cpu",
                   weights_only=False)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _state(ckpt) -> dict:
    for key in ("model", "state_dict", "model_state"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    return ckpt


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from boxloop.loop.config import LoopConfig
from boxloop.loop.simulate import simulate
cfg = LoopConfig.make(**{tiny!r})
simulate(dataset=Path({images!r}), annotations=Path({ann!r}), out=Path(sys.argv[1]),
         strategies={strategies!r}, initial=6, budget=3, rounds={rounds}, seeds=[0], test_fraction=0.2,
         progress=False, config=cfg, echo=lambda m: print(m, flush=True))
"""


def _steps(out: Path) -> list[tuple[str, int, str]]:
    """(run, round, step) of every project under OUT, read without taking the writer lock."""
    rows = []
    for db in sorted(out.glob(f"seed0/*/{DB_NAME}")):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as c:
                rows += [(db.parent.name, r, s) for r, s in c.execute("SELECT id, step FROM rounds")]
        except sqlite3.Error:
            continue
    return rows


def test_killed_between_steps_resumes_to_the_same_results(data, uninterrupted, tmp_path):
    whole_out, whole = uninterrupted
    out = tmp_path / "sim_killed"
    script = tmp_path / "sim.py"
    script.write_text(SCRIPT.format(tiny=TINY, images=str(data.images), ann=str(data.annotations_dir),
                                    strategies=list(STRATEGIES), rounds=ROUNDS))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # kill when the first strategy's run is past its round-0 oracle, between two loop steps
    target = STRATEGIES[0]
    seen = None
    deadline = time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None:
            steps = [(r, s) for name, r, s in _steps(out) if name == target]
            if any(r == 0 and s in ("oracle", "done") for r, s in steps) or any(r == 1 for r, s in steps):
                seen = steps
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and seen is None:
            proc.kill()
        proc.wait(timeout=30)
    assert seen is not None, f"never reached the kill point: {proc.stdout.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()

    again = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                           timeout=110)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    resumed = json.loads((out / "results.json").read_text())

    def key(r):
        return (r["strategy"], r["seed"])

    want = {key(r): r for r in json.loads((whole_out / "results.json").read_text())["runs"]}
    got = {key(r): r for r in resumed["runs"]}
    assert got.keys() == want.keys()
    for k in want:
        for a, b in zip(want[k]["rounds"], got[k]["rounds"], strict=True):
            assert (a["round"], a["images_labelled"], a["boxes_labelled"]) == \
                (b["round"], b["images_labelled"], b["boxes_labelled"]), (k, seen)
            assert b["cost_seconds"] == pytest.approx(a["cost_seconds"], abs=1e-6)
            assert b["map50"] == pytest.approx(a["map50"], abs=1e-6)
            assert b["coco_ap"] == pytest.approx(a["coco_ap"], abs=1e-6)
    # the same images were asked in the same rounds
    for s in STRATEGIES:
        q = "SELECT q.round, i.path, q.state FROM queries q JOIN images i ON i.id = q.image_id ORDER BY q.round, i.path"
        with sqlite3.connect(whole_out / "seed0" / s / DB_NAME) as c1, sqlite3.connect(out / "seed0" / s / DB_NAME) as c2:
            assert c1.execute(q).fetchall() == c2.execute(q).fetchall(), s
        # and the last round's model is the same, weight for weight (training resumes exactly)
        last = f"round_{ROUNDS:03d}"
        wa = _state(torch.load(whole_out / "seed0" / s / "models" / last / "best.pt", map_location="cpu",
                               weights_only=False))
        wb = _state(torch.load(out / "seed0" / s / "models" / last / "best.pt", map_location="cpu",
                               weights_only=False))
        diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].numel())
        assert diff <= 1e-6, (s, seen, diff)
    print("killed at", seen, "map50", [x["map50"] for r in resumed["runs"] for x in r["rounds"]])
