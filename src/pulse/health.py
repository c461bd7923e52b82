"""Liveness and readiness of a long-running verb, served with its metrics.

`pulse run`, `produce`, `consume` and `upload` serve, on `runtime.metrics_host:metrics_port`:

    GET /metrics   Prometheus text format (every metric of pulse.metrics)
    GET /healthz   200 `ok` while the process answers (alive: restart it if this fails)
    GET /readyz    200 when every component that reported in is doing its job, else 503;
                   the body is JSON: {"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}

Readiness is a registry: a runtime registers a probe (a function returning
`(ok, detail)`) when it starts and removes it when it stops; `/readyz` runs
them all on each request. What each probe checks is in docs/deploy.md
("Health endpoints"): the replication connection and its acknowledgements
(run, produce), the consumer's assignment and commits (consume), the
uploader's loads (upload). A process with no probe registered yet is
starting, hence not ready.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

Probe = Callable[[], "tuple[bool, str]"]


class Readiness:
    """The probes of one process, by name (thread-safe)."""

    def __init__(self) -> None:
        self._probes: dict[str, Probe] = {}
        self._lock = threading.Lock()

    def register(self, name: str, probe: Probe) -> None:
        with self._lock:
            self._probes[name] = probe

    def unregister(self, name: str) -> None:
        with self._lock:
            self._probes.pop(name, None)

    def check(self) -> tuple[bool, dict[str, dict[str, object]]]:
        with self._lock:
            probes = dict(self._probes)
        if not probes:
            return False, {"starting": {"ok": False, "detail": "no component has reported in yet"}}
        checks: dict[str, dict[str, object]] = {}
        for name, probe in sorted(probes.items()):
            try:
                ok, detail = probe()
            except Exception as exc:  # a broken probe means "not ready", never a crashed endpoint
                ok, detail = False, f"probe failed: {exc}"
            checks[name] = {"ok": bool(ok), "detail": detail}
        return all(c["ok"] for c in checks.values()), checks


READINESS = Readiness()


class _Handler(BaseHTTPRequestHandler):
    readiness: Readiness = READINESS

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        elif path == "/healthz":
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/readyz":
            ready, checks = self.readiness.check()
            body = json.dumps({"ready": ready, "checks": checks}, indent=1).encode() + b"\n"
            self._send(200 if ready else 503, "application/json", body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /healthz, /readyz\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes and probes are not log lines
        pass


def serve(host: str, port: int, readiness: Readiness = READINESS) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on host:port from a daemon thread; returns the server."""
    import pulse.metrics  # noqa: F401 (registers Pulse's metrics, whoever calls first)

    handler = type("Handler", (_Handler,), {"readiness": readiness})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pulse-metrics-http", daemon=True).start()
    return server
