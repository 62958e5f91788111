"""The steps of the long-running commands and their order: one table per command, all here.

A round of the loop (run_round; `query` and `import` for a person; the cold start's first batch) and
an auto-labelling iteration (semi/autolabel.py) each store the step they are at, so a killed
process resumes there. Which step follows which is written only in this module: the runners look
their successor up here, and the steps are enums, not strings spelled in several files.

    round:      train -> evaluate -> predict -> select -> oracle -> (semi) -> done
    autolabel:  train -> evaluate -> label -> (next iteration) train
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from boxloop.loop.config import LoopConfig

__all__ = ["Step", "TRANSITIONS", "STEPS", "RECORDS_ITS_SUCCESSOR", "next_step", "steps_before", "Phase",
           "PHASES", "next_phase"]


class Step(StrEnum):
    """A round's step: the one to run next, as the store records it."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    PREDICT = "predict"
    SELECT = "select"
    ORACLE = "oracle"
    SEMI = "semi"
    DONE = "done"


# Each step's successor, given the round's config and whether it is the loop's last round.
TRANSITIONS: dict[Step, Callable[[LoopConfig, bool], Step]] = {
    Step.TRAIN: lambda config, last: Step.EVALUATE,
    Step.EVALUATE: lambda config, last: Step.DONE if last and not config.selection.take_all_last else Step.PREDICT,
    Step.PREDICT: lambda config, last: Step.SELECT,
    Step.SELECT: lambda config, last: Step.ORACLE,
    Step.ORACLE: lambda config, last: Step.SEMI if config.pseudo.semi else Step.DONE,
    Step.SEMI: lambda config, last: Step.DONE,
}
STEPS = (*TRANSITIONS, Step.DONE)
# A step whose result is a label change records its successor itself, in the transaction of that
# result; run_round records the others.
RECORDS_ITS_SUCCESSOR = frozenset({Step.SELECT, Step.ORACLE, Step.SEMI})


def next_step(step: str, config: LoopConfig, last: bool = False) -> Step:
    """The step after `step` (TRANSITIONS)."""
    return TRANSITIONS[Step(step)](config, last)


def steps_before(step: Step) -> tuple[Step, ...]:
    """The steps a round runs before `step`, in order."""
    return STEPS[: STEPS.index(step)]


class Phase(StrEnum):
    """An auto-labelling iteration's phase, as its stored state records it."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    LABEL = "label"  # ends the iteration: the next one starts with TRAIN


PHASES: dict[Phase, Phase] = {Phase.TRAIN: Phase.EVALUATE, Phase.EVALUATE: Phase.LABEL, Phase.LABEL: Phase.TRAIN}


def next_phase(phase: str) -> Phase:
    """The phase after `phase` (PHASES)."""
    return PHASES[Phase(phase)]
