"""What a round selects when its model kept no box (on some, or on every image), and the record of it.

A model trained too briefly, or on too few labels, may keep no detection above the score threshold.
A strategy that ranks detections then has nothing to rank. Instead of stopping the run (coreset's
"needs labelled_features") or silently drawing at random, every such round takes a defined fallback
and the round's selection metrics say so: `selection.fallback = {"strategy", "reason", ...}`
(history.round_history copies it into the round's row of results.json).

The fallbacks, by case:
- image level, a score-based strategy (least_confidence, entropy, localization_aware, coreset on
  detector features) for which no pool image has a box it can score: the batch is drawn uniformly
  at random (seeded); fallback strategy "random". Images without a box in a pool where some have
  one are not a fallback: they are the strategy's "empty" images (empty_share, then filling).
- image level, coreset, when the model kept no box on any pool image or on every labelled training
  image (so pool and labelled set have no common feature space): greedy k-center on the pretrained
  backbone's pooled image embedding (boxloop.predict.embedding, the space `typical` uses), from the
  labelled images' embeddings; fallback strategy "coreset_embedding". If that embedding cannot be
  computed, "random".
- image level, a strategy that weighs classes by the model's skill (class_difficulty, ppal,
  class_diverse) when no labelled image holds a box to measure it on: the skill is calibrated on the
  pool's predictions; fallback strategy "<name>_self_calibrated". ppal / class_diverse without box
  features (and no embedding given) take their first candidates without the diversity step and say
  so in their Selection.info: fallback strategy "<name>_uncertainty".
- box level, when no predicted box scores >= t_d on any pool image (the box pool is empty): whole
  random pool images are asked instead, as many as the budget's boxes at the labelled set's boxes
  per image (at least one); the image oracle answers and costs them; fallback "random_images".
- box level, coreset, when no labelled box has a feature (the model kept no box on the labelled
  images and no box was checked yet): k-center starts from a random first pick (farthest-first);
  fallback strategy "coreset", reason says so.

Written by hand: the cases and the records. Selection itself is strategies.select, features come
from inference.predict_paths (the round's model) or embedding.selection_features.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import numpy as np

if TYPE_CHECKING:
    from boxloop.loop.config import LoopConfig
    from boxloop.store import Project
    from boxloop.strategies import DetectionTable
    from boxloop.structures import Selection

log = logging.getLogger("boxloop.loop")

__all__ = ["coreset_inputs", "labelled_image_features", "class_skill_inputs", "box_coreset_centres",
           "box_pool_is_empty", "whole_images_instead",
           "ranked_nothing", "note"]


def note(strategy: str, reason: str, **extra: Any) -> dict[str, Any]:
    """The record a round keeps: which strategy actually chose, and why."""
    return {"strategy": strategy, "reason": reason, **extra}


def coreset_inputs(project: Project, round_id: int, config: LoopConfig, pool: DetectionTable
                   ) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(strategy to run, its options, fallback record or None) for image-level coreset."""

    pool_has = pool.features is not None and len(pool) > 0
    labelled = labelled_image_features(project, round_id, config) if pool_has else None
    if pool_has and labelled is not None:
        return "coreset", {"labelled_features": labelled}, None
    why = ("the model kept no box on any of the %d pool images" % pool.num_images if not pool_has
           else "the model kept no box on any labelled training image (no centres in the detector's feature space)")
    try:
        from boxloop.predict.embedding import selection_features

        feats = selection_features(project, pool.keys, config.training.device)
    except Exception as e:  # e.g. the pretrained backbone's weights are not installed
        return "random", {}, note("random", f"{why}; the backbone embedding failed too ({e}): drawn at random")
    return "coreset", feats, note("coreset_embedding", f"{why}: k-center on the pretrained backbone's image "
                                                       "embedding instead, from the labelled images' embeddings")


def labelled_image_features(project: Project, round_id: int, config: LoopConfig) -> np.ndarray | None:
    """Image features of labelled training images (mean box feature), the coreset's first centres."""
    from boxloop.loop.model import load_round_detector
    from boxloop.predict.inference import predict_paths

    root = project.image_root
    paths = list(project.annotations("train"))
    det = load_round_detector(project, round_id, config)
    feats = []
    for _, d in predict_paths(det, [root / p for p in paths], config.training.image_size,
                              batch_size=config.prediction.predict_batch_size, device=config.training.device,
                              score_threshold=config.prediction.score_threshold, progress=False):
        if d.features is not None and len(d):
            feats.append(d.features.mean(axis=0))
    return np.stack(feats) if feats else None


def class_skill_inputs(project: Project, round_id: int, config: LoopConfig, strategy: str
                       ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """({"class_skill": (C,)} or {}, fallback record or None) for a strategy that weighs classes by the
    model's skill on them: the round model's per-class quality on the labelled train and val images
    (strategies.labelled_class_quality, PPAL's p^xi x IoU^(1-xi) per object). With no labelled box
    the strategy calibrates on its pool predictions instead, and the round says so."""
    from boxloop.loop.model import load_round_detector
    from boxloop.predict.inference import predict_paths
    from boxloop.strategies import labelled_class_quality

    truth = {**project.annotations("train"), **project.annotations("val")}
    if not any(len(a.labels) for a in truth.values()):
        return {}, note(f"{strategy}_self_calibrated", "no labelled box to measure the model's per-class skill on: "
                                                       "calibrated on its pool predictions instead")
    keys = list(truth)
    index = {name: i for i, name in enumerate(project.classes)}
    det = load_round_detector(project, round_id, config)
    preds, gts = [], []
    for key, d in predict_paths(det, [project.image_root / k for k in keys], config.training.image_size,
                                batch_size=config.prediction.predict_batch_size, device=config.training.device,
                                score_threshold=config.prediction.score_threshold, progress=False, keys=keys):
        ann = truth[key]
        preds.append(d)
        gts.append((ann.boxes.xyxy, np.array([index[n] for n in ann.labels], np.int64)))
    return {"class_skill": labelled_class_quality(preds, gts, project.num_classes)}, None


def box_pool_is_empty(pool: DetectionTable, t_d: float, exclude: Sequence[tuple[Hashable, int]]) -> bool:
    from boxloop.strategies import box_pool

    try:
        box_pool(pool, t_d, exclude)
    except ValueError:
        return True
    return False


def whole_images_instead(project: Project, pool: DetectionTable, config: LoopConfig, rng: np.random.Generator
                         ) -> tuple[Selection, dict[str, Any]]:
    """Box level with an empty box pool: random whole images, as many as the budget's boxes buy."""
    from boxloop.loop.model import labelled_counts
    from boxloop.strategies import select

    counts = labelled_counts(project)
    per_image = counts["human_boxes"] / max(1, counts["images_labelled"])
    t_d, budget = config.selection.t_d, config.selection.budget
    n = int(min(pool.num_images, max(1, round(budget / max(per_image, 1.0)))))
    sel = select("random", pool, n, unit="images", rng=rng)
    return sel, note("random_images", f"no predicted box scores >= t_d={t_d} on any of the {pool.num_images} "
                                      f"pool images: {n} whole images asked instead ({budget} boxes at "
                                      f"{per_image:.1f} labelled boxes per image)", images=n)


def box_coreset_centres(project: Project, round_id: int, config: LoopConfig, pool: DetectionTable,
                        exclude: Sequence[tuple[Hashable, int]]) -> tuple[np.ndarray, dict[str, Any] | None]:
    """L_B for box-level coreset: the round model's box features on the labelled training images
    (score >= t_d), and the pool's boxes that overlap a box already checked (`exclude`)."""
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.model import load_round_detector

    dim = pool.features.shape[1] if pool.features is not None and pool.features.ndim == 2 else 0
    feats: list[np.ndarray] = []
    paths = list(project.annotations("train"))
    if paths:
        det = load_round_detector(project, round_id, config)
        root = project.image_root
        for _, d in predict_paths(det, [root / p for p in paths], config.training.image_size,
                                  batch_size=config.prediction.predict_batch_size, device=config.training.device,
                                  score_threshold=config.selection.t_d, progress=False):
            if d.features is not None and len(d):
                feats.append(np.asarray(d.features, np.float32))
    if exclude and pool.features is not None and len(pool):
        row = {k: i for i, k in enumerate(pool.keys)}
        want = {(row[k], int(b)) for k, b in exclude if k in row}
        mask = np.fromiter(((int(i), int(b)) in want for i, b in zip(pool.image_index, pool.box_index)), bool,
                           len(pool))
        if mask.any():
            feats.append(np.asarray(pool.features[mask], np.float32))
    if feats:
        return np.concatenate(feats), None
    return np.zeros((0, dim), np.float32), note(
        "coreset", "no labelled box has a feature (the model kept no box on the labelled images, none checked "
                   "yet): k-center from a random first pick")


def ranked_nothing(sel: Selection, pool: DetectionTable, strategy: str) -> dict[str, Any] | None:
    """A score-based image strategy that could score no pool image drew its whole batch at random."""
    from boxloop.strategies import DETECTOR_FREE

    if strategy in DETECTOR_FREE or sel.info.get("phase") == "typical" or sel.unit != "images":
        return None
    empty = sel.info.get("empty_images")
    if empty is None or empty < pool.num_images:
        return None
    return note("random", f"{strategy} could score none of the {pool.num_images} pool images (the model kept no box "
                          "its scores count): the batch was drawn at random (seeded)")
