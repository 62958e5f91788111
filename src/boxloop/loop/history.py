"""What the rounds so far say: one row per evaluated round, and when to stop asking for labels.

Written by hand (numpy only): `round_history`, the per-round rows with cumulative annotation cost
(the seed set counted as drawn boxes, `oracle.DRAW_SECONDS` each) read from the store's metrics,
and `StopRule`, a label budget, a target mAP50 or a plateau of the learning curve. The forecast
(boxloop.loop.forecast), the reports and the benchmarks read these rows; boxloop.loop.round re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.loop.oracle import DRAW_SECONDS, Cost
from boxloop.store import Project


@dataclass(frozen=True)
class StopRule:
    """When more labels stop paying off: a label budget, a target mAP50, or a plateau."""

    max_images: int | None = None
    max_boxes: int | None = None
    target_map50: float | None = None
    plateau_delta: float | None = None  # gain in mAP50 below this ...
    plateau_rounds: int = 2  # ... for this many rounds in a row

    def reason(self, history: Sequence[Mapping[str, Any]]) -> str | None:
        if not history:
            return None
        last = history[-1]
        if self.target_map50 is not None and (last.get("map50") or 0) >= self.target_map50:
            return f"target mAP50 {self.target_map50} reached ({last.get('map50'):.3f})"
        if self.max_images is not None and last.get("images_labelled", 0) >= self.max_images:
            return f"image budget {self.max_images} spent"
        if self.max_boxes is not None and last.get("boxes_labelled", 0) >= self.max_boxes:
            return f"box budget {self.max_boxes} spent"
        if self.plateau_delta is not None and len(history) > self.plateau_rounds:
            maps = [h.get("map50") or 0.0 for h in history]
            gains = np.diff(maps[-(self.plateau_rounds + 1):])
            if np.all(gains < self.plateau_delta):
                return (f"learning curve flat: mAP50 gained less than {self.plateau_delta} in each of the last "
                        f"{self.plateau_rounds} rounds")
        return None


def round_history(project: Project) -> list[dict[str, Any]]:
    """One row per evaluated round, with cumulative annotation cost (the seed set counted as drawn)."""
    metrics = project.metrics()
    rows = []
    cum = Cost()
    evaluated = [r for r in sorted(metrics) if "images_labelled" in metrics[r]]
    for r in evaluated:
        m = metrics[r]
        if r == evaluated[0]:
            initial = m.get("human_boxes", 0)
            cum = Cost(images=m["images_labelled"], boxes_drawn=initial, seconds=initial * DRAW_SECONDS)
        row = {"round": r, "images_labelled": m["images_labelled"], "boxes_labelled": cum.boxes_labelled,
               "cost_seconds": round(cum.seconds, 1), "map50": m.get("map50"), "coco_ap": m.get("coco_ap"),
               "ap50": m.get("ap50"), "ap75": m.get("ap75"), "per_class": m.get("per_class", {}),
               "labelled_per_class": m.get("labelled_per_class", {})}
        sel = m.get("selection") or {}
        if sel.get("thresholds"):
            row["thresholds"] = sel["thresholds"]
        if "phase" in sel:  # budget_aware: which strategy chose this round's query, and why
            row["phase"], row["coverage"] = sel["phase"], sel.get("coverage")
        for k in ("pseudo_images", "pseudo_boxes", "train_steps", "warm_start_from"):
            if k in m:
                row[k] = m[k]
        if "pseudo_guard" in m:  # never worse: were the pseudo-labels this round trained on kept, and why
            row["pseudo_kept"], row["pseudo_guard"] = m["pseudo_guard"]["kept"], m["pseudo_guard"]["reason"]
        if sel.get("fallback"):  # how this round's query was chosen when its model kept no box (fallback.py)
            row["fallback"] = sel["fallback"]
        rows.append(row)
        if "cost" in m:
            cum = cum + Cost(**m["cost"])
    return rows
