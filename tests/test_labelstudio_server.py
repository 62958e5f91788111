"""Label Studio integration: a real Label Studio server on localhost takes boxloop's query batch and
gives back an export that `boxloop import` turns into labels.

The server is the `label-studio` executable named by $BOXLOOP_LABEL_STUDIO, else the one on PATH; without
either the tests skip (install it in its own virtualenv: `python3 -m venv /tmp/lsvenv &&
/tmp/lsvenv/bin/pip install label-studio`, then `BOXLOOP_LABEL_STUDIO=/tmp/lsvenv/bin/label-studio make test`).
A server that does not answer within $BOXLOOP_LABEL_STUDIO_TIMEOUT seconds (default 300: the first start
migrates a fresh SQLite database) is a skip with the tail of its log. The server runs on a free port with
its own data folder and a user made from the command line (legacy API token), serves the batch images as
local files, and is always stopped.

Flow: a 10-image project (6 labelled) trains 2 steps and `boxloop query --format labelstudio` writes the
batch; over the REST API (urllib, `Authorization: Token ...`) a project is made with the batch's
labeling_config.xml, tasks.json imported, the tasks and predictions read back, the images fetched through
the URLs boxloop wrote, annotations posted as an annotator would (true boxes for two tasks, one skipped),
the project exported as JSON and that file given to `boxloop import`. A second test imports predictions
with boxes and scores (boxloop's writer), accepts them as annotations and reads the export back. A third
runs `boxloop serve` as the project's ML backend, connected through /api/ml (the server starts with
ML_BLOCK_LOCAL_IP and SSRF_PROTECTION_ENABLED off, which a backend on 127.0.0.1 needs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.formats.labelstudio import LOCAL_FILES_PREFIX, dump_labelstudio_tasks, labeling_config, load_labelstudio
from boxloop.store import Project
from boxloop.structures import Annotation, Boxes, Provenance, Source

ENV = "BOXLOOP_LABEL_STUDIO"
TOKEN = "boxloop-integration-token-0123456789"
USER, PASSWORD = "u@example.com", "boxloop-test-password"
TRAIN = ("--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--steps", "2",
         "--image-size", "64", "--batch-size", "4", "--device", "cpu")
LABELLED = 6  # of 10 images; the other 4 are the pool
BUDGET = 3

runner = CliRunner()


def cli(*args: object) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


# -- the server ---------------------------------------------------------------------------------------

def _executable() -> str:
    given = os.environ.get(ENV)
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)):
            pytest.fail(f"${ENV}={given} is not an executable file; point it at the `label-studio` script "
                        "(e.g. /tmp/lsvenv/bin/label-studio) or unset it")
        return given
    found = shutil.which("label-studio")
    if found is None:
        pytest.skip(f"Label Studio is not installed: set ${ENV} to the `label-studio` executable "
                    "(python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    url: str
    root: Path  # LOCAL_FILES_DOCUMENT_ROOT
    log: Path

    def call(self, method: str, path: str, body: Any = None, raw: bool = False, timeout: float = 120) -> Any:
        """One REST call with the user's token; JSON in and out (bytes out with raw=True)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path} -> HTTP {e.code}: {e.read()[:2000]!r}\n"
                                 f"server log:\n{_tail(self.log)}") from e
        return payload if raw else json.loads(payload or b"null")


def _answers(url: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(url + path, timeout=5) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    exe = _executable()
    base = tmp_path_factory.mktemp("labelstudio")
    data, root = base / "data", base / "files"
    data.mkdir()
    root.mkdir()
    port = _free_port()
    env = {**os.environ,
           "LABEL_STUDIO_BASE_DATA_DIR": str(data),
           "LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # 1.19+: tokens given at start are 'legacy' tokens
           "ML_BLOCK_LOCAL_IP": "false",  # the backend is on 127.0.0.1: Label Studio blocks local addresses by default
           "SSRF_PROTECTION_ENABLED": "false",  # ... and refuses a local webhook URL (the ML backend's /webhook)
           "SENTRY_DSN": "",  # no error reports sent out (and sentry-sdk 3 refuses the options Label Studio 1.23 passes)
           "FRONTEND_SENTRY_DSN": "",
           "LATEST_VERSION_CHECK": "false",
           "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false",
           "LABEL_STUDIO_COLLECT_ANALYTICS": "false"}
    log = base / "label-studio.log"
    cmd = [exe, "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1",
           "--data-dir", str(data), "--username", USER, "--password", PASSWORD, "--user-token", TOKEN]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=base, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", root, log)
    try:
        limit = float(os.environ.get(ENV + "_TIMEOUT", "300"))
        deadline = time.monotonic() + limit
        while not _answers(srv.url, "/health"):
            if proc.poll() is not None:
                pytest.skip(f"label-studio exited with code {proc.returncode} before answering; "
                            f"log tail:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.skip(f"label-studio did not answer on {srv.url} within {limit:g} s "
                            f"(raise ${ENV}_TIMEOUT on a slow machine); log tail:\n{_tail(log)}")
            time.sleep(1)
        who = srv.call("GET", "/api/current-user/whoami")
        assert who["email"] == USER, who
        yield srv
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


# -- the boxloop side ---------------------------------------------------------------------------------

@dataclass
class Flow:
    project: Path
    batch: Path
    truth: dict[str, Annotation]  # every image's true boxes (from the generator)
    queried: list[str]


@pytest.fixture(scope="module")
def flow(server: Server, make_synthetic, tmp_path_factory: pytest.TempPathFactory) -> Flow:
    """A project with 6 of 10 images labelled, one tiny round, and its Label Studio batch written inside
    the server's local-files document root (as a user would point LOCAL_FILES_DOCUMENT_ROOT at it)."""
    syn = make_synthetic(n_images=10, image_size=64, seed=0)
    base = tmp_path_factory.mktemp("ls_project")
    ann = base / "annotations"
    ann.mkdir()
    for xml in sorted(syn.annotations_dir.glob("*.xml"))[:LABELLED]:
        shutil.copy(xml, ann / xml.name)
    project, batch = base / "proj", server.root / "batch"
    cli("init", project, "--images", syn.images, "--annotations", ann, "--test-fraction", "0.25")
    cli("query", project, "--format", "labelstudio", "--out", batch, *TRAIN, "--budget", BUDGET)
    manifest = json.loads((batch / "batch.json").read_text())
    return Flow(project, batch, syn.annotations, list(manifest["images"].values()))


def _ls_result(ann: Annotation, size: tuple[int, int]) -> list[dict]:
    """An annotator's boxes as Label Studio stores them (percent of the image), computed here by hand."""
    w, h = size
    out = []
    for i, (x0, y0, x1, y1) in enumerate(ann.boxes.xyxy.tolist()):
        out.append({"id": f"gt{i}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                    "original_width": w, "original_height": h, "image_rotation": 0,
                    "value": {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w,
                              "height": 100 * (y1 - y0) / h, "rotation": 0, "rectanglelabels": [ann.labels[i]]}})
    return out


def _new_project(server: Server, title: str, config: str, folder: Path) -> int:
    """A Label Studio project with `config`, allowed to serve the files in `folder` (local storage)."""
    pid = server.call("POST", "/api/projects", {"title": title, "label_config": config})["id"]
    server.call("POST", "/api/storages/localfiles", {"project": pid, "title": title, "path": str(folder),
                                                     "use_blob_urls": False})
    return pid


def _tasks(server: Server, pid: int) -> list[dict]:
    """Every task of project `pid` with its predictions and annotations."""
    listing = server.call("GET", f"/api/tasks?project={pid}&page_size=1000")
    rows = listing["tasks"] if isinstance(listing, dict) else listing
    return [server.call("GET", f"/api/tasks/{t['id']}") for t in rows]


def _export(server: Server, pid: int, out: Path) -> Path:
    out.write_bytes(server.call("GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true",
                                raw=True))
    return out


def _sorted_boxes(ann: Annotation) -> list[tuple]:
    return sorted(zip(ann.labels, map(tuple, np.asarray(ann.boxes.xyxy).round(6).tolist())))


def _same_boxes(got: Annotation, want: Annotation, tol: float = 0.5) -> None:
    g, w = _sorted_boxes(got), _sorted_boxes(want)
    assert [x[0] for x in g] == [x[0] for x in w], (g, w)
    np.testing.assert_allclose(np.array([x[1] for x in g]).reshape(-1, 4),
                               np.array([x[1] for x in w]).reshape(-1, 4), atol=tol)


# -- tests --------------------------------------------------------------------------------------------

def test_query_batch_through_label_studio_and_back(server: Server, flow: Flow, tmp_path: Path) -> None:
    """tasks.json and labeling_config.xml go into a real server as they are; what the annotator submits
    comes back through the real export into exactly those labels; the skipped task stays open."""
    tasks_file = json.loads((flow.batch / "tasks.json").read_text())
    pid = _new_project(server, "boxloop query", (flow.batch / "labeling_config.xml").read_text(), flow.batch)
    imported = server.call("POST", f"/api/projects/{pid}/import", (flow.batch / "tasks.json").read_bytes())
    assert imported["task_count"] == BUDGET, imported

    tasks = _tasks(server, pid)
    by_key = {t["data"]["boxloop_key"]: t for t in tasks}
    assert sorted(by_key) == sorted(flow.queried)
    written = {t["data"]["boxloop_key"]: t for t in tasks_file}
    with Project.open(flow.project) as p:
        sizes = {k: p.image(k).size for k in flow.queried}
    for key, task in by_key.items():
        assert len(task["predictions"]) == 1, task  # the model's boxes, as one pre-annotation
        pred = task["predictions"][0]
        assert pred["model_version"] == "boxloop"
        assert len(pred["result"]) == len(written[key]["predictions"][0]["result"])
        for r in pred["result"]:
            v = r["value"]
            assert 0 <= v["x"] <= 100 and 0 <= v["y"] <= 100 and 0 < v["width"] <= 100 and 0 < v["height"] <= 100
        # the image URL boxloop wrote opens in Label Studio (local-files serving)
        assert task["data"]["image"] == LOCAL_FILES_PREFIX + "batch/" + key
        png = server.call("GET", task["data"]["image"], raw=True)
        assert png == (flow.batch / key).read_bytes()

    # the annotator: the true boxes on two images, the third skipped
    answered, skipped = flow.queried[:2], flow.queried[2]
    assert sum(len(flow.truth[k]) for k in answered) > 0  # boxes to carry, not only negatives
    for key in answered:
        server.call("POST", f"/api/tasks/{by_key[key]['id']}/annotations",
                    {"result": _ls_result(flow.truth[key], sizes[key]), "was_cancelled": False})
    server.call("POST", f"/api/tasks/{by_key[skipped]['id']}/annotations", {"result": [], "was_cancelled": True})
    export = _export(server, pid, tmp_path / "export.json")
    assert len(json.loads(export.read_text())) == BUDGET

    with Project.open(flow.project) as p:
        before = p.annotations("labelled")
        before_status = {r.path: r.status for r in p.images()}
    out = cli("import", flow.project, "--annotations", export, "--format", "labelstudio")
    assert f"imported {len(answered)} images" in out and "1 queries still open" in " ".join(out.split()), out

    with Project.open(flow.project) as p:
        after = p.annotations("labelled")
        status = {r.path: r.status for r in p.images()}
        still_open = [q.path for q in p.queries(state="open")]
    assert set(after) == set(before) | set(answered)
    for key in answered:
        assert status[key] == "labelled"
        _same_boxes(after[key], flow.truth[key])
        assert all(pr.source == Source.HUMAN for pr in after[key].provenance)
    assert still_open == [skipped] and status[skipped] == before_status[skipped]
    for key, ann in before.items():  # nothing else changed
        assert _sorted_boxes(after[key]) == _sorted_boxes(ann), key
    assert {k: v for k, v in status.items() if k not in answered} == \
        {k: v for k, v in before_status.items() if k not in answered}


def test_scored_predictions_survive_label_studio(server: Server, flow: Flow, tmp_path: Path) -> None:
    """boxloop's prediction boxes (with scores) arrive in Label Studio as they were written, and an
    annotator who accepts them exports the same boxes, which boxloop reads back as human labels."""
    with Project.open(flow.project) as p:
        classes, sizes = p.classes, {k: p.image(k).size for k in flow.queried}
    preds: dict[str, Annotation] = {}
    for n, key in enumerate(flow.queried):
        truth = flow.truth[key]
        xyxy = np.clip(np.asarray(truth.boxes.xyxy, dtype=np.float64) + 1.3, 0, 64)
        preds[key] = Annotation(image=key, boxes=Boxes(xyxy, sizes[key]), labels=truth.labels,
                                provenance=tuple(Provenance(source=Source.PREDICTED, score=0.9 - 0.1 * i - 0.01 * n)
                                                 for i in range(len(truth))))
    assert sum(len(a) for a in preds.values()) > 0
    tasks_path = dump_labelstudio_tasks([(k, None, preds[k]) for k in flow.queried], classes,
                                        tmp_path / "tasks.json", image_url_prefix=LOCAL_FILES_PREFIX + "batch/")
    written = {t["data"]["boxloop_key"]: t for t in json.loads(tasks_path.read_text())}
    pid = _new_project(server, "boxloop predictions", labeling_config(classes), flow.batch)
    imported = server.call("POST", f"/api/projects/{pid}/import", tasks_path.read_bytes())
    assert imported["task_count"] == len(flow.queried), imported

    for task in _tasks(server, pid):
        key = task["data"]["boxloop_key"]
        [pred] = task["predictions"]
        want = written[key]["predictions"][0]
        assert len(pred["result"]) == len(preds[key])
        if len(preds[key]):
            assert pred["score"] == pytest.approx(want["score"])
        for got, sent in zip(pred["result"], want["result"]):
            assert got["value"]["rectanglelabels"] == sent["value"]["rectanglelabels"]
            for k in ("x", "y", "width", "height"):
                assert 0 <= got["value"][k] <= 100
                assert got["value"][k] == pytest.approx(sent["value"][k], abs=1e-6)
            assert got.get("score") == pytest.approx(sent["score"])
        # the annotator accepts the pre-annotation as it is
        server.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": pred["result"], "was_cancelled": False})

    export = _export(server, pid, tmp_path / "export.json")
    res = load_labelstudio(export, known_images=sizes, classes=classes)
    assert sorted(res.annotations) == sorted(flow.queried) and res.warnings == []
    for key, ann in res.annotations.items():
        _same_boxes(ann, preds[key], tol=1e-6)
        assert all(pr.source == Source.HUMAN for pr in ann.provenance)
        want_scores = sorted(pr.score for pr in preds[key].provenance)
        assert sorted(pr.score for pr in ann.provenance) == pytest.approx(want_scores)


# -- boxloop serve as the project's ML backend ---------------------------------------------------------

SERVE_LABELLED = 6  # of 10 images; the other 4 are the pool the backend ranks


def _start_serve(project: Path, root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`boxloop serve` in a process of its own, as a user starts it; (process, its URL) once it answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "boxloop.cli", "serve", str(project), "--port", str(port),
           "--local-files-root", str(root), "--retrain-every", "100", "--display-threshold", "0",
           "--strategy", "least_confidence", *TRAIN]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not _answers(url, "/health"):
        assert proc.poll() is None and time.monotonic() < deadline, f"boxloop serve did not start:\n{_tail(log)}"
        time.sleep(0.5)
    return proc, url


def _health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=30) as resp:
        return json.loads(resp.read())


def _predictions(server: Server, pid: int) -> dict[str, dict]:
    """Retrieve predictions for every task (the Data Manager's action), then {image key: task}."""
    server.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                {"selectedItems": {"all": True, "excluded": []}})
    return {t["data"]["image"].split("?d=serve/", 1)[1]: t for t in _tasks(server, pid)}


def _of_version(task: dict, version: str) -> dict:
    found = [p for p in task["predictions"] if p["model_version"] == version]
    assert len(found) == 1, (version, task["predictions"])
    return found[0]


def test_serve_as_label_studio_ml_backend(server: Server, make_synthetic, tmp_path: Path) -> None:
    """The loop inside Label Studio: a project made through its API with boxloop's labeling config, and
    `boxloop serve` connected as its ML backend through /api/ml; predictions carry boxes with scores and
    a task score that is the strategy's order (pool 1, 0.75, ...; labelled 0), so the Data Manager sorted
    by prediction score is the loop's order; an annotation submitted through Label Studio's API reaches
    the store by its webhook (human boxes, task and annotation ids); Label Studio's train call retrains,
    and the next predictions come from the new model version."""
    syn = make_synthetic(n_images=10, image_size=64, seed=5)
    images = server.root / "serve"
    shutil.copytree(syn.images, images)
    ann = tmp_path / "annotations"
    ann.mkdir()
    for xml in sorted(syn.annotations_dir.glob("*.xml"))[:SERVE_LABELLED]:
        shutil.copy(xml, ann / xml.name)
    project = tmp_path / "proj"
    cli("init", project, "--images", images, "--annotations", ann, "--test-fraction", "0.2")
    cli("train", project, *TRAIN)
    with Project.open(project) as p:
        classes, sizes = p.classes, {r.path: r.size for r in p.images()}
        labelled = set(p.annotations("labelled"))
    pool = sorted(set(sizes) - labelled)
    proc, url = _start_serve(project, server.root, tmp_path / "serve.log")
    try:
        pid = _new_project(server, "boxloop serve", labeling_config(classes), images)
        tasks = [{"data": {"image": LOCAL_FILES_PREFIX + "serve/" + key}} for key in sorted(sizes)]
        assert server.call("POST", f"/api/projects/{pid}/import", json.dumps(tasks).encode())["task_count"] == 10
        ml = server.call("POST", "/api/ml", {"url": url, "project": pid, "title": "boxloop", "is_interactive": False})
        assert ml["state"] == "CO" and ml["model_version"] == "boxloop-v1", ml  # healthy, and setup answered

        by_key = _predictions(server, pid)
        # the Data Manager's score column averages the predictions of the project's model version only, and a
        # connected backend sets that to its title ('boxloop'), matching no prediction: pick boxloop's version
        server.call("PATCH", f"/api/projects/{pid}", {"model_version": ml["model_version"]})
        scores = {}
        for key, task in by_key.items():
            pred = _of_version(task, "boxloop-v1")
            scores[key] = pred["score"]
            for r in pred["result"]:  # boxes in the project's config, each with its score
                assert r["from_name"] == "label" and r["to_name"] == "image" and 0 <= r["score"] <= 1, r
                assert r["value"]["rectanglelabels"][0] in classes
        assert all(scores[k] == 0 for k in labelled), scores  # nothing left to ask
        assert sorted(scores[k] for k in pool) == pytest.approx([1 - i / len(pool) for i in range(len(pool))][::-1])
        # (a 2-step model's boxes score below the prediction threshold: `result` is often empty here)

        # the Data Manager sorted by prediction score: the loop's order
        view = server.call("POST", "/api/dm/views", {"project": pid, "data": {
            "title": "boxloop order", "ordering": ["-tasks:predictions_score"], "hiddenColumns": {}}})
        ordered = server.call("GET", f"/api/tasks?view={view['id']}&project={pid}&page_size=100")["tasks"]
        got = [t["data"]["image"].split("?d=serve/", 1)[1] for t in ordered]
        assert got[:len(pool)] == sorted(pool, key=lambda k: -scores[k]), (got, scores)

        # the annotator answers the first task in that order, through Label Studio's API
        first = got[0]
        made = server.call("POST", f"/api/tasks/{by_key[first]['id']}/annotations",
                           {"result": _ls_result(syn.annotations[first], sizes[first]), "was_cancelled": False})
        deadline = time.monotonic() + 60
        while True:  # the webhook reaches the backend (Label Studio sends it as the annotation is saved)
            with Project.open(project) as p:
                rows = p.tool_annotations("label-studio")
                human = p.annotations("labelled").get(first)
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [(r["task_id"], r["annotation_id"], r["image"]) for r in rows] == \
            [(str(by_key[first]["id"]), str(made["id"]), first)], (rows, _tail(tmp_path / "serve.log"))
        assert rows[0]["who"] and rows[0]["at"]
        assert human is not None
        _same_boxes(human, syn.annotations[first])
        assert all(pr.source == Source.HUMAN for pr in human.provenance)

        # Label Studio's train call: one training in the background, then a new version on the next predictions
        server.call("POST", f"/api/ml/{ml['id']}/train", {})
        deadline = time.monotonic() + 600
        while (h := _health(url))["training"] and time.monotonic() < deadline:
            time.sleep(1)
        assert h["model_version"] == "boxloop-v2", (h, _tail(tmp_path / "serve.log"))
        with Project.open(project) as p:  # the train call replays every annotated task: nothing doubled
            assert p.tool_annotations("label-studio") == rows
        by_key = _predictions(server, pid)
        assert server.call("GET", f"/api/ml/{ml['id']}")["model_version"] == "boxloop-v2"
        server.call("PATCH", f"/api/projects/{pid}", {"model_version": "boxloop-v2"})
        ordered = server.call("GET", f"/api/tasks?view={view['id']}&project={pid}&page_size=100")["tasks"]
        assert ordered[0]["id"] != by_key[first]["id"]  # the answered image left the top
        new = {k: _of_version(t, "boxloop-v2")["score"] for k, t in by_key.items()}
        assert new[first] == 0 and all(new[k] == 0 for k in labelled), new
        rest = [k for k in pool if k != first]
        assert sorted(new[k] for k in rest) == pytest.approx([1 - i / len(rest) for i in range(len(rest))][::-1])
    finally:
        _stop(proc)
