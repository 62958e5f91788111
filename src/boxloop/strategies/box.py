"""Box-level strategies (FineGrainedAL): query K single predicted boxes instead of whole images.

The box pool U_B is every prediction on the unlabelled images with score >= t_d (FineGrainedAL eq. 1),
minus the boxes already checked (`exclude`). FineGrainedAL gives no value for t_d, only "low, for high
recall"; our default [0.1] is a choice (detectors here predict down to 0.05). Each strategy is
`fn(table, budget, rng, **options) -> Selection(unit="boxes", items=((key, box_index), ...))`,
registered in registry.py; box_index indexes the image's Detections as predicted.

- random: uniform over U_B.
- least_confidence: the K boxes with the lowest max class probability (highest 1 - P).
- coreset: greedy k-center on box features (FineGrainedAL used Faster R-CNN's FC2 features), starting
  from the labelled boxes' features L_B.

Written by hand; numpy does the arithmetic, k-center lives in coreset.py.
"""

from __future__ import annotations

from typing import Hashable, Iterable

import numpy as np

from boxloop.strategies.common import as_rng, check_budget, least_confidence_scores, require_field, shortfall
from boxloop.strategies.coreset import auto_device, k_center_greedy
from boxloop.strategies.table import DetectionTable
from boxloop.structures import Selection

__all__ = ["T_D", "box_pool", "random_boxes", "least_confidence_boxes", "coreset_boxes"]

T_D = 0.1  # box-pool threshold t_d (FineGrainedAL eq. 1 names it, gives no value)


def box_pool(table: DetectionTable, t_d: float = T_D, exclude: Iterable[tuple[Hashable, int]] = (),
             strategy: str = "box pool") -> np.ndarray:
    """Row indices of U_B: score >= t_d and not already checked. Raises when U_B is empty."""
    mask = table.scores >= t_d
    exclude = list(exclude)
    if exclude and len(table):
        pos = {k: i for i, k in enumerate(table.keys)}
        width = int(table.box_index.max()) + 1
        codes = np.array([pos[k] * width + int(b) for k, b in exclude if k in pos and 0 <= int(b) < width],
                         dtype=np.int64)
        mask &= ~np.isin(table.image_index * width + table.box_index, codes)
    rows = np.flatnonzero(mask)
    if rows.shape[0] == 0:
        raise ValueError(
            f"{strategy}: the box pool is empty: no unchecked predicted box scores >= t_d={t_d} on "
            f"{table.num_images} images. Lower t_d, or predict the pool again with a lower score threshold."
        )
    return rows


def _selection(name: str, table: DetectionTable, rows: np.ndarray, scores: np.ndarray, budget: int,
               info: dict) -> Selection:
    shortfall(name, "boxes", budget, rows.shape[0], info)
    return Selection(
        strategy=name,
        unit="boxes",
        items=tuple((table.keys[i], int(b)) for i, b in zip(table.image_index[rows], table.box_index[rows])),
        scores=tuple(float(s) for s in scores),
        info=info,
    )


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (argpartition, then sort only those k)."""
    if k < values.shape[0]:
        part = np.argpartition(-values, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
        return part[np.lexsort((part, -values[part]))]
    return np.argsort(-values, kind="stable")


def random_boxes(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                 t_d: float = T_D, exclude: Iterable[tuple[Hashable, int]] = ()) -> Selection:
    """K boxes drawn uniformly from U_B."""
    budget = check_budget(budget, "random")
    rows = box_pool(table, t_d, exclude, "random")
    pick = as_rng(rng).permutation(rows)[:budget]
    return _selection("random", table, pick, np.zeros(pick.shape[0]), budget, {"t_d": t_d, "pool": int(rows.shape[0])})


def least_confidence_boxes(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                           t_d: float = T_D, exclude: Iterable[tuple[Hashable, int]] = ()) -> Selection:
    """The K boxes of U_B whose most likely class is least likely (score 1 - max P)."""
    budget = check_budget(budget, "least_confidence")
    rows = box_pool(table, t_d, exclude, "least_confidence")
    u = least_confidence_scores(table)[rows]
    order = _top(u, budget)
    return _selection("least_confidence", table, rows[order], u[order], budget,
                      {"t_d": t_d, "pool": int(rows.shape[0])})


def coreset_boxes(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                  labelled_features: np.ndarray | None = None, t_d: float = T_D,
                  exclude: Iterable[tuple[Hashable, int]] = (), device: str | None = "auto") -> Selection:
    """Greedy k-center over the box features of U_B, starting from the labelled boxes' features."""
    budget = check_budget(budget, "coreset")
    require_field(table, "features", "coreset")
    if labelled_features is None:
        raise ValueError(
            "coreset needs labelled_features=(L, D) array: the features of the boxes already labelled "
            f"(L_B), used as the first centres (pass np.zeros((0, {table.features.shape[1]})) to start from nothing)"
        )
    rows = box_pool(table, t_d, exclude, "coreset")
    picks, dists = k_center_greedy(table.features[rows], budget, np.asarray(labelled_features), as_rng(rng),
                                   auto_device(device))
    return _selection("coreset", table, rows[picks], dists, budget,
                      {"t_d": t_d, "pool": int(rows.shape[0]), "labelled_centres": int(len(labelled_features))})
