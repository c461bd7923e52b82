"""`pulse board`'s HTTP side on a loopback port, fed by a collector with stub readers (no Redis, no PostgreSQL).

Access (loopback only without a token; the token as a bearer or a cookie),
the assets and their Content-Security-Policy, and the event stream: one
`state` event at once and one per collector round, without polling.
"""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from pulse.board.collect import Collector, rates
from pulse.board.server import COOKIE, BoardServer
from pulse.errors import ConfigError


def _collector(board=None, status=None) -> Collector:
    rounds = {"n": 0}

    def read_board(now: float) -> dict:
        rounds["n"] += 1
        if board is not None:
            return board(rounds["n"])
        return {"top": [{"title": f"round {rounds['n']}"}]}

    return Collector(read_board, status, interval_s=60, status_interval_s=60)


@pytest.fixture
def serve():
    servers = []

    def start(collector: Collector, token: str | None = None, host: str = "127.0.0.1") -> BoardServer:
        server = BoardServer(host, 0, collector, token)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _get(server: BoardServer, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


def test_a_non_loopback_bind_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="without a token"):
        BoardServer("0.0.0.0", 0, _collector(), None)
    with pytest.raises(ConfigError, match="empty"):
        BoardServer("127.0.0.1", 0, _collector(), "  ")


def test_the_page_and_its_assets_are_served_with_a_strict_policy(serve) -> None:
    server = serve(_collector())
    page = _get(server, "/")
    body = page.read().decode()
    assert page.status == 200 and 'id="top-table"' in body and "/static/board.js" in body
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "http" not in body.replace("http-equiv", "")  # nothing loaded from the network
    for path, kind in (("/static/board.js", "javascript"), ("/static/board.css", "css")):
        resp = _get(server, path)
        assert resp.status == 200 and kind in resp.headers["Content-Type"] and resp.read()
    assert _get(server, "/etc/passwd").status == 404


def test_with_a_token_every_route_wants_it(serve) -> None:
    collector = _collector()
    collector.collect_once()
    server = serve(collector, token="s3cret-token")
    for path in ("/", "/api/state", "/events", "/static/board.js"):
        assert _get(server, path).status == 401, path
    assert _get(server, "/api/state", {"Authorization": "Bearer wrong"}).status == 401
    ok = _get(server, "/api/state", {"Authorization": "Bearer s3cret-token"})
    assert ok.status == 200 and json.loads(ok.read())["board"]["top"][0]["title"] == "round 1"
    # /?token= once: a cookie (HttpOnly, SameSite=Strict) and a redirect that drops the token from the URL.
    assert _get(server, "/?token=wrong").status == 401
    login = _get(server, "/?token=s3cret-token")
    assert login.status == 303 and login.headers["Location"] == "/"
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert _get(server, "/", {"Cookie": cookie.split(";")[0]}).status == 200
    assert _get(server, "/", {"Cookie": f"{COOKIE}=nope"}).status == 401


def _events(resp, n: int) -> list[dict]:
    out = []
    event = None
    while len(out) < n:
        line = resp.fp.readline().decode()
        assert line, "stream closed"
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == "state":
            out.append(json.loads(line[6:]))
    return out


def test_the_stream_sends_the_state_at_once_and_each_new_round(serve) -> None:
    collector = _collector()
    collector.collect_once()
    server = serve(collector)
    resp = _get(server, "/events")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    [first] = _events(resp, 1)
    assert first["board"]["top"][0]["title"] == "round 1"
    collector.collect_once()  # the collector's round, not the client, drives the next event
    [second] = _events(resp, 1)
    assert second["board"]["top"][0]["title"] == "round 2"
    resp.close()


def test_a_failing_read_is_shown_and_the_next_round_recovers() -> None:
    def board(n: int) -> dict:
        if n == 1:
            raise ConnectionError("redis is down")
        return {"top": []}

    def status() -> dict:
        return {"runtime": {"pid": 1, "updated_at": "t1", "age_s": 0.0, "events_in": 10, "sinks": {}}}

    collector = _collector(board, status)
    collector.collect_once()
    state = collector.state()[1]
    assert "redis is down" in state["errors"]["redis"] and state["board"] is None
    assert state["status"]["runtime"]["events_in"] == 10
    collector.collect_once()
    assert collector.state()[1]["errors"] == {} and collector.state()[1]["board"] == {"top": []}


def test_rates_are_differences_between_two_reports_of_one_process() -> None:
    a = {"pid": 7, "_at": 100.0, "events_in": 1000, "sinks": {"redis": {"written": 900}}}
    b = {"pid": 7, "_at": 102.0, "events_in": 1600, "sinks": {"redis": {"written": 1500}, "new": {"written": 5}}}
    assert rates(a, b) == {"in": 300.0, "sinks": {"redis": 300.0}}
    assert rates(a, dict(b, pid=8))["in"] is None  # a restart: counters started again
    assert rates(None, b)["in"] is None
