"""simulate on Ray (local, 2 CPUs): merged results equal the sequential run's, a rerun does only what
is missing, and a worker SIGKILLed in the middle of a run is retried to the same results. Also: the
default path never imports Ray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from boxloop.loop.config import LoopConfig
from boxloop.loop.simulate import SimSpec, dataset_paths, simulate

SIZE = 64
TINY = dict(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, epochs=None, steps=8,
            image_size=SIZE, batch_size=4, device="cpu", val_every=1000,
            detector_options={"fpn_channels": 32, "head_convs": 1})
STRATEGIES = ["random", "least_confidence"]


def test_default_path_does_not_import_ray() -> None:
    code = ("import sys, boxloop.cli.main, boxloop.loop.round, boxloop.loop.simulate, boxloop.train.fit, boxloop.predict.files; "
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_without_ray_the_options_say_how_to_install_it(monkeypatch) -> None:
    from boxloop.scale.ray_session import RayNotInstalled, ray_session

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayNotInstalled, match=r"pip install 'boxloop\[ray\]'"):
        with ray_session(2):
            pass


@pytest.fixture(scope="module")
def data(make_synthetic):
    return make_synthetic(n_images=24, image_size=SIZE, seed=5)


def _kw(data) -> dict:
    return dict(dataset=data.images, annotations=data.annotations_dir, strategies=STRATEGIES, initial=6, budget=3,
                rounds=1, seeds=[0], test_fraction=0.2, progress=False, config=LoopConfig.make(**TINY),
                echo=lambda m: None)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _runs(res: dict) -> dict:
    """Runs keyed by (strategy, seed), without the project path (each OUT has its own)."""
    return {(r["strategy"], r["seed"]): {k: v for k, v in r.items() if k != "project"} for r in res["runs"]}


@pytest.fixture(scope="module")
def sequential(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_seq")
    return out, simulate(out=out, **_kw(data))


def test_ray_results_equal_sequential_and_rerun_does_only_the_missing(data, sequential, ray_local, tmp_path):
    from boxloop.loop.simulate import missing_jobs

    out = tmp_path / "sim_ray"
    res = simulate(out=out, workers=2, **_kw(data))
    assert _runs(res) == _runs(sequential[1])  # exactly: same floats, same images asked
    for s in STRATEGIES:  # and the last round's model, weight for weight
        a, b = (_weights(o / "seed0" / s / "models" / "round_001" / "best.pt") for o in (sequential[0], out))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), s
    images, ann = dataset_paths(data.images, data.annotations_dir)
    spec = SimSpec(out=out, images=images, annotations=ann, fmt=None, test_list=None, test_fraction=0.2, initial=6,
                   budget=3, rounds=1, config=LoopConfig.make(**TINY))
    assert missing_jobs(spec, [0], STRATEGIES) == []
    shutil.rmtree(out / "seed0" / STRATEGIES[1])
    assert missing_jobs(spec, [0], STRATEGIES) == [("base", 0, None), ("run", 0, STRATEGIES[1])]
    again = simulate(out=out, workers=2, **_kw(data))
    assert _runs(again) == _runs(sequential[1])


def test_a_user_error_in_a_task_is_raised_as_itself(data, ray_local, tmp_path) -> None:
    with pytest.raises(ValueError, match="--initial 1000 is more than"):
        simulate(out=tmp_path / "bad", workers=2, **{**_kw(data), "initial": 1000})


def _flock_holder(path: Path) -> int | None:
    """The pid holding an flock on `path` (from /proc/locks), without touching the lock."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].split(":")[-1] == str(inode):
            return int(parts[4])
    return None


def test_killed_worker_is_retried_to_the_same_results(data, sequential, ray_local, tmp_path):
    out = tmp_path / "sim_kill"
    result: dict = {}

    def drive() -> None:
        try:
            result["res"] = simulate(out=out, workers=2, **_kw(data))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    t = threading.Thread(target=drive)
    t.start()
    killed = None
    deadline = time.time() + 120
    target = out / "seed0" / STRATEGIES[0]
    while t.is_alive() and time.time() < deadline and killed is None:
        pid = _flock_holder(target / ".lock")
        if pid is not None and pid != os.getpid() and (target / "models" / "round_001").exists():
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            os.kill(pid, signal.SIGKILL)  # a Ray worker in the middle of round 1 of this run
            killed = (pid, cmd[:80])
        time.sleep(0.01)
    t.join(timeout=180)
    assert killed is not None, "never saw the run in round 1"
    assert b"ray" in killed[1].lower() or b"default_worker" in killed[1], killed
    assert "error" not in result, result.get("error")
    assert _runs(result["res"]) == _runs(sequential[1]), killed
    print("killed", killed)


def test_an_out_of_another_initial_strategy_is_refused_before_any_work(data, sequential) -> None:
    """Also with --workers, and also when every run of OUT is finished (no base task would run)."""
    out = sequential[0]
    before = (out / "results.json").read_text()
    with pytest.raises(ValueError, match=r"--initial-strategy random \(now typical\)"):
        simulate(out=out, workers=2, initial_strategy="typical", **_kw(data))
    assert (out / "results.json").read_text() == before
