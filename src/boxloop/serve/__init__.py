"""`boxloop serve`: the loop inside Label Studio, as a Label Studio ML backend.

Protocol (checked against label-studio-ml-backend's label_studio_ml/api.py; neither `label-studio`
nor `label-studio-ml` is installed in boxloop's environment): GET /health (and /) -> {"status": "UP",
"model_class", "model_version"}; POST /setup {"project", "schema", ...} -> {"model_version"};
POST /predict {"tasks", "label_config", "project"} -> {"results": [one entry per task, in the tasks'
order], "model_version"}, each entry {"result": [rectanglelabels with per-box "score"], "score": the
strategy's priority, "model_version"}; a task that cannot be answered gets {"task", "error"} and no
"result"; POST /webhook {"action", "project", "task", "annotation"} -> 201 (ANNOTATION_CREATED,
ANNOTATION_UPDATED, ANNOTATION_DELETED, START_TRAINING); POST /train (the older SDK's) starts a training.

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
