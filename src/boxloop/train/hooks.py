"""Hooks: where a training method plugs into fit()'s one loop instead of copying it (after
Detectron2's HookBase), with state that survives a resume.

fit() calls each hook, in the order given: `before_train(step)` once, after a resume has restored
everything (`step`: the steps made so far); `before_step(step, images, targets)` for each batch,
returning the batch to train on (a teacher's pseudo-labels, refreshed targets, another view; the
loader's CPU tensors); `after_step(step, entry)` once per optimiser step, after that step's
validation (an EMA teacher's update, logging; `entry` is the step's history row); `after_train(step)`
when the call ends. `state_dict()` goes into every checkpoint fit writes and `load_state_dict()`
gets it back on resume, so a hook with state (an EMA teacher's weights, a counter) resumes exactly.
Under torchrun every rank runs the hooks. Validation with the best checkpoint and the learning-rate
schedule stay in fit(): their state is the checkpoint's own fields and rank 0's broadcast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from boxloop.train.step import Images, Targets

__all__ = ["Hook", "FitHooks"]


class Hook:
    """A hook that does nothing: subclass it and override what the method needs."""

    @property
    def changes_batch(self) -> bool:
        """Whether before_step may change the batch (fit then trains on pixels, not on cached features)."""
        return type(self).before_step is not Hook.before_step

    def before_train(self, step: int) -> None:
        pass

    def before_step(self, step: int, images: Images, targets: Targets) -> tuple[Images, Targets]:
        return images, targets

    def after_step(self, step: int, entry: dict[str, Any]) -> None:
        pass

    def after_train(self, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FitHooks(Hook):
    """Two plain functions as a hook without state: `batch(step, images, targets)` is before_step,
    `after_step(step, entry)` after_step."""

    def __init__(self, batch: Callable[[int, Images, Targets], tuple[Images, Targets]] | None = None,
                 after_step: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        self._batch, self._after_step = batch, after_step

    @property
    def changes_batch(self) -> bool:
        return self._batch is not None

    def before_step(self, step: int, images: Images, targets: Targets) -> tuple[Images, Targets]:
        return self._batch(step, images, targets) if self._batch is not None else (images, targets)

    def after_step(self, step: int, entry: dict[str, Any]) -> None:
        if self._after_step is not None:
            self._after_step(step, entry)
