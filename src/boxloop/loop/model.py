"""A round's model: what it trains on and with which weight, training it (never worse with the
loop's pseudo-labels), where it is kept, and its mAP on the fixed test set.

Written by hand here: which boxes train with which weight (human 1, unchecked predicted lambda_d,
pseudo alpha_m, as stored with the boxes), the model folders and the project's current model, and
the never-worse rule: a round whose training set holds the loop's pseudo-labels also trains without
them and keeps them only when a paired bootstrap over the validation images says they help.
Delegated: training to `train.train_detector`, the paired bootstrap to `compare`, prediction to
`inference.predict_paths`, metrics to `evaluate`, the checks of image files to `integrity`. These
are the loop's train and evaluate steps; boxloop.loop.round orders them with the others and re-exports
every name here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from boxloop.store import Project
from boxloop.structures import Annotation

if TYPE_CHECKING:
    from boxloop.loop.config import LoopConfig


def _weights_by_path(project: Project, subset: str, split: Any = ...) -> dict[str, np.ndarray]:
    """Per-box loss weights of a subset, in the order `annotations(subset)` lists the boxes."""
    table = project.box_table(subset, split=split)
    out: dict[str, list[float]] = {}
    for path, w in zip(table["path"], table["weight"]):
        out.setdefault(str(path), []).append(float(w))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def training_samples(project: Project, strict: bool = False) -> tuple[list, list]:
    """(train, val) Samples: human labels weight 1, partial images with their stored weights
    (unchecked predicted boxes lambda_d), pseudo-labelled pool images with their stored weights.
    Images whose file is missing or changed since it was labelled are left out and recorded
    (`strict`: an error)."""
    from boxloop.train.data import Sample
    from boxloop.integrity import usable_images

    root = project.image_root
    train: list[Sample] = []
    for path, ann in project.annotations("train").items():
        train.append(Sample(root / path, ann, key=path))
    for subset in ("partial", "pseudo"):
        anns = project.annotations(subset)
        weights = _weights_by_path(project, subset)
        for path, ann in anns.items():
            if subset == "pseudo" and project.image(path).split in ("test", "val"):
                continue
            train.append(Sample(root / path, ann, weights=weights.get(path, np.ones(len(ann), np.float32)), key=path))
    val = [Sample(root / p, a, key=p) for p, a in project.annotations("val").items()]
    usable = set(usable_images(project, [s.name for s in train + val], "train", strict))
    return [s for s in train if s.name in usable], [s for s in val if s.name in usable]


def model_dir(project: Project, round_id: int) -> Path:
    """Where round `round_id` keeps its model (best.pt) and training runs."""
    return project.dir / "models" / f"round_{round_id:03d}"


def load_round_detector(project: Project, round_id: int, config: LoopConfig):
    """Round `round_id`'s model, on the CPU (the steps move it where they predict)."""
    from boxloop.train.checkpoints import load_detector

    det, _, _ = load_detector(model_dir(project, round_id) / "best.pt", expect_classes=project.classes,
                              device="cpu")
    return det


def project_feature_cache(project: Project):
    """The project's cache of frozen-body maps (boxloop.predict.feature_cache), in PROJECT/cache/features."""
    from boxloop.predict.feature_cache import FeatureCache, cache_dir

    return FeatureCache(cache_dir(project.dir))


def current_checkpoint(project: Project) -> Path:
    """The model `query`, `evaluate` and `predict` use: the last one trained on this project."""
    path = project.get_path_meta("current_checkpoint")
    if path is not None and path.exists():
        return path
    raise ValueError(f"{project.dir}: no trained model yet; run `boxloop train {project.dir}` first "
                     "(or pass --checkpoint PATH)")


def set_current_checkpoint(project: Project, path: str | Path) -> None:
    """Make `path` the project's current model (relative to the project when inside it: Project.set_path_meta)."""
    project.set_path_meta("current_checkpoint", path)


def train_project(project: Project, config: LoopConfig, out_dir: Path | None = None, progress: bool = True,
                  strict: bool = False, nproc: int | None = None, torchrun_args: Sequence[str] = ()):
    """Train on the project's current labels; the checkpoint becomes the project's current model.

    The model folder is named after the settings and the labels trained on, so re-running the same
    command resumes (or returns at once) and any change of labels or settings trains anew. `nproc`:
    train on that many processes through torchrun (boxloop.train.ddp); the folder is the same, so a run
    may resume with another process count."""
    import hashlib
    import json as _json

    from boxloop.train.run import train_detector

    train, val = training_samples(project, strict)
    if out_dir is None:  # the flat settings: folders named before the config's groups still resume
        fingerprint = _json.dumps([config.flat(), [(s.name, len(s.annotation or ()), None if s.weights is None
                                   else [round(float(w), 4) for w in s.weights]) for s in train + val]], default=str)
        digest = hashlib.sha1(fingerprint.encode()).hexdigest()[:10]
        out_dir = project.dir / "models" / f"train_{config.detector.model}_{digest}"
    _, result = train_detector(config.detector_spec(), project.classes, train, val, config.train_config(0), out_dir,
                               progress=progress, nproc=nproc, torchrun_args=torchrun_args,
                               feature_cache=project_feature_cache(project))
    set_current_checkpoint(project, result.best_checkpoint)
    return result, len(train), len(val)


def step_train(project: Project, round_id: int, config: LoopConfig, progress: bool = True,
               strict: bool = False) -> None:
    """Train the round's model into model_dir(round)/best.pt. With pseudo-labels in the training set
    and `pseudo_guard`, train with and without them and keep the one the guard picks (never worse)."""
    from boxloop.train.run import train_detector

    train, val = training_samples(project, strict)
    previous = model_dir(project, round_id - 1) / "best.pt"
    warm = config.training.warm_start and round_id > 0 and previous.exists()
    out = model_dir(project, round_id)
    pseudo_keys = set(project.annotations("pseudo")) if config.pseudo.semi and config.pseudo.pseudo_guard else set()
    human = [s for s in train if s.name not in pseudo_keys]
    fits = {"with_pseudo": train, "without_pseudo": human} if len(human) < len(train) else {"": train}
    trained = {name: train_detector(config.detector_spec(), project.classes, samples, val,
                                    config.train_config(round_id, warm), out / name if name else out,
                                    init=previous if warm else None, progress=progress,
                                    feature_cache=project_feature_cache(project))
               for name, samples in fits.items()}
    metrics: dict[str, Any] = {}
    chosen = ""
    if "" not in trained:
        from boxloop.train.checkpoints import copy_checkpoint

        metrics["pseudo_guard"] = guard = pseudo_guard(project, config, val, trained, len(train) - len(human))
        chosen = "with_pseudo" if guard["kept"] else "without_pseudo"
        copy_checkpoint(trained[chosen][1].best_checkpoint, out / "best.pt")
    result = trained[chosen][1]
    metrics.update({"best_val_map50": result.best_map50, "train_images": len(fits[chosen]),
                    "val_images": len(val), "train_steps": result.total_steps,
                    "warm_start_from": round_id - 1 if warm else None})
    with project.transaction():
        project.set_metrics(round_id, metrics)
        set_current_checkpoint(project, out / "best.pt")


def pseudo_guard(project: Project, config: LoopConfig, val: Sequence[Any],
                 trained: Mapping[str, tuple[Any, Any]], pseudo_images: int) -> dict[str, Any]:
    """The never-worse verdict on the models trained with and without the pseudo-labels (guard_verdict)."""
    from boxloop.train.fit import validation_predictions

    tc = config.train_config(0)
    truth = {s.name: s.annotation for s in val}
    return guard_verdict(truth, validation_predictions(trained["with_pseudo"][0], val, project.classes, tc),
                         validation_predictions(trained["without_pseudo"][0], val, project.classes, tc),
                         project.classes, config.pseudo.guard_level, config.training.seed, pseudo_images)


def guard_verdict(truth: Mapping[str, Annotation], with_pseudo: Mapping[str, Annotation],
                  without_pseudo: Mapping[str, Annotation], classes: Sequence[str], level: float, seed: int,
                  pseudo_images: int) -> dict[str, Any]:
    """Keep the pseudo-labels only when the model trained with them is better on the validation
    images than the one trained without, beyond the noise of a few images: the lower end of the
    paired bootstrap interval of the mAP50 difference above 0 (compare.py, the rule of semi's guard;
    AL_NOTES: a +0.02 point estimate on a handful of images was noise). No validation box: not kept."""
    from boxloop.metrics.compare import paired_bootstrap

    cmp = paired_bootstrap(truth, with_pseudo, without_pseudo, classes, level=level, seed=seed)
    if cmp.delta is None:
        reason = "no validation box: cannot show that the pseudo-labels help; trained without them"
    else:
        reason = (f"val mAP50 with pseudo-labels {cmp.a:.4f}, without {cmp.b:.4f} ({cmp.delta:+.4f}; "
                  f"{100 * cmp.level:g}% paired bootstrap interval over {cmp.images} images "
                  f"[{cmp.low:+.4f}, {cmp.high:+.4f}]): "
                  + ("kept" if cmp.a_better else "dropped (the interval does not lie above 0)"))
    return {"kept": cmp.a_better, "pseudo_images": pseudo_images, "with": cmp.a, "without": cmp.b,
            "low": cmp.low, "high": cmp.high, "images": cmp.images, "reason": reason}


def test_metrics(project: Project, detector, image_size: int, device: str = "auto", batch_size: int = 8,
                 score_threshold: float = 0.05, progress: bool = True) -> dict[str, Any]:
    """evaluate() of a detector on the project's fixed test set ({} when the project has none). A test
    image that is missing or changed since it was labelled is an error: the test set stays fixed."""
    from boxloop.metrics.evaluate import evaluate
    from boxloop.predict.inference import predict_paths
    from boxloop.integrity import check_images, refuse_problems

    truth = project.annotations("test")
    if not truth:
        return {}
    refuse_problems(check_images(project, list(truth), "evaluate").problems, "of the fixed test set",
                    "check the image folder and put the original files back; the test set must stay the same "
                    "for results to compare", project.image_root)
    root = project.image_root
    keys = list(truth)
    preds = {key: d.to_annotation(key, project.classes)
             for key, d in predict_paths(detector, [root / k for k in keys], image_size, batch_size=batch_size,
                                         device=device, score_threshold=score_threshold, progress=progress,
                                         keys=keys, feature_cache=project_feature_cache(project))}
    return evaluate(truth, preds, project.classes)


def step_evaluate(project: Project, round_id: int, config: LoopConfig, progress: bool = True) -> dict[str, Any]:
    """mAP of this round's model on the fixed test set, plus what had been labelled to get it."""
    metrics: dict[str, Any] = {}
    ev = test_metrics(project, load_round_detector(project, round_id, config), config.training.image_size,
                      config.training.device, config.prediction.predict_batch_size, config.prediction.score_threshold,
                      progress)
    if ev:
        metrics.update({k: ev[k] for k in ("map50", "coco_ap", "ap50", "ap75") if k in ev})
        metrics["per_class"] = {n: {"ap50": v.get("ap50"), "coco_ap": v.get("coco_ap"), "num_gt": v.get("num_gt")}
                                for n, v in ev["per_class"].items()}
    metrics.update(labelled_counts(project))
    project.set_metrics(round_id, metrics)
    return metrics


def labelled_counts(project: Project) -> dict[str, Any]:
    """Images and boxes a person has labelled outside the test set, and per class."""
    return project.labelled_counts()
