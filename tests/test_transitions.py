"""Every long-running command resumes at the step it stored, and goes on in the order of
loop/transitions.py: a round (run_round), the cold start's round, and auto-labelling's phases."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from boxloop.loop import round as loop
from boxloop.loop.coldstart import open_select_round
from boxloop.loop.config import LoopConfig
from boxloop.loop.round import run_round
from boxloop.loop.transitions import PHASES, STEPS, Phase, Step, next_phase, next_step, steps_before
from boxloop.project import init_project
from boxloop.store import Project, QueryState


def test_steps_and_states_are_enums_that_read_as_the_stored_strings() -> None:
    assert [str(s) for s in STEPS] == ["train", "evaluate", "predict", "select", "oracle", "semi", "done"]
    assert Step("oracle") is Step.ORACLE and QueryState("open") is QueryState.OPEN
    assert steps_before(Step.SELECT) == (Step.TRAIN, Step.EVALUATE, Step.PREDICT)
    assert [next_phase(p) for p in Phase] == [Phase.EVALUATE, Phase.LABEL, Phase.TRAIN] and set(PHASES) == set(Phase)


@pytest.fixture
def stubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """run_round with every step replaced by a recorder; the steps that record their successor do."""
    calls: list[str] = []

    def stub(name: str):
        def run(project: Project, round_id: int, config: LoopConfig, *args, **kwargs):
            calls.append(name)
            if name in ("select", "oracle", "semi"):
                project.update_round(round_id, step=next_step(name, config, kwargs.get("last", False)))
        return run

    for step in STEPS[:-1]:
        monkeypatch.setattr(loop, f"step_{step}", stub(str(step)))
    with Project.create(tmp_path / "p", tmp_path, classes=["a"]) as project:
        yield project, calls


@pytest.mark.parametrize("stored", [str(s) for s in STEPS])
def test_a_round_resumes_at_its_stored_step(stubbed, stored: str) -> None:
    project, calls = stubbed
    config = LoopConfig.make(semi="autolabel")
    project.start_round(config.to_dict(), step=stored, round_id=1)
    run_round(project, config, {}, 1, progress=False)
    assert calls == [str(s) for s in STEPS[STEPS.index(Step(stored)):-1]]
    assert project.round(1).step == Step.DONE and project.round(1).status == "done"


@pytest.mark.parametrize("stored", [str(s) for s in STEPS[:STEPS.index(Step.ORACLE)]])
def test_the_cold_start_resumes_its_round_at_select(tmp_path: Path, stored: str) -> None:
    """A cold-start round that an earlier attempt left before select starts again at select; one at
    select stays there."""
    with Project.create(tmp_path / "p", tmp_path, classes=["a"]) as project:
        project.start_round(LoopConfig().to_dict(), step=stored, round_id=1)
        open_select_round(project, LoopConfig(), 1)
        assert project.round(1).step == Step.SELECT


@pytest.fixture
def unlabelled_project(make_synthetic, tmp_path: Path):
    """A project with 6 labelled images and 10 to auto-label."""
    data = make_synthetic(n_images=16, image_size=64, seed=5)
    ann = tmp_path / "ann"
    ann.mkdir()
    for xml in sorted(data.annotations_dir.glob("*.xml"))[:6]:
        shutil.copy(xml, ann / xml.name)
    project = init_project(tmp_path / "project", data.images, ann, classes=data.classes, test_fraction=0.25,
                           seed=0, progress=False)
    yield project
    project.close()


@pytest.mark.parametrize("stored", [p.value for p in Phase])
def test_auto_labelling_resumes_at_its_stored_phase(unlabelled_project, monkeypatch, stored: str) -> None:
    """With each phase replaced by a recorder, a run stored at `stored` starts there and follows PHASES;
    the label phase ends the iteration (the next starts at train) and here stops the run."""
    import boxloop.semi.autolabel as al
    from boxloop.semi.autolabel_config import AutolabelConfig

    project = unlabelled_project
    config = AutolabelConfig.make(device="cpu", iterations=2)
    calls: list[tuple[int, str]] = []

    def phase(name: str):
        def run(project: Project, cfg: Any, i: int, progress: bool) -> dict[str, Any]:
            calls.append((i, name))
            return {}
        return run

    def label(project: Project, cfg: Any, i: int, pending: dict, state: dict, progress: bool) -> dict[str, Any]:
        calls.append((i, "label"))
        nxt = {**state, "iteration": i + 1, "phase": next_phase(Phase.LABEL).value, "pending": {}, "stopped": None}
        project.set_metric(al.METRICS_ROUND, al.STATE_KEY, nxt)
        return nxt

    monkeypatch.setattr(al, "_train", phase("train"))
    monkeypatch.setattr(al, "_evaluate", phase("evaluate"))
    monkeypatch.setattr(al, "_label", label)
    resolved = config.resolved(project.image_count())
    project.set_metric(al.METRICS_ROUND, al.STATE_KEY, {"iteration": 1, "phase": stored, "pending": {},
                                                       "stopped": None, "config": resolved.to_dict()})
    al.autolabel(project, config, progress=False)
    order = [p.value for p in Phase]
    expected = [(1, p) for p in order[order.index(stored):]] + [(2, p) for p in order]
    assert calls == expected
    state = project.metrics(al.METRICS_ROUND)[al.METRICS_ROUND][al.STATE_KEY]
    assert (state["iteration"], state["phase"], state["stopped"]) == (3, "train", "iterations")
