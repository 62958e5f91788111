"""`boxloop serve`: the loop inside Label Studio, as a Label Studio ML backend.

Protocol, checked against label-studio-ml-backend's label_studio_ml/api.py (commit d02cedf, Aug 2026)
and the caller's side, label-studio 1.23.2's ml/api_connector.py and ml/models.py (installed in a venv
of its own for tests/test_labelstudio_server.py; neither is in boxloop's environment):
GET /health (and /) -> {"status": "UP", "model_class", "model_version"}; POST /setup {"project":
"id.timestamp", "schema", "hostname", "access_token", "extra_params"} -> {"model_version"} (Label Studio
calls it before every predict batch and takes the version from it); POST /predict {"tasks", "project",
"label_config", "params"} -> {"results": [one entry per task, in the tasks' order]}, each entry {"result":
[rectanglelabels with per-box "score"], "score": the strategy's priority, "model_version"}. Label Studio
drops the whole batch when the count differs, and skips (logs) an entry without "result": so a task that
cannot be answered gets {"task", "error"} and no "result", and is asked again next time (an empty
"result" would be stored as the model's answer for this version). POST /webhook {"action", "project":
{"id", "label_config", ...}, "task", "annotation"} -> 201 (ANNOTATION_CREATED, ANNOTATION_UPDATED,
ANNOTATION_DELETED, ANNOTATIONS_DELETED with ids only, START_TRAINING; others ignored); Label Studio sends
each once, 1 s timeout, no retry. POST /train: Label Studio 1.23's train call without the START_TRAINING
flag, {"annotations": every annotated task, "project", "label_config", "params"}: the answers are applied
(idempotent: what webhooks missed) and a training starts. Label Studio 1.23 calls a backend on 127.0.0.1
only with ML_BLOCK_LOCAL_IP=false, and makes its webhook only with SSRF_PROTECTION_ENABLED=false.

Chosen: a small server on the standard library (`http.server.ThreadingHTTPServer`), not the SDK.
The SDK (`label-studio-ml`) brings Flask, gunicorn, rq and redis-style job handling and its own
process model for a backend that, here, needs four JSON routes; none of them is installed and no
light framework is (no Flask, FastAPI or Starlette in the venv). The protocol is a few dict shapes,
and the task/result mapping is `boxloop.formats.labelstudio` (the one Label Studio mapping, shared
with `import`/`export`).

Modules: images (Label Studio image URLs -> bytes boxloop can read, confined to allowed roots),
backend (predictions, priorities, webhooks -> store, background retraining), http (routes, basic
auth, error codes). Owns: the server and its state. May import: the root modules, store/, formats/,
strategies/, loop/, predict/, train/; nothing imports serve/ but cli/.
"""

from boxloop.serve.backend import Backend, ServeError, ServeSettings
from boxloop.serve.http import make_server

__all__ = ["Backend", "ServeError", "ServeSettings", "make_server"]
