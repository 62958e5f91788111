"""The first batch of a project that has nothing to learn from yet.

A fresh project (images, no labels, no model) used to fail at `boxloop query`: the round starts by
training, and there is nothing to train on. Every user starts there, at the smallest budget, where
typical images pay most (Hacohen et al., ICML 2022; strategies/typical.py). So `query` on such a
project opens the round at its `select` step with the `typical` strategy, which needs only the
pretrained backbone's embedding, and the batch goes out without pre-annotations. The answers are
imported as usual; the next `query` trains on them.

Written by hand: the rule and the round bookkeeping; the selection is loop.step_select.
"""

from __future__ import annotations

from boxloop.loop.config import LoopConfig
from boxloop.loop.model import labelled_counts, model_dir
from boxloop.store import Project

__all__ = ["needs_cold_start", "open_select_round"]


def needs_cold_start(project: Project) -> bool:
    """No model to query with and no labelled image to train one on."""
    ckpt = project.get_path_meta("current_checkpoint")
    if ckpt is not None and ckpt.exists():
        return False
    if any((model_dir(project, r.id) / "best.pt").exists() for r in project.rounds()):
        return False
    return labelled_counts(project)["images_labelled"] == 0


def open_select_round(project: Project, config: LoopConfig, round_id: int) -> LoopConfig:
    """Round `round_id` set to start at `select` with `typical` (no train, evaluate or predict).
    Returns the config the round runs with."""
    cfg = config.with_(strategy="typical", unit="images")
    rnd = project.round(round_id)
    if rnd is None:
        project.start_round(cfg.to_dict(), step="select", round_id=round_id)
    elif rnd.step in ("train", "evaluate", "predict"):  # an earlier attempt that could not train
        project.update_round(round_id, step="select")
    return cfg
