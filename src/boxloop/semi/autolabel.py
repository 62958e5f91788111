"""Iterative self-training, TSODA (TSODA): train, auto-label what the model is sure of, repeat.

Each iteration i = 1, 2, ...:

    train     on the human train images plus the auto-labelled images in 'train' (round_model.training_samples),
              validated on the human val images; PROJECT/models/autolabel_{i:03d}, started from
              iteration i-1's best weights (TSODA reloads its checkpoint); the steps follow
              TSODA's schedule (2,500, +1,500 per iteration, at most 8,500) scaled to the dataset
    evaluate  mAP50 on the project's fixed test set, and separately on the auto-labelled test share
              ("pseudo test", TSODA measures its model on such a share); the two are never mixed
    label     predict on the unlabelled images (status 'unlabelled', no split, no pseudo box yet);
              every image with a detection above the threshold gets those detections as pseudo boxes
              (score and loc_quality kept in the provenance columns, weight 1); the new images are split
              train/test [80/20]; the iteration's row is recorded

until the iteration limit, an empty pool, or an iteration that labels nothing new. An iteration
that empties the pool is followed by one more that trains on what it labelled (and labels nothing):
without it the last auto-labels, often all of them when a good model labels the whole pool at once,
would never train a model.

The threshold: a number, or "auto": each iteration's model predicts the human validation images,
its detections are matched to their labels (evaluate.voc_matches), and the lowest threshold (0.01
steps) whose validation precision reaches `target_precision` [0.9] is used
(pseudo.threshold_for_precision); no such threshold: nothing is labelled and the run stops, saying
so. Every row records the threshold used, its validation precision and what the pool's scores looked
like (percentiles). An iteration that labels nothing says the 90th/99th percentiles of the scores
and suggests a threshold: the "auto" one when validation has one below the threshold given, else
the 99th percentile (about the top 1% of the pool's boxes).

`initial_checkpoint`: iteration 1 uses this model (e.g. an existing supervised teacher) instead of
training one; it is copied into iteration 1's folder. Later iterations start from it (`warm_start`).

Where the auto-labelled test share lives: its images get split 'val' (the store allows only
test/train/val) and their paths are listed in the meta key `autolabel_pseudo_test`. 'val' keeps them
out of everything that trains (`round_model.training_samples` skips pseudo images in val/test), out of the
active-learning pool (`loop.pool_paths`) and out of the fixed test set: `annotations('test')` and
`annotations('val')` return human-labelled images only, and a human correcting such an image turns it
into an ordinary validation image, never a test image.

Resuming: the project metrics of round 0, key `autolabel_state`, hold the next iteration, its phase
and what the earlier phases measured (the finished rows are under key `autolabel`); training resumes
from its last.pt; the pseudo boxes, splits, row and phase change of an iteration land in ONE
transaction. Re-running skips finished iterations, and on CPU gives the same rows (seconds aside) as
an uninterrupted run.

Written by hand here: the iteration order, the step defaults, the resume bookkeeping and the
autolabel.json table. Everything else is delegated: training to `train.fit`, prediction to
`inference.predict_paths`, acceptance, split and schedule to `pseudo`, mAP to `evaluate` (via
`round_model.test_metrics` for the fixed test set), storage to `store.Project`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.semi import pseudo
from boxloop.semi.autolabel_config import AutolabelConfig
from boxloop.store import Project
from boxloop.structures import Source

__all__ = ["autolabel", "autolabel_pool", "iteration_steps", "model_dir",
           "threshold_guidance", "PSEUDO_TEST_META",
           "STATE_KEY", "ROWS_KEY", "RESULT_FILE", "METRICS_ROUND"]

log = logging.getLogger("boxloop.autolabel")

METRICS_ROUND = 0  # the metrics row that holds the auto-labelling table and state
ROWS_KEY = "autolabel"  # list of per-iteration rows (read by report/status)
STATE_KEY = "autolabel_state"  # {iteration, phase, config, pending, stopped}
PSEUDO_TEST_META = "autolabel_pseudo_test"  # paths of the auto-labelled test share
RESULT_FILE = "autolabel.json"

# Settings that must not change between a run and its resumption (anything else may).
_FIXED_ON_RESUME = ("threshold", "target_precision", "initial_checkpoint", "steps_first", "steps_increment",
                    "steps_max", "model", "backbone", "pretrained_backbone", "image_size", "batch_size", "seed",
                    "train_ratio", "lr", "warm_start", "detector_options", "val_every")


def autolabel_pool(project: Project) -> list[str]:
    """Images TSODA may still auto-label: unlabelled, outside every split, holding no pseudo box."""
    return project.image_set("autolabel_pool")


def autolabel(project: Project, config: AutolabelConfig | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) TSODA on `project` with `config` (None: the defaults; e.g.
    `AutolabelConfig.make(threshold="auto", iterations=3)`); returns every iteration's row, also
    written to PROJECT/autolabel.json and to the project metrics (round 0, key 'autolabel').

    Defaults: `threshold` 0.8 (TSODA; it found 0.9 better); "auto": from validation precision
    (`target_precision`, see the module notes). Steps per iteration i (1-based):
    min(first + (i-1) * increment, max), where first/increment/max default to TSODA's
    2,500/1,500/8,500 steps times `pseudo.tsoda_scale(images in the project, batch_size)` (see
    `default_steps`); each of `steps_first`, `steps_increment`, `steps_max` overrides its value as
    given (unscaled). `iterations` None runs until no unlabelled image is left. `warm_start`
    initialises iteration i from iteration i-1's best weights (TSODA reloads its checkpoint); the
    first iteration starts from the backbone's weights, or is `initial_checkpoint`. `val_every` (steps)
    defaults to a tenth of the iteration's steps. `detector_options` go to the detector builder (e.g.
    fpn_channels, head_convs). `train_ratio` of each iteration's new images train; the rest form the
    pseudo test share.

    With no unlabelled image at the start, nothing happens and [] is returned (logged). A threshold
    outside (0, 1) raises ValueError (when the config is made). A resumed run must use the same
    settings (the iteration limit, device and progress may change); otherwise ValueError names the
    changed ones. A run stored before the config's groups (a flat dict) resumes as well.
    """
    config = AutolabelConfig() if config is None else config
    checkpoint = config.tsoda.initial_checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ValueError(f"initial_checkpoint {checkpoint} does not exist")
    if project.num_classes < 1:
        raise ValueError(f"{project.dir} has no classes; import some labelled images first")
    resolved = config.resolved(project.image_count())
    iterations, device = resolved.tsoda.iterations, resolved.training.device

    with project.writer_lock():
        state = _state(project)
        if state is None:
            if not autolabel_pool(project):
                log.warning("%s: no unlabelled images to auto-label; nothing to do", project.dir)
                return []
            state = {"iteration": 1, "phase": "train", "pending": {}, "stopped": None, "config": resolved.to_dict()}
            project.set_metric(METRICS_ROUND, STATE_KEY, state)
        else:
            stored = _stored_config(state)
            _check_same_config(project, stored, resolved)
            state["config"] = stored.with_(device=device, iterations=iterations).to_dict()

        while True:
            i = int(state["iteration"])
            if state.get("stopped") == "no_new_labels":  # the same settings would label nothing again
                log.info("%s: auto-labelling already stopped: an iteration labelled nothing new", project.dir)
                break
            if state["phase"] == "train" and not state["pending"] and not autolabel_pool(project) \
                    and not _labelled_untrained(project, i):
                if state.get("stopped") != "pool_empty":
                    state["stopped"] = "pool_empty"
                    project.set_metric(METRICS_ROUND, STATE_KEY, state)
                log.info("%s: no unlabelled image left after %d iteration(s)", project.dir, i - 1)
                break
            if iterations is not None and i > iterations:
                if state.get("stopped") != "iterations":
                    state["stopped"] = "iterations"
                    project.set_metric(METRICS_ROUND, STATE_KEY, state)
                break
            state["stopped"] = None  # (images added since a finished run, or a higher iteration limit)
            state = _run_phase(project, state, progress)
        rows = _rows(project)
        _write_json(project, state, rows)
    return rows


# -- the phases ------------------------------------------------------------------------------------


def _run_phase(project: Project, state: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Run the state's phase of its iteration; store and return the next state."""
    cfg, i, phase = _stored_config(state), int(state["iteration"]), state["phase"]
    pending = dict(state.get("pending") or {})
    t0 = time.perf_counter()
    if phase == "train":
        pending.update(_train(project, cfg, i, progress))
        nxt = {**state, "phase": "evaluate"}
    elif phase == "evaluate":
        pending.update(_evaluate(project, cfg, i, progress))
        nxt = {**state, "phase": "label"}
    elif phase == "label":
        return _label(project, cfg, i, pending, state, progress)  # stores the next state itself
    else:
        raise ValueError(f"{project.dir}: auto-labelling state names an unknown phase {phase!r}; "
                         f"delete the metrics key {STATE_KEY!r} of round {METRICS_ROUND} to start over")
    pending["seconds"] = pending.get("seconds", 0.0) + (time.perf_counter() - t0)
    nxt["pending"] = pending
    project.set_metric(METRICS_ROUND, STATE_KEY, nxt)
    return nxt


def iteration_steps(cfg: AutolabelConfig, iteration: int) -> int:
    """Training steps of 1-based `iteration` under a resolved config (TSODA's schedule)."""
    return cfg.steps(iteration)


def model_dir(project: Project, iteration: int) -> Path:
    return project.dir / "models" / f"autolabel_{iteration:03d}"


def _train(project: Project, cfg: AutolabelConfig, i: int, progress: bool) -> dict[str, Any]:
    from boxloop.detectors import DetectorSpec
    from boxloop.loop.model import training_samples
    from boxloop.train.checkpoints import load_checkpoint
    from boxloop.train.config import TrainConfig, short_warmup, step_val_every
    from boxloop.train.run import train_detector

    train, val = training_samples(project)
    d, t, initial = cfg.detector, cfg.training, cfg.tsoda.initial_checkpoint
    if i == 1 and initial:
        from boxloop.train.checkpoints import load_detector
        from boxloop.train.checkpoints import save_checkpoint

        _, _, meta = load_detector(initial, expect_classes=project.classes)
        ckpt = load_checkpoint(initial)
        save_checkpoint(ckpt, model_dir(project, 1) / "best.pt")
        return {"steps": 0, "train_images": len(train), "val_images": len(val),
                "best_val_map50": meta.get("best_map50"), "initial_checkpoint": initial}
    steps = iteration_steps(cfg, i)
    spec = DetectorSpec.sized(d.model, d.backbone, d.pretrained_backbone, t.image_size, d.detector_options)
    previous = model_dir(project, i - 1) / "best.pt"
    warm = cfg.tsoda.warm_start and i > 1 and previous.exists()
    # the seed makes the build's random layers independent of what ran before
    tc = TrainConfig(steps=steps, batch_size=t.batch_size, image_size=t.image_size, lr=t.lr,
                     optimizer=t.optimizer, device=t.device, seed=t.seed + 1000 * i,
                     val_every=t.val_every or step_val_every(steps), warmup_steps=short_warmup(steps))
    _, result = train_detector(spec, project.classes, train, val, tc, model_dir(project, i),
                               init=previous if warm else None, progress=progress)
    return {"steps": steps, "train_images": len(train), "val_images": len(val),
            "best_val_map50": result.best_map50}


def _load(project: Project, device: str, i: int):
    from boxloop.train.checkpoints import load_detector

    det, _, _ = load_detector(model_dir(project, i) / "best.pt", expect_classes=project.classes, device=device)
    return det


def _evaluate(project: Project, cfg: AutolabelConfig, i: int, progress: bool) -> dict[str, Any]:
    """mAP50 on the fixed test set and, apart, on the auto-labelled test share of earlier iterations."""
    from boxloop.metrics.evaluate import evaluate
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.model import test_metrics

    t = cfg.training
    det = _load(project, t.device, i)
    fixed = test_metrics(project, det, t.image_size, t.device, t.batch_size, progress=progress)
    out: dict[str, Any] = {"map50": fixed.get("map50"), "coco_ap": fixed.get("coco_ap"),
                           "pseudo_test_map50": None, "pseudo_test_images": 0}
    share = set(project.get_meta(PSEUDO_TEST_META, []))
    truth = {k: a for k, a in project.annotations("pseudo").items() if k in share}
    if truth:
        keys = list(truth)
        root = project.image_root
        preds = {k: d.to_annotation(k, project.classes) for k, d in predict_paths(
            det, [root / k for k in keys], t.image_size, batch_size=t.batch_size, device=t.device,
            progress=progress, keys=keys)}
        out["pseudo_test_map50"] = evaluate(truth, preds, project.classes)["map50"]
        out["pseudo_test_images"] = len(truth)
    return out


def _label(project: Project, cfg: AutolabelConfig, i: int, pending: dict[str, Any], state: dict[str, Any],
           progress: bool) -> dict[str, Any]:
    """Predict on the pool, accept, split; boxes, splits, row and next state in one transaction."""
    from boxloop.predict.inference import predict_paths

    t0 = time.perf_counter()
    pool = autolabel_pool(project)
    preds = {}
    t, target = cfg.training, cfg.tsoda.target_precision
    auto = cfg.tsoda.threshold == "auto"
    table = None
    threshold: float | None = None if auto else float(cfg.tsoda.threshold)
    if pool:
        det = _load(project, t.device, i)
        root = project.image_root
        table = validation_table(project, det, dataclasses.asdict(t))
        if auto:
            threshold = pseudo.threshold_for_precision(table, target) if table is not None else None
        preds = dict(predict_paths(
            det, [root / k for k in pool], t.image_size, batch_size=t.batch_size, device=t.device,
            score_threshold=min(0.05, threshold or 0.05), progress=progress, keys=pool))
    accepted = pseudo.tsoda_accept(preds, threshold) if threshold is not None else {}
    scores = pseudo.score_percentiles(np.concatenate([d.scores for d in preds.values()]) if preds else [])
    val_pr = (None, None) if table is None or threshold is None else pseudo.precision_above(table, threshold)
    new = [k for k in pool if k in accepted]  # pool order
    train_keys, test_keys = pseudo.split_autolabelled(new, cfg.tsoda.train_ratio,
                                                      rng=np.random.default_rng([t.seed, i]))
    name = model_dir(project, i).name
    boxes = int(sum(len(accepted[k]) for k in new))
    with project.transaction():
        for k in new:
            ann = accepted[k].to_annotation(k, project.classes, source=Source.PSEUDO, round=i, model=name)
            project.add_boxes(k, ann, round=i)
        project.set_split(train_keys, "train")
        project.set_split(test_keys, "val")
        share = list(project.get_meta(PSEUDO_TEST_META, [])) + sorted(test_keys)
        project.set_meta(PSEUDO_TEST_META, share)
        total = project.pseudo_image_count()
        remaining = len(autolabel_pool(project))
        row = {
            "iteration": i,
            "steps": pending.get("steps"),
            "images_auto_labelled": len(new),
            "auto_labelled_train": len(train_keys),
            "auto_labelled_test": len(test_keys),
            "total_auto_labelled": total,
            "boxes": boxes,
            "remaining_unlabelled": remaining,
            "map50": pending.get("map50"),
            "coco_ap": pending.get("coco_ap"),
            "pseudo_test_map50": pending.get("pseudo_test_map50"),
            "pseudo_test_images": pending.get("pseudo_test_images", 0),
            "best_val_map50": pending.get("best_val_map50"),
            "train_images": pending.get("train_images"),
            "threshold": threshold,
            "threshold_rule": (f"auto: the lowest with validation precision >= {target:g}" if auto
                               else "fixed"),
            "val_precision": val_pr[0],
            "val_boxes_above": val_pr[1],
            "scores": scores,
            "seconds": round(pending.get("seconds", 0.0) + (time.perf_counter() - t0), 2),
        }
        if not new and pool:
            message, row["suggested_threshold"] = threshold_guidance(threshold, scores, table, target)
            row["guidance"] = message
            log.warning("%s: iteration %d auto-labelled no image: %s; stopping.", project.dir, i, message)
        rows = [r for r in _rows(project) if r["iteration"] != i] + [row]
        project.set_metric(METRICS_ROUND, ROWS_KEY, rows)
        stopped = None
        if not pool:  # the training-only iteration after the pool emptied
            stopped = "pool_empty"
        elif not new:
            stopped = "no_new_labels"
        elif remaining == 0:
            stopped = "pool_empty"
        nxt = {**state, "iteration": i + 1, "phase": "train", "pending": {}, "stopped": stopped}
        project.set_metric(METRICS_ROUND, STATE_KEY, nxt)
    _write_json(project, nxt, rows)
    return nxt


def _labelled_untrained(project: Project, i: int) -> bool:
    """Did iteration i-1 auto-label images that no iteration has trained on yet?"""
    last = next((r for r in _rows(project) if r["iteration"] == i - 1), None)
    return bool(last and last["images_auto_labelled"] > 0)


def validation_table(project: Project, det: Any, cfg: Mapping[str, Any]) -> np.ndarray | None:
    """(score, is_tp) of the model's detections (score >= 0.01) on the human validation images, or
    None without a validation image holding a box."""
    from boxloop.metrics.evaluate import voc_matches
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.model import training_samples

    val = [s for s in training_samples(project)[1] if s.annotation is not None]
    if not any(len(s.annotation) for s in val):  # type: ignore[arg-type]
        return None
    preds = {name: d.to_annotation(name, project.classes) for name, d in predict_paths(
        det, [s.path for s in val], cfg["image_size"], batch_size=cfg["batch_size"], device=cfg["device"],
        score_threshold=0.01, progress=False, keys=[s.name for s in val])}
    m = voc_matches({s.name: s.annotation for s in val}, preds, project.classes)
    return np.stack([m["score"], m["tp"]], axis=1) if len(m["score"]) else np.zeros((0, 2))


def threshold_guidance(threshold: float | None, scores: Mapping[str, Any], table: np.ndarray | None,
                       target_precision: float = 0.9) -> tuple[str, float | None]:
    """Why nothing was auto-labelled and what to try: (message, suggested threshold or None).
    `scores`: pseudo.score_percentiles of the pool's detections; `table`: the validation
    (score, is_tp) table or None. The suggestion is the validation one (the lowest threshold whose
    precision reaches `target_precision`) when it exists and lies below `threshold`, else the 99th
    percentile of the pool's scores rounded down to 0.01 (about the top 1% of the boxes)."""
    if not scores.get("boxes"):
        return ("the model detected nothing on the unlabelled images (no score above 0.05): train longer or on "
                "more labels"), None
    what = (f"the pool's {scores['boxes']} detections score {scores['p90']:.3f} at the 90th percentile, "
            f"{scores['p99']:.3f} at the 99th, {scores['max']:.3f} at most")
    head = (f"no detection scored above {threshold:.2f}; " if threshold is not None else
            f"no threshold reaches validation precision {target_precision:g}; ")
    auto = pseudo.threshold_for_precision(table, target_precision) if table is not None and len(table) else None
    if auto is not None and (threshold is None or auto < threshold) and auto < scores["max"]:
        precision, n = pseudo.precision_above(table, auto)  # type: ignore[arg-type]
        return (head + what + f". Suggested --threshold {auto:.2f}: the lowest with validation precision >= "
                f"{target_precision:g} ({precision:.2f} over {n} validation boxes); or --threshold auto"), auto
    p99 = math.floor(scores["p99"] * 100) / 100
    if 0 < p99 < 1 and (threshold is None or p99 < threshold):
        why = ("no threshold reaches that precision on validation" if table is not None and len(table)
               else "no validation image with a box to measure precision on")
        return (head + what + f". Suggested --threshold {p99:.2f} (about the top 1% of the boxes; {why}): review "
                "what it labels (export --subset pseudo)"), p99
    return head + what + ": train longer or on more labels", None


# -- state, rows, file -----------------------------------------------------------------------------


def _state(project: Project) -> dict[str, Any] | None:
    return project.metrics(METRICS_ROUND).get(METRICS_ROUND, {}).get(STATE_KEY)


def _rows(project: Project) -> list[dict[str, Any]]:
    return list(project.metrics(METRICS_ROUND).get(METRICS_ROUND, {}).get(ROWS_KEY, []))


def _stored_config(state: Mapping[str, Any]) -> AutolabelConfig:
    """The resolved config a run stored: nested, or flat (before the groups); a run stored before the
    optimizer was recorded trained with SGD."""
    stored = state["config"]
    if not any(k in stored for k in ("training", "optimizer")):
        stored = {**stored, "optimizer": "sgd"}
    return AutolabelConfig.from_dict(stored)


def _check_same_config(project: Project, old_config: AutolabelConfig, new_config: AutolabelConfig) -> None:
    old, new = old_config.flat(), new_config.flat()
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in _FIXED_ON_RESUME if old.get(k) != new.get(k)]
    if changed:
        raise ValueError(
            f"{project.dir} holds an auto-labelling run with other settings ({'; '.join(changed)}); resume it "
            f"with the same settings, or start over by removing the metrics keys {STATE_KEY!r}/{ROWS_KEY!r} "
            "and the pseudo boxes (a fresh project is simplest)")


def _write_json(project: Project, state: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Path:
    """PROJECT/autolabel.json, atomically (tmp + os.replace): config, stop reason, one row per iteration."""
    path = project.dir / RESULT_FILE
    reasons = {"pool_empty": "no unlabelled image left", "no_new_labels": "the last iteration labelled nothing new",
               "iterations": "iteration limit reached", None: None}
    config = {g: {k: v for k, v in group.items() if k != "device"} if isinstance(group, Mapping) else group
              for g, group in state["config"].items()}
    doc = {"config": config,
           "stopped": reasons.get(state.get("stopped"), state.get("stopped")),
           "next_iteration": state["iteration"], "next_phase": state["phase"],
           "threshold_chosen": rows[-1].get("threshold") if rows else None,
           "iterations": list(rows)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
