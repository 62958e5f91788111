"""What `boxloop serve` does, without HTTP: predictions with the strategy's priorities, webhooks into
the store, and retraining in the background.

Priorities: the project's current model predicts the whole pool once (at start and after each kept
retraining), the strategy (`strategies.select`, the registry the loop uses) ranks the pool, and an
image's task-level score is 1 - rank / pool size, so Label Studio's "sort by prediction score" is the
loop's order; labelled images score 0. Pool images answer from that pass; others are predicted live.

Webhooks: the task and its annotation go through `formats.labelstudio.load_tasks` (the export's
reading) and `Project.apply_tool_annotation` (one transaction, idempotent), with the new image's
train/val split from `loop.round.assign_splits` in the same transaction. Retraining: after every
`retrain_every` changes, or on request, one at a time, in a thread with its own store connection;
`loop.model.train_project` trains (resuming its folder after a kill) and the new model is kept only
if its validation mAP50 is not below the current one's (the rule `boxloop train` keeps by); the
version bumps only then. Predictions use the model in memory and are never blocked by training.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from boxloop.formats import FormatError
from boxloop.formats.labelstudio import KEY_FIELD, TO_NAME, box_results, config_labels, load_tasks, task_key
from boxloop.loop.config import LoopConfig
from boxloop.serve.images import ImageAccess, ImageRefused
from boxloop.store import Project
from boxloop.structures import Detections

log = logging.getLogger("boxloop.serve")
TOOL = "label-studio"
VERSION_META, PROJECTS_META, TRAINED_META = "serve_model", "serve_label_studio_projects", "serve_trained_seq"


class ServeError(ValueError):
    """A request the backend refuses: `status` is the HTTP code (4xx), the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServeSettings:
    """The backend's knobs; `config` is the loop's (model, training, strategy)."""

    config: LoopConfig
    retrain_every: int = 10
    display_threshold: float = 0.3
    access: ImageAccess = field(default_factory=ImageAccess)


def unsupported_strategies() -> frozenset[str]:
    """Strategies that need inputs a live backend does not build (embeddings, class skill, features)."""
    from boxloop.strategies import STRATEGIES

    return frozenset(name for registry in STRATEGIES.values() for name, entry in registry.items()
                     if entry.embedding or entry.class_skill or entry.features)


class Backend:
    """One project served to Label Studio; thread-safe (each call opens its own store connection)."""

    def __init__(self, project_dir: str | Path, settings: ServeSettings) -> None:
        from boxloop.strategies import IMAGE_STRATEGIES

        self.dir, self.settings = Path(project_dir), settings
        strategy = settings.config.selection.strategy
        if strategy not in IMAGE_STRATEGIES or strategy in unsupported_strategies():
            ok = sorted(set(IMAGE_STRATEGIES) - unsupported_strategies())
            raise ValueError(f"serve ranks with image strategies {', '.join(ok)}; got {strategy!r}")
        self._write_lock = threading.Lock()  # webhooks apply one at a time (SQLite has one writer anyway)
        self._predict_lock = threading.Lock()  # one forward pass at a time: 2 cores, no oversubscription
        self._train_lock = threading.Lock()
        self._train_thread: threading.Thread | None = None
        self.trainings = 0  # finished trainings, kept or not (tests and /health read it)
        with self.store() as project:
            self.classes = project.classes
            self.sizes = {r.path: r.size for r in project.images()}
            self.root = project.image_root
            self.model, self.detections, self.priority, map50 = self._load_model(project)
            # the first version's mAP is the one its training recorded (the bar the next model must reach)
            self.state = project.get_meta(VERSION_META) or {"version": 1, "map50": map50}

    # -- state ----------------------------------------------------------------------------------
    @contextmanager
    def store(self) -> Iterator[Project]:
        """A store connection for one call: SQLite connections stay in their thread, and the server
        runs each request in a thread of its own."""
        project = Project.open(self.dir, timeout=30.0)
        try:
            yield project
        finally:
            project.close()

    @property
    def model_version(self) -> str:
        return f"boxloop-v{self.state['version']}"

    def _load_model(self, project: Project) -> tuple[Any, dict[str, Detections], dict[str, float], float | None]:
        """The current model, its predictions on the pool, the strategy's priority of each pool image and
        the validation mAP50 its training recorded."""
        from boxloop.loop.model import current_checkpoint
        from boxloop.loop.round import pool_paths
        from boxloop.predict.inference import predict_paths
        from boxloop.strategies import registered, select
        from boxloop.train.checkpoints import load_detector

        cfg = self.settings.config
        model, _, meta = load_detector(current_checkpoint(project), expect_classes=self.classes, device="cpu")
        pool = [k for k in pool_paths(project) if (self.root / k).is_file()]
        dets: dict[str, Detections] = {}
        for start in range(0, len(pool), 8):  # the lock per chunk: a live predict waits one chunk at most
            part = pool[start:start + 8]
            with self._predict_lock:
                dets.update(predict_paths(model, [self.root / k for k in part], cfg.training.image_size, device="cpu",
                                          score_threshold=min(cfg.prediction.score_threshold, cfg.selection.t_d),
                                          progress=False, on_skip=lambda p, why: log.warning("%s: %s", p, why),
                                          keys=part))
        priority: dict[str, float] = {}
        if dets:
            takes_share = registered(cfg.selection.strategy).empty_share
            options = {"empty_share": cfg.selection.empty_share} if takes_share else {}
            sel = select(cfg.selection.strategy, dets, len(dets), rng=cfg.training.seed, **options)
            priority = {k: 1.0 - i / len(dets) for i, k in enumerate(sel.items)}
        return model, dets, priority, meta.get("best_map50")

    # -- setup and predict ----------------------------------------------------------------------
    def check_config(self, label_config: str) -> tuple[str, str, str, set[str]]:
        """(from_name, to_name, image data field, labels) of a labeling config whose labels the project knows."""
        try:
            from_name, to_name, field, labels = config_labels(label_config)
        except FormatError as e:
            raise ServeError(400, str(e)) from None
        unknown = [n for n in labels if n not in self.classes]
        if unknown:
            raise ServeError(400, f"label(s) {', '.join(map(repr, unknown))} in the labeling config are not "
                                  f"in the project's classes {self.classes}; nothing was written")
        return from_name, to_name, field, set(labels)

    def setup(self, payload: dict) -> dict:
        """Check the project's labeling config; remember the Label Studio project as a known sender."""
        schema = payload.get("schema") or payload.get("label_config")
        if not isinstance(schema, str):
            raise ServeError(400, "setup needs 'schema', the project's labeling config")
        self.check_config(schema)
        access = self.settings.access
        if not access.label_studio_url and isinstance(payload.get("hostname"), str) and payload.get("access_token"):
            # Label Studio >= 1.13 sends its address and a token with setup: uploads can be fetched with them
            self.settings.access = replace(access, label_studio_url=payload["hostname"],
                                           api_token=str(payload["access_token"]))
        ls_project = str(payload.get("project", "")).split(".")[0]
        if ls_project:
            with self._write_lock, self.store() as project:
                known = set(project.get_meta(PROJECTS_META, []))
                if ls_project not in known:
                    project.set_meta(PROJECTS_META, sorted(known | {ls_project}))
        return {"model_version": self.model_version}

    def _image_key(self, task: dict, i: int, field: str) -> str | None:
        try:
            key, _ = task_key(task, i, f"task {task.get('id', i + 1)}", self.sizes, field)
        except FormatError as e:
            raise ImageRefused(str(e)) from None
        return key

    def _detect(self, project: Project, task: dict, i: int, field: str) -> tuple[Detections, float | None]:
        key = self._image_key(task, i, field)
        model, dets, priority = self.model, self.detections, self.priority  # one consistent generation
        if key is not None and key in dets:  # answered since the last ranking: nothing left to ask
            return dets[key], 0.0 if project.image(key).status == "labelled" else priority.get(key, 0.0)
        from boxloop.images import ImageError
        from boxloop.predict.inference import predict_paths

        cfg = self.settings.config
        with tempfile.TemporaryDirectory() as tmp:
            if key is not None:
                path = self.root / key
            else:
                url = (task.get("data") or {}).get(field)
                if not isinstance(url, str):
                    raise ImageRefused(f"task has no data.{field} URL")
                path = Path(tmp) / "image"
                path.write_bytes(self.settings.access.read(url))
            try:
                with self._predict_lock:
                    (_, det), = predict_paths(model, [path], cfg.training.image_size, device="cpu",
                                              score_threshold=cfg.prediction.score_threshold, progress=False)
            except (ImageError, OSError, ValueError) as e:
                raise ImageRefused(f"cannot decode the image: {e}") from None
        return det, (0.0 if key is not None else None)  # labelled images: nothing left to ask

    def _answer(self, project: Project, task: dict, i: int, field: str
                ) -> tuple[Detections, float | None] | ImageRefused:
        try:
            return self._detect(project, task, i, field)
        except ImageRefused as e:
            return e

    def predict(self, payload: dict) -> dict:
        """One entry per task, in order: boxes with scores and the task's priority, or why not."""
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ServeError(400, "predict needs 'tasks', a list of task objects")
        config = payload.get("label_config")
        from_name, to_name, field, labels = (self.check_config(config) if isinstance(config, str)
                                             else (None, None, TO_NAME, None))
        with self.store() as project:
            answers = [self._answer(project, task, i, field) for i, task in enumerate(tasks)]
        results: list[dict[str, Any]] = []
        for i, (task, answer) in enumerate(zip(tasks, answers)):
            if isinstance(answer, ImageRefused):
                results.append({"task": task.get("id"), "error": str(answer), "model_version": self.model_version})
                continue
            det, score = answer
            ann = det[det.scores >= self.settings.display_threshold].to_annotation(str(task.get("id", i)), self.classes)
            result = [r for r in box_results(ann, f"p{task.get('id', i)}_", with_scores=True)
                      if labels is None or r["value"]["rectanglelabels"][0] in labels]  # only the config's labels
            for r in result:
                r["from_name"], r["to_name"] = from_name or r["from_name"], to_name or r["to_name"]
            entry: dict[str, Any] = {"result": result, "model_version": self.model_version}
            if score is not None:
                entry["score"] = score
            else:
                entry["note"] = "image not in the boxloop project: no priority"
            results.append(entry)
        return {"results": results, "model_version": self.model_version}

    # -- webhooks -------------------------------------------------------------------------------
    def webhook(self, payload: dict) -> dict:
        """Apply one Label Studio webhook; 4xx for an unknown project or task, nothing written then."""
        action = payload.get("action")
        if action == "START_TRAINING":
            return {"training": self.train()}
        if action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            return {"ignored": action}
        project = payload.get("project")
        pid = str(project.get("id") if isinstance(project, dict) else project)
        with self.store() as store:
            known = set(store.get_meta(PROJECTS_META, []))
        if pid not in known:
            raise ServeError(404, f"Label Studio project {pid} is unknown here; connect it (setup) first")
        if action == "ANNOTATIONS_DELETED":  # bulk: {"annotations": [{"id", "task"}]}
            items = payload.get("annotations") or []
            return {"changed": sum(self._retract(a.get("task"), a["id"]) for a in items if isinstance(a, dict)
                                   and "id" in a)}
        task, annotation = payload.get("task"), payload.get("annotation")
        if not isinstance(task, dict) or not isinstance(annotation, dict) or "id" not in annotation:
            raise ServeError(400, f"{action} needs 'task' and 'annotation' objects (with ids)")
        task_id = task.get("id", annotation.get("task"))
        if action == "ANNOTATION_DELETED":
            return {"changed": self._retract(task_id, annotation["id"])}
        config = project.get("label_config") if isinstance(project, dict) else None
        field = self.check_config(config)[2] if isinstance(config, str) else TO_NAME
        return {"changed": self._apply(task, task_id, annotation, field)}

    def _retract(self, task_id: Any, annotation_id: Any) -> bool:
        with self._write_lock, self.store() as project:
            return project.retract_tool_annotation(TOOL, None if task_id is None else str(task_id), str(annotation_id))

    def _apply(self, task: dict, task_id: Any, annotation: dict, field: str, retrain: bool = True) -> bool:
        from boxloop.loop.round import assign_splits

        try:
            key, _ = task_key(task, 0, f"task {task_id}", self.sizes, field)
        except FormatError as e:
            raise ServeError(400, str(e)) from None
        if key is None:
            raise ServeError(404, f"task {task_id}: its image is not in the boxloop project; nothing written")
        try:
            answered = {**task, "data": {**task.get("data", {}), KEY_FIELD: key}, "annotations": [annotation]}
            res = load_tasks([answered], f"task {task_id}", self.sizes, self.classes)
        except FormatError as e:
            raise ServeError(400, str(e)) from None
        who = annotation.get("completed_by")
        who = None if who is None else str(who.get("email", who.get("id")) if isinstance(who, dict) else who)
        at = annotation.get("updated_at") or annotation.get("created_at")
        with self._write_lock, self.store() as project:
            if key not in res.annotations:  # cancelled or skipped: no answer any more
                return project.retract_tool_annotation(TOOL, str(task_id), str(annotation["id"]))
            with project.transaction():
                changed = project.apply_tool_annotation(TOOL, str(task_id), str(annotation["id"]),
                                                        res.annotations[key], who, at)
                if changed:
                    assign_splits(project, [key], self.settings.config, project.tool_seq())
            pending = project.tool_seq() - int(project.get_meta(TRAINED_META, 0))
        if retrain and changed and pending >= self.settings.retrain_every:
            self.train()
        return changed

    def train_request(self, payload: dict) -> dict:
        """Label Studio's train call. Its older form (1.23 without the START_TRAINING flag) posts every
        annotated task: apply them first (idempotent), since Label Studio sends each webhook once with a
        1 s timeout and never again, so answers given while the backend was down arrive only here."""
        tasks = payload.get("annotations")
        applied = 0
        if isinstance(tasks, list) and tasks:
            ls_project = str(payload.get("project", "")).split(".")[0]
            with self.store() as store:
                known = set(store.get_meta(PROJECTS_META, []))
            if ls_project not in known:
                raise ServeError(404, f"Label Studio project {ls_project} is unknown here; connect it (setup) first")
            config = payload.get("label_config")
            field = self.check_config(config)[2] if isinstance(config, str) else TO_NAME
            for task in tasks:
                anns = task.get("annotations") if isinstance(task, dict) else None
                if not isinstance(anns, list):
                    continue
                bare = {k: v for k, v in task.items() if k not in ("annotations", "predictions", "drafts")}
                for ann in sorted((a for a in anns if isinstance(a, dict) and "id" in a),
                                  key=lambda a: str(a.get("updated_at") or a.get("created_at") or "")):
                    try:
                        applied += self._apply(bare, task.get("id", ann.get("task")), ann, field, retrain=False)
                    except ServeError as e:  # one bad task must not stop the others (the log says which)
                        log.warning("train call: task %s: %s", task.get("id"), e)
        return {"training": self.train(), "applied": applied}

    # -- training -------------------------------------------------------------------------------
    def pending(self) -> int:
        """Changes from Label Studio since the last training finished."""
        with self.store() as project:
            return project.tool_seq() - int(project.get_meta(TRAINED_META, 0))

    def resume(self) -> None:
        """After a restart: a training that was due (or killed) starts again (its folder resumes)."""
        if self.pending() >= self.settings.retrain_every:
            self.train()

    def train(self) -> str:
        """Start a training in the background unless one runs: 'started' or 'running'."""
        with self._train_lock:
            if self._train_thread is not None and self._train_thread.is_alive():
                return "running"
            self._train_thread = threading.Thread(target=self._train, name="boxloop-serve-train", daemon=True)
            self._train_thread.start()
        return "started"

    def wait_training(self, timeout: float | None = None) -> None:
        thread = self._train_thread
        if thread is not None:
            thread.join(timeout)

    @property
    def training(self) -> bool:
        return self._train_thread is not None and self._train_thread.is_alive()

    def _train(self) -> None:
        """Train until no training is due (answers that came in meanwhile trigger the next one)."""
        project = Project.open(self.dir, timeout=30.0)  # this thread's own connection, closed at the end
        try:
            while True:
                self._train_once(project)
                if project.tool_seq() - int(project.get_meta(TRAINED_META, 0)) < self.settings.retrain_every:
                    break
        except Exception:  # a failed training must not take the server down; the log says why
            log.exception("training failed")
        finally:
            project.close()

    def _train_once(self, project: Project) -> None:
        from boxloop.loop.model import current_checkpoint, set_current_checkpoint, train_project

        with project.writer_lock():
            seq = project.tool_seq()
            before = current_checkpoint(project)
            result, _, _ = train_project(project, self.settings.config, progress=False)
            old, new = self.state.get("map50"), result.best_map50
            kept = old is None or (new is not None and new >= old)
            state = {"version": self.state["version"] + 1, "map50": new} if kept else self.state
            with project.transaction():
                if not kept:
                    set_current_checkpoint(project, before)
                project.set_meta(VERSION_META, state)
                project.set_meta(TRAINED_META, seq)
            # the pool changed either way (answered images left it): rank it again, with the kept model
            model, dets, priority, _ = self._load_model(project)
            self.model, self.detections, self.priority, self.state = model, dets, priority, state
        self.trainings += 1
        log.info("training done: validation mAP50 %s (before %s); %s", new, old, "kept" if kept else "not kept")
