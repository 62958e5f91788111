"""Where a report's data comes from: a simulate OUT folder, a results.json file, a dict, or a project.

Written by hand: checking the results schema (keys.py) with messages that say which command writes
it, finding gallery.json beside the results, and turning a project's rounds (or, for an auto-labelling
project, its iterations) into one run and its last query into gallery items. json parses; the project
itself (store.Project, history.round_history) is read through its own API and imported only when a project
is given, so reading a simulate folder needs no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from boxloop.report.keys import (
    BOXES, BOXES_LABELLED, COST_SECONDS, DEFAULT_UNIT, IMAGE, IMAGES_LABELLED, LABELS, MAP50, PSEUDO_BOXES,
    PSEUDO_IMAGES, ROUND, ROUNDS, RUNS, SCORES, SEED, SEMI, SOURCES, STRATEGY, UNIT,
)

__all__ = ["load_results", "project_gallery", "report_source"]


def load_results(source: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    """The results dict from a dict, a results.json file, or a directory holding results.json."""
    if isinstance(source, Mapping):
        results = dict(source)
        where = "results dict"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no results.json here; give a `boxloop simulate --out` directory "
                                    "or a results.json file")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); re-run the command that wrote it") from e
        where = str(path)
    runs = results.get(RUNS) if isinstance(results, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"{where}: expected an object with a 'runs' list (the schema `boxloop simulate` writes)")
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or STRATEGY not in run or not isinstance(run.get(ROUNDS), list):
            raise ValueError(f"{where}: runs[{i}] needs a 'strategy' and a 'rounds' list")
    return results


def load_gallery(source: Path | None, gallery: Sequence[Mapping[str, Any]] | Path | None
                  ) -> list[Mapping[str, Any]] | None:
    """The gallery items given, or those of `gallery` / SOURCE/gallery.json; None when there are none."""
    if gallery is not None and not isinstance(gallery, (str, Path)):
        return list(gallery)
    path = Path(gallery) if gallery is not None else (source / "gallery.json" if source is not None else None)
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{image, boxes, labels, scores, sources}} objects")
    return data


def project_gallery(project: Any, round_id: int | None = None, display_threshold: float = 0.3) -> list[dict[str, Any]]:
    """The last query's images with their boxes now: human answers, auto-labels, predictions shown."""
    queries = project.queries(round=round_id) if round_id is not None else project.queries()
    if not queries:
        return []
    last = max(q.round for q in queries)
    keys = list(dict.fromkeys(q.path for q in queries if q.round == last))
    anns = project.annotations("all", sources=("human", "pseudo", "predicted", "background"))
    preds = project.load_predictions(last)
    root = project.image_root
    items = []
    for key in keys:
        ann = anns.get(key)
        if ann is None or len(ann) == 0:  # still open: show what the annotator was given
            det = preds.get(key)
            if det is not None:
                det = det[det.scores >= display_threshold]
                ann = det.to_annotation(key, project.classes)
        if ann is None:
            continue
        items.append({IMAGE: str(root / key), BOXES: ann.boxes.xyxy.tolist(),
                      LABELS: [lab or "background" for lab in ann.labels],
                      SCORES: [p.score for p in ann.provenance],
                      SOURCES: [str(p.source) for p in ann.provenance]})
    return items


def report_source(source: Path) -> tuple[Any, list[dict[str, Any]] | None, str]:
    """(results, gallery, title) for `boxloop report`: a simulate OUT folder (or its results.json),
    or a project folder (its rounds become one run; the gallery is its last query)."""
    source = Path(source)
    if source.is_file() or (source / "results.json").exists():
        return source, None, f"boxloop report: {source}"
    if (source / "boxloop.db").exists():
        from boxloop.loop.history import round_history
        from boxloop.loop.config import LoopConfig
        from boxloop.store import Project

        with Project.open(source) as p:
            rounds = p.rounds()
            cfg = LoopConfig.from_dict(rounds[-1].config) if rounds else None  # nested, or flat in older projects
            history = round_history(p)
            auto = (p.metrics().get(max(p.metrics() or [0]), {}) or {}).get("autolabel")
            if not history and auto:  # an auto-labelling project: its iterations are the rounds
                history = [{ROUND: r["iteration"], IMAGES_LABELLED: p.status()["labelled_images"],
                            BOXES_LABELLED: p.status()["boxes"], COST_SECONDS: 0.0,
                            MAP50: r.get("map50"), PSEUDO_IMAGES: r.get("total_auto_labelled"),
                            PSEUDO_BOXES: r.get("boxes")} for r in auto]
            if not history:
                raise ValueError(f"{source} has no evaluated round yet: run `boxloop query`, `boxloop simulate` "
                                 "or `boxloop autolabel` first")
            strategy, unit, semi = ((cfg.selection.strategy, cfg.selection.unit, cfg.pseudo.semi) if cfg
                                    else ("project", DEFAULT_UNIT, None))
            results = {RUNS: [{STRATEGY: strategy, SEED: p.seed, UNIT: unit, SEMI: semi, ROUNDS: history}]}
            return results, project_gallery(p), f"boxloop report: {source}"
    raise ValueError(f"{source} is neither a simulate output folder (results.json) nor a boxloop project")
