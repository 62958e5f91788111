"""The HTTP side of `boxloop serve`: routes, optional basic auth, and errors as 4xx with a message.

`http.server.ThreadingHTTPServer` gives each request a thread; the backend serialises what must be
serial (store writes, forward passes), so a predict is never queued behind a training. A body that is
not JSON, too large, or a route that does not exist is a 4xx with {"error": message}; a failure inside
is a 500 with its message, never a dropped connection.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from boxloop.serve.backend import Backend, ServeError

log = logging.getLogger("boxloop.serve")
MAX_BODY = 32 << 20


def _handler(backend: Backend, auth: tuple[str, str] | None) -> type[BaseHTTPRequestHandler]:
    expected = None if auth is None else "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "boxloop-serve"

        def log_message(self, fmt: str, *args: Any) -> None:  # the access log goes to logging, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="boxloop"')
            if status in (401, 413):  # the body was not read: end the connection rather than misread it
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if expected is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), expected.encode()):
                return True
            self._send(401, {"error": "basic auth required"})
            return False

        def _body(self) -> dict:
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise ServeError(400, "bad Content-Length") from None
            if n > MAX_BODY:
                raise ServeError(413, f"body over {MAX_BODY >> 20} MiB")
            raw = self.rfile.read(n) if n else b""
            try:
                doc = json.loads(raw or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ServeError(400, f"malformed JSON: {e}") from None
            if not isinstance(doc, dict):
                raise ServeError(400, "the body must be a JSON object")
            return doc

        def _run(self, fn: Callable[[], tuple[int, dict]]) -> None:
            if not self._authorised():
                return
            try:
                status, body = fn()
            except ServeError as e:
                status, body = e.status, {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - a 500 with the reason, and the traceback in the log
                log.exception("%s %s failed", self.command, self.path)
                status, body = 500, {"error": f"{type(e).__name__}: {e}"}
            self._send(status, body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0].rstrip("/")
            if path in ("", "/health"):
                self._run(lambda: (200, {"status": "UP", "model_class": "boxloop", "model_version":
                                         backend.model_version, "training": backend.training}))
            elif path == "/versions":
                self._run(lambda: (200, {"versions": [backend.model_version]}))
            else:
                self._run(lambda: (404, {"error": f"no route GET {path}"}))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            routes: dict[str, Callable[[dict], tuple[int, dict]]] = {
                "/setup": lambda d: (200, backend.setup(d)),
                "/predict": lambda d: (200, backend.predict(d)),
                "/webhook": lambda d: (201, backend.webhook(d)),
                "/train": lambda d: (201, backend.train_request(d)),
            }

            def route() -> tuple[int, dict]:
                body = self._body()  # read even for a 404: the connection stays in step
                if path not in routes:
                    return 404, {"error": f"no route POST {path}"}
                return routes[path](body)

            self._run(route)

    return Handler


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 9090,
                auth: tuple[str, str] | None = None) -> ThreadingHTTPServer:
    """A server for `backend` (call serve_forever; port 0 picks a free one: server.server_address)."""
    server = ThreadingHTTPServer((host, port), _handler(backend, auth))
    server.daemon_threads = True
    return server
