"""`boxloop serve` speaks Label Studio's ML backend protocol: a real server on 127.0.0.1 over a real
tiny trained project (12 images of 64 px, 6 labelled), no Label Studio. Shapes of health, setup and
predict; priorities present and in the strategy's order; bad labels, URLs and paths refused with a
message; webhooks idempotent, with provenance, DELETE retiring the boxes, a threaded burst neither
losing nor doubling an answer; predict answered while a retraining runs; basic auth."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.cli.options import loop_config
from boxloop.formats.labelstudio import labeling_config
from boxloop.serve import Backend, ServeSettings, make_server
from boxloop.serve.images import ImageAccess
from boxloop.store import Project
from boxloop.strategies import select

TRAIN = ("--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--steps", "2",
         "--image-size", "64", "--batch-size", "4", "--device", "cpu")
LABELLED = 6


@pytest.fixture(scope="module")
def trained(make_synthetic, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A trained project (6 of 12 images labelled) to copy per test, and the synthetic data."""
    syn = make_synthetic(n_images=12, image_size=64, seed=3)
    base = tmp_path_factory.mktemp("serve_project")
    ann = base / "annotations"
    ann.mkdir()
    for xml in sorted(syn.annotations_dir.glob("*.xml"))[:LABELLED]:
        shutil.copy(xml, ann / xml.name)
    project = base / "proj"
    for args in (("init", project, "--images", syn.images, "--annotations", ann, "--test-fraction", "0.2"),
                 ("train", project, *TRAIN)):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output + repr(res.exception)
    return project, syn


class Client:
    def __init__(self, url: str, backend: Backend, project: Path, auth: str | None = None) -> None:
        self.url, self.backend, self.project, self.auth = url, backend, project, auth

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        if self.auth:
            headers["Authorization"] = "Basic " + base64.b64encode(self.auth.encode()).decode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


@pytest.fixture()
def client(trained, tmp_path: Path) -> Iterator[Client]:
    src, _ = trained
    project = tmp_path / "proj"
    shutil.copytree(src, project)
    cfg = loop_config(model="fcos", backbone="mobilenet_v3_large", no_pretrained=True, steps=2, image_size=64,
                      batch_size=4, device="cpu", strategy="least_confidence")
    with Project.open(project) as p:
        root = p.image_root
    backend = Backend(project, ServeSettings(cfg, retrain_every=1000, display_threshold=0.0,
                                             access=ImageAccess(roots=(root.resolve(),))))
    server = make_server(backend, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    c = Client(f"http://127.0.0.1:{server.server_address[1]}", backend, project)
    assert c.call("POST", "/setup", {"project": "7.1700000000", "schema": labeling_config(backend.classes)})[0] == 200
    yield c
    backend.wait_training(300)
    server.shutdown()
    server.server_close()


def _task(key: str, tid: int = 1) -> dict:
    return {"id": tid, "data": {"image": f"/data/local-files/?d={key}", "boxloop_key": key}}


def _annotation(aid: int, tid: int, labels: list[str], who: int = 3) -> dict:
    result = [{"id": f"r{i}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
               "original_width": 64, "original_height": 64, "image_rotation": 0,
               "value": {"x": 10.0 + i, "y": 10.0, "width": 30.0, "height": 40.0, "rotation": 0,
                         "rectanglelabels": [lab]}} for i, lab in enumerate(labels)]
    return {"id": aid, "task": tid, "result": result, "was_cancelled": False, "completed_by": who,
            "created_at": "2026-12-08T01:00:00Z", "updated_at": "2026-12-08T01:00:00Z"}


def _hook(c: Client, action: str, key: str, tid: int, aid: int, labels: list[str]) -> tuple[int, Any]:
    return c.call("POST", "/webhook", {"action": action, "project": {"id": 7}, "task": _task(key, tid),
                                       "annotation": _annotation(aid, tid, labels)})


def _pool(c: Client) -> list[str]:
    return sorted(c.backend.priority)


def _human(c: Client, key: str) -> int:
    with Project.open(c.project) as p:
        ann = p.annotations("labelled").get(key)
        return -1 if ann is None else len(ann)


def test_health_setup_predict_shapes_and_scores(client: Client) -> None:
    status, health = client.call("GET", "/health")
    assert status == 200 and health["status"] == "UP" and health["model_version"] == "boxloop-v1"
    pool = _pool(client)
    assert len(pool) >= 4
    status, out = client.call("POST", "/predict", {"tasks": [_task(k, i) for i, k in enumerate(pool)],
                                                   "label_config": labeling_config(client.backend.classes),
                                                   "project": "7.1700000000"})
    assert status == 200 and out["model_version"] == "boxloop-v1"
    assert len(out["results"]) == len(pool)
    scores = [r["score"] for r in out["results"]]
    assert all(0 < s <= 1 for s in scores) and len(set(scores)) == len(scores)  # the strategy's order
    for r in out["results"]:
        for box in r["result"]:
            assert box["type"] == "rectanglelabels" and box["from_name"] == "label" and box["to_name"] == "image"
            assert 0 <= box["score"] <= 1 and box["value"]["rectanglelabels"][0] in client.backend.classes
    # the tasks sorted by score are the strategy's order over the pool (the registry's select)
    sel = select("least_confidence", {k: client.backend.detections[k] for k in pool}, len(pool), rng=0)
    assert [k for _, k in sorted(zip(scores, pool), reverse=True)] == list(sel.items)
    # a project's own names and a subset of the classes: boxes named so, and only of those labels
    config = ('<View><Image name="img" value="$photo"/><RectangleLabels name="bbox" toName="img">'
              '<Label value="circle"/></RectangleLabels></View>')
    tasks = [{"id": i, "data": {"photo": f"/data/local-files/?d=somewhere/{k}"}} for i, k in enumerate(pool)]
    out = client.call("POST", "/predict", {"tasks": tasks, "label_config": config})[1]
    assert [r["score"] for r in out["results"]] == scores  # mapped to the project's images by name
    boxes = [b for r in out["results"] for b in r["result"]]
    assert all(b["from_name"] == "bbox" and b["to_name"] == "img" and b["value"]["rectanglelabels"] == ["circle"]
               for b in boxes)


def test_unknown_label_is_refused_by_name(client: Client) -> None:
    with Project.open(client.project) as p:
        before = p.get_meta("serve_label_studio_projects")
    status, out = client.call("POST", "/setup", {"project": "8.1", "schema": labeling_config(["circle", "unicorn"])})
    assert status == 400 and "unicorn" in out["error"]
    with Project.open(client.project) as p:
        assert p.get_meta("serve_label_studio_projects") == before  # nothing written


def test_bad_url_and_traversal_are_per_task_errors(client: Client) -> None:
    good = _pool(client)[0]
    tasks = [{"id": 1, "data": {"image": "http://127.0.0.1:9/nothing.jpg"}},
             {"id": 2, "data": {"image": "/data/local-files/?d=../../../etc/passwd"}},
             {"id": 3, "data": {"image": "file:///etc/passwd"}},
             {"id": 4, "data": {"image": "ftp://example.com/a.jpg"}},
             _task(good, 5)]
    status, out = client.call("POST", "/predict", {"tasks": tasks})
    assert status == 200
    r = out["results"]
    assert "result" not in r[0] and "fetch" in r[0]["error"]
    assert "result" not in r[1] and ".." in r[1]["error"]
    assert "result" not in r[2] and "outside the allowed roots" in r[2]["error"]
    assert "result" not in r[3] and "scheme" in r[3]["error"]
    assert "result" in r[4] and "score" in r[4]


def test_malformed_and_unknown_are_4xx(client: Client) -> None:
    assert client.call("POST", "/predict", raw=b"{not json")[0] == 400
    assert client.call("POST", "/nope", {})[0] == 404
    key = _pool(client)[0]
    status, out = client.call("POST", "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 99},
                                                   "task": _task(key), "annotation": _annotation(1, 1, ["circle"])})
    assert status == 404 and "99" in out["error"]
    status, out = _hook(client, "ANNOTATION_CREATED", "no/such.png", 1, 1, ["circle"])
    assert status in (400, 404)
    status, out = _hook(client, "ANNOTATION_CREATED", key, 1, 1, ["unicorn"])
    assert status == 400 and "unicorn" in out["error"]
    assert _human(client, key) == -1  # nothing written


def test_webhook_idempotent_with_provenance_and_delete(client: Client) -> None:
    key = _pool(client)[0]
    assert _hook(client, "ANNOTATION_CREATED", key, 11, 21, ["circle", "square"]) == (201, {"changed": True})
    with Project.open(client.project) as p:
        before = (p.table_sizes(), p.tool_seq())
    assert _hook(client, "ANNOTATION_CREATED", key, 11, 21, ["circle", "square"]) == (201, {"changed": False})
    with Project.open(client.project) as p:
        assert p.tool_seq() == before[1]
        (rec,) = p.tool_annotations()
        assert (rec["task_id"], rec["annotation_id"], rec["image"], rec["who"]) == ("11", "21", key, "3")
        assert rec["at"] == "2026-12-08T01:00:00Z" and len(rec["box_ids"]) == 2
        assert p.image(key).split in ("train", "val")
    assert _human(client, key) == 2
    assert _hook(client, "ANNOTATION_UPDATED", key, 11, 21, ["circle"])[1] == {"changed": True}
    assert _human(client, key) == 1
    assert _hook(client, "ANNOTATION_DELETED", key, 11, 21, [])[1] == {"changed": True}
    assert _hook(client, "ANNOTATION_DELETED", key, 11, 21, [])[1] == {"changed": False}
    assert _human(client, key) == -1
    # Label Studio's bulk form names the annotations only: the same boxes go
    assert _hook(client, "ANNOTATION_CREATED", key, 11, 22, ["square"])[1] == {"changed": True}
    bulk = {"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": [{"id": 22}]}
    assert client.call("POST", "/webhook", bulk) == (201, {"changed": 1})
    assert client.call("POST", "/webhook", bulk) == (201, {"changed": 0})
    assert _human(client, key) == -1
    with Project.open(client.project) as p:
        assert p.image(key).status == "unlabelled" and key in p.image_set("pool")


def test_webhook_burst_from_threads(client: Client) -> None:
    pool = _pool(client)
    jobs = [(pool[i % len(pool)], 100 + i % len(pool), 500 + i) for i in range(40)]

    def send(job: tuple[str, int, int]) -> int:
        key, tid, aid = job
        return _hook(client, "ANNOTATION_CREATED", key, tid, aid, ["circle"])[0]

    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(send, jobs + jobs))  # every webhook twice
    assert set(codes) == {201}
    with Project.open(client.project) as p:
        recs = p.tool_annotations()
        assert sorted(r["annotation_id"] for r in recs) == sorted(str(a) for _, _, a in jobs)
        assert p.tool_seq() == len(jobs)  # the duplicates changed nothing
        for key in pool:  # one live answer's boxes per image, never two
            assert len(p.annotations("labelled")[key]) == 1


def _gated_training(monkeypatch: pytest.MonkeyPatch, map50: float | None = None) -> threading.Event:
    """train_project waits for the returned event, then trains for real (map50 None) or returns a
    result with that validation mAP50 and a copy of the current model as its checkpoint."""
    import boxloop.loop.model as model_mod

    real, gate = model_mod.train_project, threading.Event()

    def gated(project, config, *args, **kw):
        assert gate.wait(120)
        if map50 is None:
            return real(project, config, *args, **kw)
        ckpt = project.dir / "models" / f"fake_{map50}.pt"
        shutil.copy(model_mod.current_checkpoint(project), ckpt)
        model_mod.set_current_checkpoint(project, ckpt)
        return SimpleNamespace(best_map50=map50, best_checkpoint=ckpt), 0, 0

    monkeypatch.setattr(model_mod, "train_project", gated)
    return gate


def test_predict_answers_while_training(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _gated_training(monkeypatch)
    assert client.call("POST", "/train", {})[1] == {"training": "started", "applied": 0}
    assert client.backend.training
    status, out = client.call("POST", "/predict", {"tasks": [_task(k, i) for i, k in enumerate(_pool(client))]})
    assert status == 200 and all("result" in r and "score" in r for r in out["results"])
    assert client.call("GET", "/health")[1]["training"] is True
    assert client.call("POST", "/train", {})[1] == {"training": "running", "applied": 0}  # one at a time
    gate.set()
    client.backend.wait_training(300)
    assert client.backend.trainings == 1 and not client.backend.training
    version = client.call("GET", "/health")[1]["model_version"]
    assert version in ("boxloop-v1", "boxloop-v2")  # v2 only when the new model was kept


def test_train_call_catches_up_missed_annotations(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Label Studio 1.23's train call posts every annotated task (webhooks are sent once, 1 s timeout):
    answers the backend missed are applied, idempotently, a cancelled one is not an answer, an unknown
    image is skipped, then one training starts."""
    gate = _gated_training(monkeypatch, -1.0)
    pool = _pool(client)
    cancelled = {**_annotation(32, 2, ["circle"]), "was_cancelled": True}
    body = {"project": "7.1700000000", "label_config": labeling_config(client.backend.classes),
            "params": {"login": None, "password": None},
            "annotations": [{**_task(pool[0], 1), "annotations": [_annotation(31, 1, ["circle", "square"])]},
                            {**_task(pool[1], 2), "annotations": [cancelled]},
                            {**_task("no/such.png", 3), "annotations": [_annotation(33, 3, ["circle"])]}]}
    status, out = client.call("POST", "/train", body)
    assert status == 201 and out == {"training": "started", "applied": 1}, out
    assert _human(client, pool[0]) == 2 and _human(client, pool[1]) == -1
    with Project.open(client.project) as p:
        assert [(r["task_id"], r["annotation_id"]) for r in p.tool_annotations()] == [("1", "31")]
    gate.set()
    client.backend.wait_training(300)
    assert client.call("POST", "/train", body)[1]["applied"] == 0  # the same call again changes nothing
    status, out = client.call("POST", "/train", {**body, "project": "99.1"})
    assert status == 404 and "99" in out["error"]
    client.backend.wait_training(300)


@pytest.mark.parametrize("map50, version", [(-1.0, "boxloop-v1"), (2.0, "boxloop-v2")])
def test_retrain_after_n_answers_bumps_only_a_kept_model(client: Client, monkeypatch: pytest.MonkeyPatch,
                                                         map50: float, version: str) -> None:
    gate = _gated_training(monkeypatch, map50)
    gate.set()
    client.backend.settings.retrain_every = 2
    with Project.open(client.project) as p:
        before = p.get_meta("current_checkpoint")
    pool = _pool(client)
    _hook(client, "ANNOTATION_CREATED", pool[0], 1, 1, ["circle"])
    assert not client.backend.training and client.backend.trainings == 0
    _hook(client, "ANNOTATION_CREATED", pool[1], 2, 2, ["circle"])  # the N-th answer starts a training
    client.backend.wait_training(300)
    assert client.backend.trainings == 1 and client.backend.pending() == 0
    assert client.call("GET", "/health")[1]["model_version"] == version
    with Project.open(client.project) as p:
        assert (p.get_meta("current_checkpoint") == before) == (version == "boxloop-v1")
    out = client.call("POST", "/predict", {"tasks": [_task(pool[0]), _task(pool[2], 2)]})[1]
    assert out["model_version"] == version
    assert out["results"][0]["score"] == 0.0 and out["results"][1]["score"] > 0  # answered: nothing left to ask


def test_kill_during_webhook_write_leaves_nothing(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import boxloop.loop.round as round_mod

    key = _pool(client)[0]

    def killed(*args, **kw):
        raise RuntimeError("killed mid-write")

    with monkeypatch.context() as m:
        m.setattr(round_mod, "assign_splits", killed)
        assert _hook(client, "ANNOTATION_CREATED", key, 5, 6, ["circle"])[0] == 500
    assert _human(client, key) == -1
    with Project.open(client.project) as p:
        assert p.tool_seq() == 0 and p.tool_annotations(include_deleted=True) == []
    # Label Studio sends it again (or the annotator saves again): applied once
    assert _hook(client, "ANNOTATION_CREATED", key, 5, 6, ["circle"])[1] == {"changed": True}
    assert _hook(client, "ANNOTATION_CREATED", key, 5, 6, ["circle"])[1] == {"changed": False}
    assert _human(client, key) == 1


def test_restart_resumes_a_due_training(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill during training leaves the answers counted as untrained: the next start trains."""
    pool = _pool(client)
    for i in range(3):
        _hook(client, "ANNOTATION_CREATED", pool[i], i, i, ["square"])
    assert client.backend.pending() == 3  # retrain_every is 1000 here: nothing trained yet
    _gated_training(monkeypatch, 2.0).set()
    settings = client.backend.settings
    again = Backend(client.project, ServeSettings(settings.config, retrain_every=3, access=settings.access))
    again.resume()
    again.wait_training(300)
    assert again.trainings == 1 and again.pending() == 0 and again.model_version == "boxloop-v2"


def test_basic_auth(trained, tmp_path: Path) -> None:
    src, _ = trained
    cfg = loop_config(model="fcos", backbone="mobilenet_v3_large", no_pretrained=True, steps=2, image_size=64,
                      batch_size=4, device="cpu", strategy="least_confidence")
    backend = Backend(src, ServeSettings(cfg))
    server = make_server(backend, "127.0.0.1", 0, auth=("ann", "secret"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert Client(url, backend, src).call("GET", "/health")[0] == 401
        assert Client(url, backend, src, auth="ann:wrong").call("GET", "/health")[0] == 401
        assert Client(url, backend, src, auth="ann:secret").call("GET", "/health")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_maps_an_uploaded_image_by_name(client: Client) -> None:
    """A task Label Studio made from an upload (hash-prefixed name, the config's own data field)."""
    key = _pool(client)[1]
    config = ('<View><Image name="img" value="$photo"/><RectangleLabels name="bbox" toName="img">'
              '<Label value="circle"/></RectangleLabels></View>')
    annotation = _annotation(31, 41, ["circle"])
    for r in annotation["result"]:
        r["from_name"], r["to_name"] = "bbox", "img"
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": config},
               "task": {"id": 41, "data": {"photo": f"/data/upload/7/0a1b2c3d-{key.rsplit('/', 1)[-1]}"}},
               "annotation": annotation}
    assert client.call("POST", "/webhook", payload) == (201, {"changed": True})
    assert _human(client, key) == 1


def _start_serve(project: Path, port: int, *extra: str) -> "subprocess.Popen":
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "boxloop.cli", "serve", str(project), "--port", str(port), "--strategy",
           "least_confidence", "--display-threshold", "0", *TRAIN, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode(errors="replace") if proc.stdout else "serve exited")
    proc.kill()
    raise AssertionError("boxloop serve did not answer /health within 120 s")


def test_kill_9_mid_burst_and_mid_training_then_restart(trained, tmp_path: Path) -> None:
    """The real thing: `boxloop serve` killed (SIGKILL) while webhooks arrive and while it trains; after
    a restart Label Studio's resent webhooks are applied once, and the due training runs again."""
    import socket

    src, _ = trained
    project = tmp_path / "proj"
    shutil.copytree(src, project)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = _start_serve(project, port, "--retrain-every", "4")
    c = Client(url, None, project)  # type: ignore[arg-type]
    with Project.open(project) as p:
        classes, pool = p.classes, sorted(p.image_set("pool"))
    assert c.call("POST", "/setup", {"project": "7.1", "schema": labeling_config(classes)})[0] == 200
    jobs = [(pool[i % len(pool)], 300 + i % len(pool), 700 + i) for i in range(12)]
    acked: list[int] = []

    def send() -> None:
        for key, tid, aid in jobs:
            try:
                if _hook(c, "ANNOTATION_CREATED", key, tid, aid, ["circle"])[0] == 201:
                    acked.append(aid)
            except OSError:
                return

    sender = threading.Thread(target=send)
    sender.start()
    while len(acked) < 5:  # the 4th answer started a training: kill mid-burst, mid-training
        time.sleep(0.01)
    proc.kill()
    proc.wait(30)
    sender.join(60)
    with Project.open(project) as p:
        recorded = {int(r["annotation_id"]) for r in p.tool_annotations()}
        at_kill = len(recorded)
        assert set(acked) <= recorded and len(recorded) == p.tool_seq()  # acknowledged = stored, none half
        assert p.get_meta("serve_trained_seq") is None  # the training died unfinished
    proc = _start_serve(project, port, "--retrain-every", "4")
    try:
        for key, tid, aid in jobs:  # Label Studio resends what it did not get an answer for (here: all)
            assert _hook(c, "ANNOTATION_CREATED", key, tid, aid, ["circle"])[0] == 201
        deadline = time.monotonic() + 240
        while c.call("GET", "/health")[1]["training"] and time.monotonic() < deadline:
            time.sleep(0.5)
        with Project.open(project) as p:
            recs = p.tool_annotations()
            assert sorted(int(r["annotation_id"]) for r in recs) == sorted(a for _, _, a in jobs)
            assert p.tool_seq() == len(jobs)  # each applied once, whatever was resent
            assert all(len(p.annotations("labelled")[k]) == 1 for k in {k for k, _, _ in jobs})
            trained_seq = p.get_meta("serve_trained_seq")  # the due training ran after the restart
            assert trained_seq >= at_kill and len(jobs) - trained_seq < 4
    finally:
        proc.kill()
        proc.wait(30)


def test_cli_refuses_a_strategy_it_cannot_rank_with(trained) -> None:
    src, _ = trained
    res = CliRunner().invoke(app, ["serve", str(src), "--strategy", "typical", "--port", "0"])
    assert res.exit_code == 1 and "serve ranks with image strategies" in res.output


def test_upload_fetched_with_the_token_which_stays_home() -> None:
    """An upload is fetched from Label Studio with its token; a redirect elsewhere gets no token."""
    import http.server

    seen: dict[str, str | None] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen[self.path] = self.headers.get("Authorization")
            if self.path.startswith("/data/upload/"):
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{elsewhere.server_address[1]}/bucket/a.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"png")

    home = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    for s in (home, elsewhere):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        access = ImageAccess(label_studio_url=f"http://127.0.0.1:{home.server_address[1]}", api_token="T0KEN")
        assert access.read("/data/upload/3/0a1b2c3d-a.png") == b"png"
        assert seen == {"/data/upload/3/0a1b2c3d-a.png": "Token T0KEN", "/bucket/a.png": None}
        with pytest.raises(Exception, match="served by Label Studio"):
            ImageAccess().read("/data/upload/3/0a1b2c3d-a.png")
    finally:
        for s in (home, elsewhere):
            s.shutdown()
            s.server_close()
