"""The strategy registry: every strategy with what it needs of a round, and what stands in for it when
the round's model gives it nothing to rank.

The loop reads these declarations and names no strategy (loop/round.py step_select, loop/fallback.py),
so adding a strategy touches only strategies/: write its function, add its entry below. The fallbacks
themselves (which images, the record of why) are the loop's: it knows the project and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from boxloop.strategies.box import coreset_boxes, least_confidence_boxes, random_boxes
from boxloop.strategies.classaware import class_difficulty
from boxloop.strategies.image import coreset, entropy, least_confidence, localization_aware, random_images
from boxloop.strategies.ppal import class_diverse, ppal
from boxloop.strategies.table import DetectionTable
from boxloop.strategies.typical import budget_aware, typical
from boxloop.structures import Selection

__all__ = ["Strategy", "IMAGE_STRATEGIES", "BOX_STRATEGIES", "STRATEGIES", "registered", "DEFAULT_STRATEGY",
           "COLD_START_STRATEGY", "SEED_SET_STRATEGY", "INITIAL_STRATEGIES"]


@dataclass(frozen=True)
class Strategy:
    """One registry entry: `fn(table, budget, rng, **options) -> Selection` and its needs.

    needs_model: needs a trained model at all (False: it can choose before any training, the cold
      start's and a simulated seed set's choices).
    predictions: reads the round model's stored predictions of the pool (False: the pool's image
      list is all it takes). random reads them though it needs no model: it draws among the images
      the round predicted on, the pool every strategy of the round sees.
    features: the per-box detector features of the pool's predictions.
    feature_centres: and the labelled set's features as the first centres (coreset); at image level
      the loop gives the pretrained embedding instead when the model kept no feature.
    embedding: the pretrained backbone's pooled embedding of pool and labelled images
      (`image_features`, `labelled_features`: boxloop.predict.embedding).
    per_class_scores: ranks the class-probability vectors of the boxes.
    class_skill: takes `class_skill`, the round model's per-class quality on the labelled images
      (classaware.labelled_class_quality; with no labelled box the strategy calibrates itself).
    empty_share: takes `empty_share`, the share of the batch drawn among images with no scorable box.
    fallback: the image-level strategy that chooses, seeded, when the model kept no box this one
      can rank (box level: whole images); None when it needs no box.
    phases: a hybrid's phases in order, as its Selection.info["phase"] names them.
    """

    name: str
    unit: str
    fn: Callable[..., Selection]
    needs_model: bool = True
    predictions: bool = True
    features: bool = False
    feature_centres: bool = False
    embedding: bool = False
    per_class_scores: bool = False
    class_skill: bool = False
    empty_share: bool = False
    fallback: str | None = "random"
    phases: tuple[str, ...] = ()

    def __call__(self, table: DetectionTable, budget: int | None, rng: np.random.Generator | int | None = None,
                 **options: Any) -> Selection:
        return self.fn(table, budget, rng, **options)


def _entries(*entries: Strategy) -> dict[str, Strategy]:
    return {e.name: e for e in entries}


IMAGE_STRATEGIES = _entries(
    Strategy("random", "images", random_images, needs_model=False, fallback=None),
    Strategy("least_confidence", "images", least_confidence, per_class_scores=True, empty_share=True),
    Strategy("entropy", "images", entropy, per_class_scores=True, empty_share=True),
    Strategy("localization_aware", "images", localization_aware, per_class_scores=True, empty_share=True),
    Strategy("coreset", "images", coreset, features=True, feature_centres=True, empty_share=True),
    Strategy("typical", "images", typical, needs_model=False, predictions=False, embedding=True, fallback=None),
    Strategy("budget_aware", "images", budget_aware, embedding=True, per_class_scores=True, empty_share=True,
             phases=("typical", "localization_aware")),
    Strategy("class_difficulty", "images", class_difficulty, per_class_scores=True, class_skill=True,
             empty_share=True),
    Strategy("ppal", "images", ppal, features=True, per_class_scores=True, class_skill=True, empty_share=True),
    Strategy("class_diverse", "images", class_diverse, features=True, per_class_scores=True, class_skill=True,
             empty_share=True),
)
BOX_STRATEGIES = _entries(
    Strategy("random", "boxes", random_boxes, needs_model=False),
    Strategy("least_confidence", "boxes", least_confidence_boxes, per_class_scores=True),
    Strategy("coreset", "boxes", coreset_boxes, features=True, feature_centres=True),
)
STRATEGIES = {"images": IMAGE_STRATEGIES, "boxes": BOX_STRATEGIES}

DEFAULT_STRATEGY = "localization_aware"  # the loop's, when none is given
COLD_START_STRATEGY = "typical"  # a project with no model and no label: needs neither
SEED_SET_STRATEGY = "random"  # how simulate draws its seed set unless told otherwise
# what simulate may choose its seed set with: the image strategies that need no model
INITIAL_STRATEGIES = tuple(name for name, e in IMAGE_STRATEGIES.items() if not e.needs_model)


def registered(name: str, unit: str = "images") -> Strategy:
    """The entry of strategy `name` at `unit` level; a ValueError naming the choices otherwise."""
    if unit not in STRATEGIES:
        raise ValueError(f"unit must be 'images' or 'boxes', got {unit!r}")
    registry = STRATEGIES[unit]
    if name not in registry:
        level = "image" if unit == "images" else "box"
        raise ValueError(f"unknown {level}-level strategy {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]
