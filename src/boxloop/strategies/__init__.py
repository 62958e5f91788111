"""Active-learning strategies: which images (or single boxes) to ask the annotator about.

Two plain registries, one per query unit (DESIGN.md: one dict per extension point):
`IMAGE_STRATEGIES` (random, least_confidence, entropy, localization_aware, coreset, typical,
budget_aware, class_difficulty, ppal, class_diverse) and
`BOX_STRATEGIES` (random, least_confidence, coreset). Each entry is
`fn(table, budget, rng, **options) -> Selection`. `select()` is the one entry point the loop, the
CLI and users' scripts call:

    sel = select("localization_aware", detections_by_key, budget=500, rng=0)
    sel = select("least_confidence", table, budget=1000, unit="boxes", t_d=0.1)

`typical` and `budget_aware` take an embedding of every image (`image_features`,
`labelled_features`: boxloop.predict.embedding), and `typical` needs no detection at all: it picks the cold
start's first batch. NEEDS_EMBEDDING / DETECTOR_FREE name them for the loop; NEEDS_FEATURES the
strategies that read the detector's per-box features (coreset, ppal, class_diverse), EMPTY_SHARE those
that take `empty_share`, NEEDS_CLASS_SKILL those that take `class_skill` (the round model's per-class
quality on the labelled images, classaware.labelled_class_quality). A strategy that falls back by
itself says so in Selection.info["fallback"].

Written by hand: registries and dispatch. See table.py / image.py / box.py / coreset.py / typical.py /
classaware.py / ppal.py.

Owns: the registry and the strategies. May import: the root modules (structures).
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np

from boxloop.strategies.box import BOX_STRATEGIES, T_D, box_pool
from boxloop.strategies.classaware import class_difficulty, labelled_class_quality
from boxloop.strategies.common import (
    entropy_scores,
    least_confidence_scores,
    localization_scores,
)
from boxloop.strategies.coreset import k_center_greedy
from boxloop.strategies.image import (LOW_THRESHOLD, PER_CLASS, class_thresholds, coreset, entropy, least_confidence,
                                      localization_aware, random_images)
from boxloop.strategies.ppal import class_diverse, ppal
from boxloop.strategies.table import DetectionTable
from boxloop.strategies.typical import budget_aware, coverage, kmeans, typical, typicality
from boxloop.structures import Detections, Selection

__all__ = [
    "IMAGE_STRATEGIES",
    "BOX_STRATEGIES",
    "STRATEGIES",
    "DetectionTable",
    "select",
    "box_pool",
    "class_thresholds",
    "k_center_greedy",
    "kmeans",
    "typicality",
    "coverage",
    "NEEDS_EMBEDDING",
    "DETECTOR_FREE",
    "NEEDS_FEATURES",
    "EMPTY_SHARE",
    "NEEDS_CLASS_SKILL",
    "labelled_class_quality",
    "least_confidence_scores",
    "entropy_scores",
    "localization_scores",
    "T_D",
    "LOW_THRESHOLD",
    "PER_CLASS",
]

IMAGE_STRATEGIES = {
    "random": random_images,
    "least_confidence": least_confidence,
    "entropy": entropy,
    "localization_aware": localization_aware,
    "coreset": coreset,
    "typical": typical,  # needs no detections: pooled backbone features (strategies/typical.py)
    "budget_aware": budget_aware,  # typical, then localization_aware once the pool is covered
    "class_difficulty": class_difficulty,  # shares toward the hardest classes (classaware.py)
    "ppal": ppal,  # difficulty-calibrated uncertainty, then k-means++ diversity (ppal.py)
    "class_diverse": class_diverse,  # class_difficulty's candidates, then ppal's diversity (ppal.py)
}
STRATEGIES = {"images": IMAGE_STRATEGIES, "boxes": BOX_STRATEGIES}
NEEDS_EMBEDDING = frozenset({"typical", "budget_aware"})  # take image_features / labelled_features
DETECTOR_FREE = frozenset({"random", "typical"})  # choose without any prediction (the cold start)
# read Detections.features (the stored predictions load them)
NEEDS_FEATURES = frozenset({"coreset", "ppal", "class_diverse"})
EMPTY_SHARE = frozenset({"localization_aware", "least_confidence", "entropy", "coreset", "budget_aware",
                         "class_difficulty", "ppal", "class_diverse"})  # take empty_share
# take class_skill (C,): the round model's per-class quality on the labelled images
NEEDS_CLASS_SKILL = frozenset({"class_difficulty", "ppal", "class_diverse"})


def select(
    name: str,
    pool: Mapping[Hashable, Detections] | DetectionTable,
    budget: int | None,
    unit: str = "images",
    rng: np.random.Generator | int | None = None,
    **options,
) -> Selection:
    """Run strategy `name` at `unit` level over the unlabelled pool's predictions.

    `pool`: image key -> Detections (images with no detection included: they are part of the pool)
    or a prebuilt DetectionTable. `budget`: images or boxes to query (None only for
    localization_aware: every image its thresholds qualify, as LocAwareAL does). `rng`: a Generator
    or a seed. `options` go to the strategy (e.g. aggregate="max", empty_share=0.1,
    labelled_features=..., t_d=0.1, exclude=[(key, box_index), ...]).
    """
    if unit not in STRATEGIES:
        raise ValueError(f"unit must be 'images' or 'boxes', got {unit!r}")
    registry = STRATEGIES[unit]
    if name not in registry:
        level = "image" if unit == "images" else "box"
        raise ValueError(f"unknown {level}-level strategy {name!r}; choose one of: {', '.join(registry)}")
    table = pool if isinstance(pool, DetectionTable) else DetectionTable.from_detections(pool)
    if table.num_images == 0:
        raise ValueError(f"{name}: the pool is empty (no unlabelled images to select from)")
    return registry[name](table, budget, rng, **options)
