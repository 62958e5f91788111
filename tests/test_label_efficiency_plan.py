"""benchmarks/label_efficiency.py without training: the cpu preset's plan and its arithmetic, the
sharding, and the target checks on hand-made rows (issue 13, deliverable 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import label_efficiency as le  # noqa: E402

BCCD = le.Sizes(trainval=292, test=72, boxes_per_image=3941 / 292)


def args(*extra: str):
    return le.parse(["--preset", "cpu", *extra])


def test_cpu_preset_meets_the_issue():
    a = args()
    assert a.model == "fcos_lite" and len(a.seed_list) >= 3 and a.warm_start
    assert set(le.strategies_of(a, "images")) == {"random", "least_confidence", "entropy", "localization_aware",
                                                  "coreset"}
    assert set(le.strategies_of(a, "boxes")) == {"random", "least_confidence", "coreset"}
    assert a.initial == 20 and a.initial + a.rounds * a.budget >= 0.5 * BCCD.trainval  # 146 of 292
    seed_set_boxes = 230  # a small random seed set of 20 BCCD images (about 265 on average)
    assert seed_set_boxes + a.box_rounds * a.box_budget >= 0.4 * BCCD.trainval * BCCD.boxes_per_image
    cfg = le.loop_config(a)
    t = cfg.training
    assert t.epochs is None and t.steps == 200 and t.warm_steps == 80 and t.val_every > t.steps


def test_plan_counts_and_estimate_fit_90_minutes_on_two_cores():
    a = args()
    a.shard_count = 2
    est = le.estimate(a, BCCD)
    assert est["jobs"] == 3 * (1 + 5 + 3 + 1)
    assert est["trainings"] == 3 * (1 + 5 * 6 + 3 * 4 + 1) == 132
    assert est["full_data_steps"] == 200 + 6 * 80
    assert est["steps"] == 3 * (200 + 5 * 6 * 80 + 3 * 4 * 80 + 680) == 12720
    assert est["wall_minutes"] <= 80 and len(est["minutes_per_shard"]) == 2
    # without warm start every round trains from scratch: more steps, and the full data model as long as one
    cold = args("--no-warm-start")
    assert le.full_steps(cold) == 200 and le.estimate(cold, BCCD)["steps"] > est["steps"]


def test_job_cost_arithmetic():
    a = args()
    c = le.job_cost(le.Job("base", 0), a, BCCD, step_s=1.0, pred_s=0.1, save_s=0.5)
    # 200 steps, 16 training images = 2 steps an epoch -> 100 saves; validation 4 + test 72 predictions
    assert c["steps"] == 200 and c["saves"] == 100 and c["predictions"] == pytest.approx(0.2 * 20 + 72)
    assert c["seconds"] == pytest.approx(200 + 0.1 * 76 + 50 + le.ROUND_OVERHEAD_SECONDS)
    r = le.job_cost(le.Job("run", 0, "images", "random"), a, BCCD, 1.0, 0.0, 0.0)
    assert r["steps"] == 6 * 80 and r["trainings"] == 6


def test_shards_cover_every_job_once_and_start_with_their_bases():
    a = args()
    jobs = le.plan(a)
    costs = {j: le.job_cost(j, a, BCCD, 0.554, 0.034)["seconds"] for j in jobs}
    shards = le.assign(jobs, costs, 2)
    flat = [j for s in shards for j in s]
    assert sorted(j.name for j in flat) == sorted(j.name for j in jobs)
    assert [j.seed for j in shards[0] if j.kind == "base"] == [0, 2]
    assert [j.seed for j in shards[1] if j.kind == "base"] == [1]
    for s in shards:
        kinds = [j.kind for j in s]
        assert kinds[:kinds.count("base")] == ["base"] * kinds.count("base")
    loads = [sum(costs[j] for j in s) for s in shards]
    assert max(loads) / min(loads) < 1.1
    assert le.assign(jobs, costs, 2) == shards  # deterministic: every shard computes the same split


def _rows(strategy, shares_images, shares_map):
    return [{"strategy": strategy, "round": i, "images_share": x, "boxes_share": x, "map50_share": m}
            for i, (x, m) in enumerate(zip(shares_images, shares_map))]


def test_share_at_reads_the_mean_curve_between_rounds():
    rows = _rows("random", [0.3, 0.4, 0.45], [0.8, 0.88, 0.92])
    assert le.share_at(rows, "boxes_share", 0.4) == pytest.approx(0.88)
    assert le.share_at(rows, "boxes_share", 0.425) == pytest.approx(0.90)
    assert le.share_at(rows, "boxes_share", 0.5) is None


def test_check_targets_images_needs_auc_above_random_on_every_seed():
    x = [20 / 292, 83 / 292, 146 / 292]
    rows = _rows("random", x, [0.6, 0.85, 0.93]) + _rows("least_confidence", x, [0.6, 0.9, 0.96])
    stats = {"strategies": {"random": {}, "least_confidence": {"minus_baseline": {"auc_labelled": {
        "above_on": 3, "seeds": 3, "mean": 0.02, "std": 0.01}}}}}
    check = le.check_targets(rows, stats, "images", 3)
    assert check["met"] and check["met_by"] == ["least_confidence"]
    assert not check["strategies"]["random"]["met"]  # random cannot beat itself
    stats["strategies"]["least_confidence"]["minus_baseline"]["auc_labelled"]["above_on"] = 2
    assert not le.check_targets(rows, stats, "images", 3)["met"]
    assert not le.check_targets(rows, {"strategies": {}}, "images", 3)["met"]
    assert "NOT met" in le.describe(le.check_targets(rows, {"strategies": {}}, "images", 2))
