"""One round of the loop, and the only place that knows the order of its steps.

    train -> evaluate -> predict -> select -> oracle -> (semi) -> done

Every step reads what it needs from the project store and writes its result back, and the round's
`step` column records the step to run next, in the same transaction as the step's result where
the result is a label change. A killed process therefore resumes at the step it was in: training
resumes from its last checkpoint, prediction skips images already stored, and an oracle answer is
either wholly in the store or not at all.

Written by hand here: the step order and the predict, select, oracle and semi steps. The train and
evaluate steps (which boxes train with which weight: human 1, unchecked predicted lambda_d, pseudo
alpha_m; the never-worse rule for pseudo-labels; the model folders) are boxloop.loop.model, the
round history and the stopping rules boxloop.loop.history, the round's settings (LoopConfig)
boxloop.loop.config; this module re-exports their names. Images whose file went missing or bad, or
changed under their labels, since init are left out of training and prediction and recorded
(`boxloop.integrity`; `strict` makes them errors); the fixed test set refuses to shrink. Everything
else is delegated: training to `train.fit`, prediction to `inference.predict_paths`, selection to
`strategies.select`, answers to `oracle`, pseudo-labels to `pseudo`, metrics to `evaluate`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from boxloop.loop.config import LoopConfig
from boxloop.loop.oracle import BoxOracle, Cost, ImageOracle, answers_by_image, partial_labels
# run_round calls the steps by their names in this module (a test may replace loop.step_train)
from boxloop.loop.model import load_round_detector, model_dir, project_feature_cache, step_evaluate, step_train
from boxloop.store import Project, Query
from boxloop.structures import Annotation, Boxes, Detections, Provenance, Source, iou

if TYPE_CHECKING:
    from boxloop.scale.ray_scoring import RayScoring
    from boxloop.strategies import DetectionTable

log = logging.getLogger("boxloop.loop")

# The round's step order, in one place: each step's successor, given the round's config and whether
# it is the loop's last round. A step whose result is a label change (select, oracle, semi) records
# its successor itself, in the transaction of that result; run_round records the others.
TRANSITIONS: dict[str, Callable[[LoopConfig, bool], str]] = {
    "train": lambda config, last: "evaluate",
    "evaluate": lambda config, last: "done" if last and not config.selection.take_all_last else "predict",
    "predict": lambda config, last: "select",
    "select": lambda config, last: "oracle",
    "oracle": lambda config, last: "semi" if config.pseudo.semi else "done",
    "semi": lambda config, last: "done",
}
STEPS = (*TRANSITIONS, "done")
_RECORDS_ITS_SUCCESSOR = ("select", "oracle", "semi")


def next_step(step: str, config: LoopConfig, last: bool = False) -> str:
    """The step after `step` (TRANSITIONS)."""
    return TRANSITIONS[step](config, last)


def pool_paths(project: Project) -> list[str]:
    """Images a person may still be asked about: not fully labelled, not test, not val."""
    return project.image_set("pool")


# -- steps -----------------------------------------------------------------------------------------


def step_predict(project: Project, round_id: int, config: LoopConfig, progress: bool = True,
                 chunk: int = 64, strict: bool = False, scoring: RayScoring | None = None) -> None:
    """Predictions of this round's model on the pool, stored chunk by chunk (a resume skips the done ones).
    A pool image that is missing or no longer decodes is left out (so it cannot be selected) and
    recorded; `strict` makes it an error. With `scoring`, on Ray actors (boxloop.scale.ray_scoring), to the
    same results."""
    from boxloop.images import ImageError
    from boxloop.predict.inference import predict_paths
    from boxloop.integrity import SkippedImage, record_skipped, usable_images

    pool = pool_paths(project)
    done = project.predicted_paths(round_id)
    todo = usable_images(project, [p for p in pool if p not in done], "predict", strict)
    if not todo:
        return
    root = project.image_root
    bad: list[SkippedImage] = []

    def skip(path: Path, problem: str) -> None:
        if strict:
            raise ImageError(path, problem, "replace it, or run without --strict to leave it out")
        log.warning("%s: %s; left out of the pool (listed by `boxloop status`)", path, problem)
        bad.append(SkippedImage(path.relative_to(root).as_posix(), problem, "predict"))

    size, batch, device = config.training.image_size, config.prediction.predict_batch_size, config.training.device
    threshold = min(config.prediction.score_threshold, config.selection.t_d)
    if scoring is not None:
        from boxloop.scale.ray_scoring import predict_pool

        predict_pool(project, round_id, todo, model_dir(project, round_id) / "best.pt", size, batch, threshold, scoring,
                     device=device, group_chunk=chunk, on_skip=lambda key, problem: skip(root / key, problem))
        record_skipped(project, bad)  # a kill before this: the rerun scores these again and records them
        return
    det = load_round_detector(project, round_id, config)
    cache = project_feature_cache(project)  # the frozen body's maps: a pool scored again runs the head only

    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        out = dict(predict_paths(det, [root / k for k in part], size, batch_size=batch, device=device,
                                 score_threshold=threshold, progress=progress, on_skip=skip, keys=part,
                                 feature_cache=cache))
        with project.transaction():
            project.save_predictions(round_id, out)
            record_skipped(project, bad)
        bad.clear()


def _checked_exclusions(project: Project, pool: DetectionTable) -> list[tuple[str, int]]:
    """Boxes of partially labelled images that overlap a box a person already checked."""
    exclude: list[tuple[str, int]] = []
    checked = project.annotations("partial", sources=("human", "background"))
    row = {k: i for i, k in enumerate(pool.keys)}
    counts = pool.counts()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for key, ann in checked.items():
        i = row.get(key)
        if i is None or not counts[i] or not len(ann):
            continue
        rows = slice(starts[i], starts[i] + counts[i])
        overlap = iou(pool.boxes[rows].astype(np.float64), ann.boxes).max(axis=1)
        exclude.extend((key, int(b)) for b in pool.box_index[rows][overlap >= 0.5])
    return exclude


def step_select(project: Project, round_id: int, config: LoopConfig, last: bool = False) -> None:
    """Choose what to ask; record it as open queries (and the per-class thresholds for reports)."""
    from boxloop.loop import fallback as fb
    from boxloop.strategies import (EMPTY_SHARE, NEEDS_CLASS_SKILL, NEEDS_EMBEDDING, NEEDS_FEATURES, DetectionTable,
                                     select)

    settings = config.selection
    if settings.strategy == "typical":  # needs no prediction: the cold start has no model to make them
        pool = DetectionTable.empty(keys=pool_paths(project), num_classes=project.num_classes)
    else:
        # decoded in bulk: 100,000 images x 10 boxes in ~1-2 s (a Detections per image: ~5 s; benchmarks/scale.py)
        pool = project.prediction_table(round_id, keys=pool_paths(project),
                                        features=settings.strategy in NEEDS_FEATURES)
    if not pool.num_images:
        raise ValueError("the pool is empty: every image is labelled; nothing left to ask")
    rng = np.random.default_rng([config.training.seed, round_id])
    options: dict[str, Any] = {}
    name, fallback = settings.strategy, None  # fallback: what chose instead when the model kept no box (fallback.py)
    if settings.unit == "images":
        if settings.strategy in EMPTY_SHARE:
            options["empty_share"] = settings.empty_share
        if settings.strategy == "coreset":
            name, extra, fallback = fb.coreset_inputs(project, round_id, config, pool)
            options = {**options, **extra} if name == "coreset" else {}
        if settings.strategy in NEEDS_CLASS_SKILL:  # the round model's per-class quality on the labelled images
            extra, skill_fallback = fb.class_skill_inputs(project, round_id, config, settings.strategy)
            options.update(extra)
            fallback = fallback or skill_fallback
        if settings.strategy in NEEDS_EMBEDDING:  # pooled backbone features, cached in PROJECT/cache
            from boxloop.predict.embedding import selection_features

            options.update(selection_features(project, pool.keys, config.training.device))
        budget = pool.num_images if last and settings.take_all_last else settings.budget
        sel = select(name, pool, budget, unit="images", rng=rng, **options)
        items = [(k, None, s) for k, s in zip(sel.items, sel.scores or [None] * len(sel))]
    else:
        options["t_d"] = settings.t_d
        options["exclude"] = _checked_exclusions(project, pool)
        if fb.box_pool_is_empty(pool, settings.t_d, options["exclude"]):
            sel, fallback = fb.whole_images_instead(project, pool, config, rng)
            items = [(k, None, None) for k in sel.items]
        else:
            if settings.strategy == "coreset":
                options["labelled_features"], fallback = fb.box_coreset_centres(project, round_id, config, pool,
                                                                                options["exclude"])
            sel = select(settings.strategy, pool, settings.budget, unit="boxes", rng=rng, **options)
            items = [(k, None, s, int(b)) for (k, b), s in zip(sel.items, sel.scores or [None] * len(sel))]
    fallback = fallback or sel.info.get("fallback") or fb.ranked_nothing(sel, pool, settings.strategy)
    with project.transaction():
        project.mark_stale()
        project.add_queries(round_id, items, strategy=settings.strategy, batch=round_id)
        # "budget"/"short_by": the strategy took fewer than asked (the pool ran out); say so in the metrics
        info = {k: v for k, v in sel.info.items() if k in ("thresholds", "budget", "short_by", "extended", "phase",
                                                            "coverage", "switch_coverage", "clusters", "class_shares",
                                                            "quality_from", "distance")}
        for key in ("thresholds", "class_shares"):  # per class id -> per class name
            if info.get(key) is not None:
                info[key] = {project.classes[i]: t for i, t in enumerate(info[key])}
        # images where the model kept no box; a strategy left with nothing to rank took a fallback: record it
        info["images_without_detections"] = int(pool.num_images - np.unique(pool.image_index).shape[0])
        if fallback is not None:
            info["fallback"] = fallback
            log.warning("round %d: %s took a fallback: %s; train longer (more --steps) before trusting the "
                        "strategy", round_id, settings.strategy, fallback["reason"])
        project.set_metric(round_id, "selection", {"strategy": settings.strategy, "unit": settings.unit,
                                                   "count": len(sel), **info})
        project.update_round(round_id, step=next_step("select", config, last))


def assign_splits(project: Project, keys: Sequence[str], config: LoopConfig, round_id: int) -> None:
    """Newly labelled images join train or val (val_fraction of them, by seed and round)."""
    keys = sorted(k for k in keys if project.image(k).split not in ("test", "val"))
    if not keys:
        return
    rng = np.random.default_rng([config.training.seed, round_id, 7])
    order = rng.permutation(len(keys))
    n_val = int(round(config.selection.val_fraction * len(keys)))
    val = [keys[i] for i in order[:n_val]]
    project.set_split([k for k in keys if k not in set(val)], "train")
    if val:
        project.set_split(val, "val")


def step_oracle(project: Project, round_id: int, config: LoopConfig, truth: Mapping[str, Annotation],
                only: set[str] | None = None) -> Cost:
    """The annotator (simulated: withheld labels; human: imported files) answers the open queries.

    Labels, the queries' state, the cost and the round's next step land in one transaction. `only`
    answers the queries of those images and leaves the rest open (a human may answer in parts)."""
    queries = [q for q in project.queries(round=round_id, state="open") if only is None or q.path in only]
    preds = project.load_predictions(round_id)
    names = project.classes
    whole = all(q.box_index is None for q in queries) and (config.selection.unit == "images" or bool(queries))
    if whole:  # image level, or a box-level round that asked whole images (fallback.whole_images_instead)
        keys = list(dict.fromkeys(q.path for q in queries))
        shown = {k: preds[k][preds[k].scores >= config.selection.display_threshold] for k in keys if k in preds}
        answers, cost = ImageOracle(truth, class_names=names).answer(keys, pre_annotations=shown)
        with project.transaction():
            for key, ann in answers.items():
                project.set_annotation(key, replace_provenance(ann, round_id), round=round_id)
            assign_splits(project, keys, config, round_id)
            _finish_oracle(project, round_id, queries, cost, config)
        return cost
    items = [(q.path, int(q.box_index)) for q in queries]  # type: ignore[arg-type]  # not whole: box queries
    asked = [(k, preds[k].boxes.xyxy[b], int(preds[k].labels[b])) for k, b in items]
    answers, cost = BoxOracle(truth, class_names=names).answer(asked)
    grouped = answers_by_image(items, answers)
    min_score = noisy_label_threshold(project, round_id, config)
    with project.transaction():
        for key, checked in grouped.items():
            _store_box_answers(project, key, preds[key], checked, config, round_id, min_score)
        assign_splits(project, [k for k in grouped if project.image(k).split is None], config, round_id)
        _finish_oracle(project, round_id, queries, cost, config)
    return cost


def replace_provenance(ann: Annotation, round_id: int) -> Annotation:
    """An answer's boxes as human labels of this round."""
    return dataclasses.replace(ann, provenance=tuple(Provenance(source=Source.HUMAN, round=round_id) for _ in ann.labels))


def noisy_label_threshold(project: Project, round_id: int, config: LoopConfig) -> float:
    """The lowest score an unchecked predicted box needs to train as a noisy label (weight lambda_d).

    FineGrainedAL keeps every box of the box pool (score >= t_d, low for recall). Measured on BCCD (issue
    13, 3 seeds): at t_d = 0.05 a partial image carried ~86 unchecked boxes against ~14 true objects,
    28% of them on an object, and box-level rounds fell from 0.709 to 0.685 test mAP50 while image
    rounds rose. So the threshold is the lowest at which the round's model's detections on the
    validation images reach `noisy_precision` (pseudo.threshold_for_precision), never below t_d;
    without a validation box it is display_threshold (what the annotator is shown). Computed once a
    round and stored with its metrics (a human may answer a round in parts)."""
    stored = project.metrics().get(round_id, {}).get("noisy_label_threshold")
    if stored is not None:
        return float(stored)
    settings = config.selection
    threshold, rule = settings.t_d, "t_d (noisy_precision None: every box of the box pool)"
    if settings.noisy_precision is not None:
        from boxloop.semi.autolabel import validation_table
        from boxloop.semi.pseudo import precision_above, threshold_for_precision

        table = validation_table(project, load_round_detector(project, round_id, config),
                                 {"image_size": config.training.image_size,
                                  "batch_size": config.prediction.predict_batch_size, "device": config.training.device})
        found = threshold_for_precision(table, settings.noisy_precision) if table is not None and len(table) else None
        if found is None:
            threshold, rule = settings.display_threshold, (f"display_threshold: no validation threshold reaches precision "
                                                           f"{settings.noisy_precision:g}")
        else:
            threshold = max(settings.t_d, found)
            precision, count = precision_above(table, found)
            rule = (f"the lowest with validation precision >= {settings.noisy_precision:g} "
                    f"({precision:.3f} over {count} detections)")
    project.set_metrics(round_id, {"noisy_label_threshold": float(threshold), "noisy_label_rule": rule})
    return float(threshold)


def _store_box_answers(project: Project, key: str, det: Detections, checked: Mapping, config: LoopConfig,
                       round_id: int, min_score: float | None = None) -> None:
    """A partially labelled image: all checked answers so far, plus this round's unchecked predictions
    scoring at least `min_score` (default t_d) as noisy labels and those from t_d up to it as ignore
    regions (weight 0)."""
    earlier = project.annotations("partial", sources=("human", "background")).get(key)
    # the box pool's other boxes (t_d <= score < min_score) are ignore regions (weight 0)
    sel = config.selection
    ann, weights = partial_labels(key, det, checked, project.classes, lambda_d=sel.lambda_d,
                                  min_score=sel.t_d if min_score is None else min_score, round=round_id,
                                  ignore_score=sel.t_d)
    # unchecked predictions overlapping an earlier checked box are already answered
    keep = np.ones(len(ann), bool)
    if earlier is not None and len(earlier):
        is_pred = np.array([p.source == Source.PREDICTED for p in ann.provenance], bool)
        if is_pred.any():
            overlap = iou(ann.boxes, earlier.boxes).max(axis=1) >= 0.5
            keep &= ~(is_pred & overlap)
    ann, weights = ann.select(keep), weights[keep]
    project.deactivate_boxes(key, sources=("predicted",))
    project.add_boxes(key, ann, round=round_id, weights=weights, status="partial")
    bg = [a for a in checked.values() if a.background]
    if bg:
        project.add_boxes(key, Annotation(
            image=key, boxes=Boxes(np.stack([a.query_box for a in bg]), det.image_size),
            labels=tuple(project.classes[int(a.query_label)] for a in bg),
            provenance=tuple(Provenance(source=Source.BACKGROUND, round=round_id) for _ in bg)), round=round_id)


def _finish_oracle(project: Project, round_id: int, queries: Sequence[Query], cost: Cost, config: LoopConfig) -> None:
    project.set_query_state([q.id for q in queries], "answered")
    before = project.metrics(round_id).get(round_id, {}).get("cost")
    total = cost if before is None else Cost(**before) + cost
    project.set_metric(round_id, "cost", total.as_dict())
    if not project.queries(round=round_id, state="open"):
        nxt = next_step("oracle", config)
        project.update_round(round_id, step=nxt, status="done" if nxt == "done" else None)


def step_semi(project: Project, round_id: int, config: LoopConfig) -> dict[str, int]:
    """Auto-label the confident rest of the pool: TSODA's fixed threshold or CertaintySSOD's class-wise ones."""
    from boxloop.semi import pseudo

    preds = project.load_predictions(round_id)
    pool = {k: preds[k] for k in pool_paths(project) if k in preds}
    settings = config.pseudo
    if settings.semi == "autolabel":
        accepted = {k: (d, np.ones(len(d), np.float32)) for k, d in pseudo.tsoda_accept(pool, settings.pseudo_threshold).items()}
    else:
        th = pseudo.ClasswiseThresholds(project.num_classes, tau=settings.tau, gamma1=settings.gamma1, gamma2=settings.gamma2,
                                        dynamic_threshold=settings.dynamic_threshold, reweight=settings.reweight,
                                        certainty=any(d.loc_quality is not None for d in pool.values()))
        th.update(pool.values())
        accepted = pseudo.accept_certainty(pool, th)
        project.set_metric(round_id, "pseudo_thresholds", th.to_dict())
    boxes = 0
    with project.transaction():
        # replace the loop's own earlier auto-labels (never those of `boxloop autolabel`)
        project.deactivate_boxes(sources=("pseudo",), model_prefix="loop_round_")
        for key, (d, w) in accepted.items():
            if project.image(key).status != "unlabelled":
                continue
            project.add_boxes(key, d.to_annotation(key, project.classes, source=Source.PSEUDO, round=round_id,
                                                   model=f"loop_round_{round_id:03d}"),
                              round=round_id, weights=w)
            boxes += len(d)
        out = {"pseudo_images": len(accepted), "pseudo_boxes": boxes}
        project.set_metrics(round_id, out)
        project.update_round(round_id, step=next_step("semi", config))
    return out


# -- a round, and a loop of rounds --------------------------------------------------------------------


def step_pause() -> float:
    """Seconds to wait before each step (env BOXLOOP_STEP_PAUSE): lets the crash-safety harness see
    every step, however short, and kill the process in it. 0 = off."""
    try:
        return max(0.0, float(os.environ.get("BOXLOOP_STEP_PAUSE", "0") or 0))
    except ValueError:
        return 0.0


def run_round(project: Project, config: LoopConfig, truth: Mapping[str, Annotation] | None, round_id: int,
              last: bool = False, progress: bool = True, stop_at: str | None = None,
              on_step: Callable[[int, str], None] | None = None, strict: bool = False,
              scoring: RayScoring | None = None) -> dict[str, Any]:
    """Run (or resume) round `round_id` to its end, or to `stop_at`. `truth` None = a human oracle:
    the round stops after `select` and waits for `boxloop import`. `last` = no selection after this
    round's evaluation (the loop's final model) unless take_all_last. `strict`: an image gone bad
    since init stops the round instead of being left out. `scoring`: score the pool on Ray (where it
    runs is not part of the config: the results are the same)."""
    rnd = project.round(round_id)
    if rnd is None:
        project.start_round(config.to_dict(), step="train", round_id=round_id)
        step = "train"
    else:
        step = rnd.step
    run: dict[str, Callable[[], Any]] = {
        "train": lambda: step_train(project, round_id, config, progress, strict),
        "evaluate": lambda: step_evaluate(project, round_id, config, progress),
        "predict": lambda: step_predict(project, round_id, config, progress, strict=strict, scoring=scoring),
        "select": lambda: step_select(project, round_id, config, last=last),
        "oracle": lambda: step_oracle(project, round_id, config, truth),  # type: ignore[arg-type]
        "semi": lambda: step_semi(project, round_id, config),
    }
    pause = step_pause()
    with project.writer_lock():
        while step != "done" and step != stop_at:
            if pause:
                time.sleep(pause)
            if on_step is not None:
                on_step(round_id, step)
            if step == "oracle" and truth is None:
                break  # a person answers; `boxloop import` records the answers and the next step
            if step not in run:
                raise ValueError(f"round {round_id} is at an unknown step {step!r}; the steps are {', '.join(STEPS)}")
            run[step]()
            nxt = next_step(step, config, last)
            if step not in _RECORDS_ITS_SUCCESSOR:
                project.update_round(round_id, step=nxt)
            step = nxt
            if step == "oracle" and truth is None:
                break
        if step == "done":
            project.update_round(round_id, status="done")
    return project.metrics(round_id).get(round_id, {})
