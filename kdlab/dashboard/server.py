"""The dashboard's HTTP server: the page, its assets, and a small JSON API.

Standard library only (``http.server``, one thread per request): the page is static
HTML, JavaScript and SVG from the package's ``static/`` folder, and every change on it
asks ``POST /api/plan`` with the page's fields.

    GET  /                 the page
    GET  /static/<file>    its script and style
    GET  /api/options      accelerators, defaults, preselected laws, the measured MFU
    POST /api/plan         fields -> the answer (200), {"error": {field, message}} (400)
                           or {"pending": message} (202) while a fit of the runs runs

Bad input never stops the server: it is one sentence beside the field it concerns. An
unexpected failure is answered as a 500 with its one-line description, and logged.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from kdlab.accelerators import ACCELERATORS
from kdlab.dashboard.answer import answer
from kdlab.dashboard.inputs import DEFAULT_MFU, DEFAULTS, FieldError, read_inputs
from kdlab.dashboard.laws import LawsCatalog, Pending, measured_mfu

STATIC = {"index.html": "text/html", "dashboard.js": "text/javascript", "dashboard.css": "text/css"}
MAX_BODY = 1 << 16  # bytes of a request: the fields are a few hundred


def _finite(value: Any) -> Any:
    """NaN and inf (which JSON cannot hold) as null, everywhere in ``value``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Dashboard:
    """What the handler serves: preselected fields, the laws catalogue and the MFU."""

    def __init__(self, db: str | None = None, fit: str | None = None, quiet: bool = False):
        self._tmp = tempfile.TemporaryDirectory(prefix="kdlab-dashboard-")
        self.catalog = LawsCatalog(Path(self._tmp.name))
        self.defaults = dict(DEFAULTS)
        if db:
            self.defaults.update(db=db)
        if fit:
            self.defaults.update(laws="file", fit=fit)
        elif db:
            self.defaults.update(laws="db")
        self.quiet = quiet
        self._mfu: dict[str, tuple[float, int] | None] = {}

    def mfu(self, db: str) -> tuple[float, int] | None:
        if db not in self._mfu:
            self._mfu[db] = measured_mfu(db)
        return self._mfu[db]

    def options(self) -> dict[str, Any]:
        measured = self.mfu(self.defaults["db"])
        return {
            "defaults": self.defaults,
            "accelerators": [
                {"name": a.name, "description": a.description, "bf16_peak": a.bf16_peak_flops}
                for a in ACCELERATORS.values()
            ],
            "default_mfu": DEFAULT_MFU,
            "measured_mfu": None if measured is None else {"mfu": measured[0], "runs": measured[1]},
        }

    def plan(self, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for the page's fields."""
        fields = {**self.defaults, **fields}  # what the command preselected, unless set
        try:
            measured = self.mfu(str(fields["db"]))
            inputs = read_inputs(fields, measured[0] if measured else None)
            laws = self.catalog.get(inputs.fields)
            return HTTPStatus.OK, {"inputs": inputs.fields, **answer(inputs, laws)}
        except FieldError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": {"field": exc.field, "message": str(exc)}}
        except Pending as exc:
            return HTTPStatus.ACCEPTED, {"pending": str(exc)}

    def close(self) -> None:
        self.catalog.close()
        self._tmp.cleanup()


class Handler(BaseHTTPRequestHandler):
    server_version = "kdlab-dashboard"
    dashboard: Dashboard  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        if not self.dashboard.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(_finite(body)).encode(), "application/json")

    def _guarded(self, route: Any) -> None:
        try:
            route()
        except Exception as exc:  # the server outlives any one request
            traceback.print_exc(file=sys.stderr)
            message = f"Internal error: {type(exc).__name__}: {exc}".splitlines()[0]
            self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": {"field": None, "message": message}}
            )

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/options":
            return self._json(HTTPStatus.OK, self.dashboard.options())
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        if name not in STATIC:
            return self._json(
                HTTPStatus.NOT_FOUND, {"error": {"field": None, "message": f"No page {path}."}}
            )
        body = resources.files("kdlab.dashboard").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, body, STATIC[name])

    def _post(self) -> None:
        if self.path != "/api/plan":
            return self._json(
                HTTPStatus.NOT_FOUND, {"error": {"field": None, "message": f"No API {self.path}."}}
            )
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._json(
                HTTPStatus.BAD_REQUEST,
                {"error": {"field": None, "message": "The request has no fields."}},
            )
        try:
            fields = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            fields = None
        if not isinstance(fields, dict):
            return self._json(
                HTTPStatus.BAD_REQUEST,
                {"error": {"field": None, "message": "The fields must be a JSON object."}},
            )
        status, body = self.dashboard.plan(fields)
        self._json(status, body)


def make_server(
    dashboard: Dashboard, host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """A server for ``dashboard`` bound to host:port (0: a free port), not yet serving."""
    handler = type("DashboardHandler", (Handler,), {"dashboard": dashboard})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
