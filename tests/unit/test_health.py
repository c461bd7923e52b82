"""/metrics, /healthz, /readyz (pulse.health) and the readiness probes of the runtimes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from pulse.config import Settings
from pulse.health import Readiness, serve


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture()
def server():
    readiness = Readiness()
    srv = serve("127.0.0.1", 0, readiness)
    yield srv.server_address[1], readiness
    srv.shutdown()
    srv.server_close()


def test_endpoints(server) -> None:
    port, readiness = server
    code, body = _get(port, "/metrics")
    assert code == 200 and b"pulse_events_in_total" in body
    assert _get(port, "/healthz") == (200, b"ok\n")
    assert _get(port, "/nope")[0] == 404

    # Nothing reported in yet: starting, not ready.
    code, body = _get(port, "/readyz")
    assert code == 503 and json.loads(body)["ready"] is False

    state = {"ok": True}
    readiness.register("replication", lambda: (state["ok"], "detail here"))
    code, body = _get(port, "/readyz")
    assert code == 200
    assert json.loads(body) == {"ready": True, "checks": {"replication": {"ok": True, "detail": "detail here"}}}

    state["ok"] = False
    code, body = _get(port, "/readyz")
    assert code == 503 and json.loads(body)["checks"]["replication"]["ok"] is False

    state["ok"] = True
    readiness.register("broken", lambda: 1 / 0)
    code, body = _get(port, "/readyz")
    assert code == 503
    assert "probe failed" in json.loads(body)["checks"]["broken"]["detail"]
    readiness.unregister("broken")
    assert _get(port, "/readyz")[0] == 200


def _pipeline(**runtime):
    from pulse.runtime.pipeline import Pipeline
    from pulse.sinks.memory import MemorySink

    settings = Settings(database={"url": "postgresql://x@127.0.0.1/x"}, runtime=runtime)
    return Pipeline(settings, [MemorySink()])


class _Tracker:
    def __init__(self, oldest: float | None = None) -> None:
        self.oldest = oldest

    def oldest_pending_commit_ts(self):
        return self.oldest

    def pending(self) -> int:
        return 0 if self.oldest is None else 3

    def laggards(self) -> list[str]:
        return ["memory"]


def test_pipeline_readiness() -> None:
    p = _pipeline(ready_stall_s=5)
    assert p.readiness() == (False, "starting")
    p.reader = SimpleNamespace(connected=False, last_disconnect="server closed the connection", polled_at=time.monotonic(),
                               acked=0)
    p.tracker = _Tracker()
    p.ready.set()
    ok, detail = p.readiness()
    assert not ok and "disconnected" in detail and "server closed" in detail
    p.reader.connected = True
    assert p.readiness()[0] is True
    # A transaction waits longer than the limit while the acknowledgement stands still: not ready.
    p.tracker = _Tracker(oldest=time.time() - 10)
    p._ack_moved_at = time.monotonic() - 10
    ok, detail = p.readiness()
    assert not ok and "waiting on memory" in detail
    # The acknowledgement moved recently: progress, ready (a backlog that drains is fine).
    p._ack_moved_at = time.monotonic()
    assert p.readiness()[0] is True
    # The replication loop went silent.
    p.reader.polled_at = time.monotonic() - 10
    ok, detail = p.readiness()
    assert not ok and "silent" in detail
    p.reader.polled_at = time.monotonic()
    p.stop()
    assert p.readiness() == (False, "stopping")


def test_consumer_readiness() -> None:
    from pulse.bus.consumer import SinkConsumer

    settings = Settings(runtime={"ready_stall_s": 5})
    c = SinkConsumer(settings, "memory", lambda name: None)
    ok, detail = c.readiness()
    assert not ok and "assignment" in detail
    c.ready.set()
    assert c.readiness()[0] is True
    c.progress_at = time.monotonic() - 10
    ok, detail = c.readiness()
    assert not ok and "committed" in detail
    c.progress_at = time.monotonic()
    c.polled_at = time.monotonic() - 10
    assert c.readiness()[0] is False
