"""The round's step order lives in loop.TRANSITIONS; run_round follows it and records each step."""

from __future__ import annotations

from pathlib import Path

import pytest

from boxloop.loop import round as loop
from boxloop.loop.round import STEPS, TRANSITIONS, next_step, run_round
from boxloop.loop.config import LoopConfig
from boxloop.store import Project


def test_the_table_orders_the_steps() -> None:
    plain, semi = LoopConfig(), LoopConfig.make(semi="autolabel")
    assert STEPS == ("train", "evaluate", "predict", "select", "oracle", "semi", "done")
    assert set(TRANSITIONS) == set(STEPS) - {"done"}
    assert [next_step(s, plain) for s in ("train", "evaluate", "predict", "select", "oracle")] == \
        ["evaluate", "predict", "select", "oracle", "done"]
    assert next_step("oracle", semi) == "semi" and next_step("semi", semi) == "done"
    assert next_step("evaluate", plain, last=True) == "done"
    assert next_step("evaluate", LoopConfig.make(take_all_last=True), last=True) == "predict"


@pytest.fixture
def stubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """run_round with every step replaced by a recorder; the steps that record their successor do."""
    calls: list[tuple[str, str | None]] = []

    def stub(name: str):
        def run(project: Project, round_id: int, config: LoopConfig, *args, **kwargs):
            calls.append((name, project.rounds()[-1].step))
            if name in ("select", "oracle", "semi"):
                project.update_round(round_id, step=next_step(name, config, kwargs.get("last", False)))
        return run

    for name in ("train", "evaluate", "predict", "select", "oracle", "semi"):
        monkeypatch.setattr(loop, f"step_{name}", stub(name))
    with Project.create(tmp_path / "p", tmp_path, classes=["a"]) as project:
        yield project, calls


def test_run_round_follows_the_table_and_records_each_step(stubbed) -> None:
    project, calls = stubbed
    run_round(project, LoopConfig.make(semi="autolabel"), {}, 1, progress=False)
    assert calls == [("train", "train"), ("evaluate", "evaluate"), ("predict", "predict"), ("select", "select"),
                     ("oracle", "oracle"), ("semi", "semi")]
    assert project.rounds()[-1].step == "done" and project.rounds()[-1].status == "done"


def test_a_human_round_waits_after_select_and_the_last_round_stops_after_evaluate(stubbed) -> None:
    project, calls = stubbed
    run_round(project, LoopConfig(), None, 1, progress=False)
    assert [c[0] for c in calls] == ["train", "evaluate", "predict", "select"]
    assert project.rounds()[-1].step == "oracle" and project.rounds()[-1].status == "running"
    calls.clear()
    run_round(project, LoopConfig(), None, 2, last=True, progress=False)
    assert [c[0] for c in calls] == ["train", "evaluate"] and project.rounds()[-1].step == "done"
