"""label_efficiency.py's tables and issue 13's target checks, on the rows of report.learning_curve_table
with the shares of trainval and of each seed's full-data mAP50."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from protocol import markdown, pct

# issue 13's targets (the goals in brackets are reported, not required)
TARGETS = {"images": {"auc_above_random_every_seed": True, "map50_share": 0.95, "goal_share": 0.98,
                      "labelled_share": 0.50},
           "boxes": {"map50_share": 0.90, "goal_share": 0.95, "labelled_share": 0.40}}


def table_rows(results: Mapping[str, Any], full: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    from boxloop.report import learning_curve_table

    rows = learning_curve_table(results)
    ref = next(iter(full.values()), None)
    shares: dict[tuple[str, int], list[float]] = {}
    for run in results["runs"]:
        for row in run["rounds"]:
            if row.get("map50_share") is not None:
                shares.setdefault((run["strategy"], int(row["round"])), []).append(row["map50_share"])
    for r in rows:
        r["images_share"] = r["images_labelled"] / ref["trainval_images"] if ref else float("nan")
        r["boxes_share"] = r["boxes_labelled"] / max(1, ref["trainval_boxes"]) if ref else float("nan")
        v = shares.get((str(r["strategy"]), int(r["round"])), [])
        r["map50_share"] = float(np.mean(v)) if v else float("nan")
        r["map50_share_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: strategy x round with shares of trainval and of the full-data mAP50 (mean ± std), and
    the rare classes' mean AP50 when the runs name rare classes."""
    rare = any(np.isfinite(r.get("rare_ap50_mean", np.nan)) for r in rows)
    head = ["strategy", "round", "images (share)", "boxes (share)", "cost h", "mAP50 mean ± std", "% of full",
            *(["rare classes AP50"] if rare else []), "seeds"]

    def ms(m: float, s: float) -> str:
        return "-" if not np.isfinite(m) else f"{m:.3f} ± {s:.3f}"

    body = [[str(r["strategy"]), str(r["round"]), f"{r['images_labelled']:.1f} ({pct(r['images_share'])})",
             f"{r['boxes_labelled']:.0f} ({pct(r['boxes_share'])})", f"{r['cost_hours']:.2f}",
             ms(r["map50_mean"], r["map50_std"]),
             pct(r["map50_share"]) + ("" if not np.isfinite(r["map50_share_std"])
                                      else f" ± {100 * r['map50_share_std']:.1f}"),
             *([ms(r.get("rare_ap50_mean", np.nan), r.get("rare_ap50_std", np.nan))] if rare else []),
             str(r["evaluated"])] for r in rows]
    return markdown(head, body)


def share_at(rows: Sequence[Mapping[str, Any]], share_key: str, at: float) -> float | None:
    """One strategy's mean share of the full-data mAP50 at exactly `at` of trainval, read off its mean
    curve (linear between the rounds around it); None when the curve does not reach `at`."""
    pts = sorted((r[share_key], r["map50_share"]) for r in rows
                 if np.isfinite(r.get(share_key, np.nan)) and np.isfinite(r.get("map50_share", np.nan)))
    if not pts or pts[-1][0] < at - 1e-9 or pts[0][0] > at:
        return None
    x, y = map(np.array, zip(*pts))
    return float(np.interp(at, x, y))


def check_targets(rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any], unit: str, seeds: int
                  ) -> dict[str, Any]:
    """Issue 13's targets on the mean-over-seeds curves and the per-seed AUCs."""
    target = TARGETS[unit]
    share_key = "images_share" if unit == "images" else "boxes_share"
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["strategy"]), []).append(r)
    out: dict[str, Any] = {"unit": unit, "seeds": seeds, "enough_seeds": seeds >= 3, **target, "strategies": {}}
    for s, rs in by.items():
        within = [r for r in rs if r[share_key] <= target["labelled_share"] + 1e-9 and np.isfinite(r["map50_share"])]
        best = max((r["map50_share"] for r in within), default=None)
        e = stats["strategies"].get(s, {})
        d = (e.get("minus_baseline") or {}).get("auc_labelled")
        out["strategies"][s] = {
            "best_share_within_budget": best,
            "share_at_budget": share_at(rs, share_key, target["labelled_share"]),
            "auc_above_random_on": None if not d else d["above_on"], "auc_seeds": None if not d else d["seeds"],
            "auc_minus_random_mean": None if not d else d["mean"], "auc_minus_random_std": None if not d else d["std"]}
    for s, c in out["strategies"].items():
        reach = max((v for v in (c["best_share_within_budget"], c["share_at_budget"]) if v is not None), default=None)
        c["share_met"] = reach is not None and reach >= target["map50_share"]
        c["goal_met"] = reach is not None and reach >= target["goal_share"]
        if unit == "images":
            c["auc_above_random_every_seed"] = (s != "random" and c["auc_seeds"] is not None
                                                and c["auc_seeds"] == seeds and c["auc_above_random_on"] == seeds)
            c["met"] = bool(c["share_met"] and c["auc_above_random_every_seed"] and seeds >= 3)
        else:
            c["met"] = bool(c["share_met"] and seeds >= 3)
    out["met"] = any(c["met"] for c in out["strategies"].values())
    out["met_by"] = [s for s, c in out["strategies"].items() if c["met"]]
    return out


def describe(check: Mapping[str, Any]) -> str:
    unit = check["unit"]
    what = "images" if unit == "images" else "boxes"
    lines = [f"targets ({unit}): {'MET by ' + ', '.join(check['met_by']) if check['met'] else 'NOT met'}"
             + ("" if check["enough_seeds"] else f" [only {check['seeds']} seed(s): the issue asks for >= 3]")]
    for s, c in check["strategies"].items():
        f = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        part = (f"  {s}: share of full-data mAP50 with <= {100 * check['labelled_share']:.0f}% of trainval {what}: "
                f"best round {f(c['best_share_within_budget'])}, at exactly {100 * check['labelled_share']:.0f}% "
                f"{f(c['share_at_budget'])} (target {100 * check['map50_share']:.0f}%, goal {100 * check['goal_share']:.0f}%)")
        if unit == "images" and s != "random" and c["auc_seeds"]:
            part += (f"; AUC - random {c['auc_minus_random_mean']:+.3f}"
                     + ("" if c["auc_minus_random_std"] is None else f" ± {c['auc_minus_random_std']:.3f}")
                     + f", above on {c['auc_above_random_on']}/{c['auc_seeds']} seeds")
        lines.append(part)
    return "\n".join(lines)
