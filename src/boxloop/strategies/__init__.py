"""Active-learning strategies: which images (or single boxes) to ask the annotator about.

Two registries, one per query unit (registry.py): `IMAGE_STRATEGIES` (random, least_confidence,
entropy, localization_aware, coreset, typical, budget_aware, class_difficulty, ppal, class_diverse)
and `BOX_STRATEGIES` (random, least_confidence, coreset). Each entry is a `Strategy`: the function
`fn(table, budget, rng, **options) -> Selection` and what it needs of a round (a model at all, the
stored predictions, detector features, the pretrained embedding, per-class scores, the model's
per-class skill) and its fallback. The loop reads those and names no strategy. `select()` is the one
entry point the loop, the CLI and users' scripts call:

    sel = select("localization_aware", detections_by_key, budget=500, rng=0)
    sel = select("least_confidence", table, budget=1000, unit="boxes", t_d=0.1)

`typical` and `budget_aware` take an embedding of every image (`image_features`,
`labelled_features`: boxloop.predict.embedding), and `typical` needs no detection at all: it picks the cold
start's first batch. A strategy that falls back by itself says so in Selection.info["fallback"].

Written by hand: registries and dispatch. See table.py / image.py / box.py / coreset.py / typical.py /
classaware.py / ppal.py.

Owns: the registry and the strategies. May import: the root modules (structures).
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np

from boxloop.strategies.box import T_D, box_pool
from boxloop.strategies.classaware import labelled_class_quality
from boxloop.strategies.common import (
    entropy_scores,
    least_confidence_scores,
    localization_scores,
)
from boxloop.strategies.coreset import k_center_greedy
from boxloop.strategies.image import LOW_THRESHOLD, PER_CLASS, class_thresholds
from boxloop.strategies.table import DetectionTable
from boxloop.strategies.registry import (BOX_STRATEGIES, COLD_START_STRATEGY, DEFAULT_STRATEGY, IMAGE_STRATEGIES,
                                         INITIAL_STRATEGIES, SEED_SET_STRATEGY, STRATEGIES, Strategy, registered)
from boxloop.strategies.typical import coverage, kmeans, typicality
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
    "Strategy",
    "registered",
    "DEFAULT_STRATEGY",
    "COLD_START_STRATEGY",
    "SEED_SET_STRATEGY",
    "INITIAL_STRATEGIES",
    "labelled_class_quality",
    "least_confidence_scores",
    "entropy_scores",
    "localization_scores",
    "T_D",
    "LOW_THRESHOLD",
    "PER_CLASS",
]


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
    strategy = registered(name, unit)
    table = pool if isinstance(pool, DetectionTable) else DetectionTable.from_detections(pool)
    if table.num_images == 0:
        raise ValueError(f"{name}: the pool is empty (no unlabelled images to select from)")
    return strategy(table, budget, rng, **options)
