"""`pulse receiver`, the test stand-in, over real HTTP: its control token and its body bound.

The stand-in must not be a hazard when it listens on a network (docker-compose
binds it on 0.0.0.0): control and inspection need a bearer token, a token is
required off loopback, and a request body is never read past `max_body_bytes`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess

import httpx
import orjson
import pytest

from pulse.errors import ConfigError
from pulse.receiver import Receiver
from .pipeline_helpers import pulse_cmd

TOKEN = "test-control-token-0123456789abcdef"


def _ce(i: int, data: str = "x") -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "s", "type": "t", "partitionkey": "c",
            "data": {"content_id": "c", "source_lsn": i, "source_seq": 0, "v": data}}


@pytest.fixture
def receiver():
    rec = Receiver(control_token=TOKEN, max_body_bytes=4096).start()
    yield rec
    rec.stop()


def test_control_and_inspection_need_the_token(receiver):
    url = receiver.url
    bearer = {"authorization": f"Bearer {TOKEN}"}
    wrong = {"authorization": "Bearer not-the-token"}
    # /_reset first: its authorised call clears the counts, the later refusals are then counted below.
    for method, path in (("POST", "_reset"), ("GET", "stats"), ("GET", "events"), ("GET", "_control")):
        assert httpx.request(method, url + path, timeout=5).status_code == 401, path
        assert httpx.request(method, url + path, headers=wrong, timeout=5).status_code == 401, path
        assert httpx.request(method, url + path, headers=bearer, timeout=5).status_code == 200, path
    r = httpx.post(url + "_control", json={"reject_status": 422}, timeout=5)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert receiver.faults.reject_status is None  # the unauthorised request changed nothing
    r = httpx.post(url + "_control", json={"reject_status": 422}, headers=bearer, timeout=5)
    assert r.status_code == 200 and receiver.faults.reject_status == 422
    # Health and the ingest POST stay open (the ingest POST is guarded by the webhook signature instead).
    assert httpx.get(url + "healthz", timeout=5).status_code == 200
    assert httpx.post(url, content=orjson.dumps([_ce(1)]), timeout=5).status_code == 422
    assert receiver.stats()["control_unauthorized"] == 7


def test_a_reset_without_the_token_forgets_nothing(receiver):
    assert httpx.post(receiver.url, content=orjson.dumps([_ce(1), _ce(2)]), timeout=5).status_code == 200
    assert httpx.post(receiver.url + "_reset", timeout=5).status_code == 401
    assert receiver.stats()["unique"] == 2
    assert httpx.post(receiver.url + "_reset", headers={"authorization": f"Bearer {TOKEN}"},
                      timeout=5).status_code == 200
    assert receiver.stats()["unique"] == 0


def test_a_loopback_receiver_without_a_token_keeps_its_endpoints_open():
    with Receiver() as rec:  # the tests' and the demo's default: 127.0.0.1, no token
        assert httpx.post(rec.url + "_control", json={"latency_ms": 5}, timeout=5).status_code == 200
        assert httpx.get(rec.url + "stats", timeout=5).json()["requests"] == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::"])
def test_a_non_loopback_bind_needs_a_token(host):
    with pytest.raises(ConfigError) as err:
        Receiver(host=host).start()
    assert "PULSE_RECEIVER__CONTROL_TOKEN" in err.value.hint


def test_a_non_loopback_bind_with_a_token_starts():
    rec = Receiver(host="0.0.0.0", control_token=TOKEN).start()
    try:
        local = f"http://127.0.0.1:{rec.port}/"
        assert httpx.get(local + "stats", timeout=5).status_code == 401
        assert httpx.get(local + "stats", headers={"authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200
    finally:
        rec.stop()


def test_an_empty_token_is_refused():
    with pytest.raises(ConfigError):
        Receiver(control_token="  ")


def test_a_body_over_max_body_bytes_is_answered_413_and_not_recorded(receiver):
    small = orjson.dumps([_ce(1)])
    big = orjson.dumps([_ce(2, "y" * 5000)])
    assert len(small) < 4096 < len(big)
    r = httpx.post(receiver.url, content=big, timeout=5)
    assert r.status_code == 413 and "max_body_bytes=4096" in r.json()["error"]
    assert httpx.post(receiver.url, content=small, timeout=5).status_code == 200
    st = receiver.stats()
    assert (st["too_large"], st["unique"], st["requests"]) == (1, 1, 1)
    assert [e["id"] for e in receiver.events()] == ["e1"]


def test_a_20_mb_body_gets_a_413_answer_not_a_connection_reset():
    """The client is still sending when the 413 goes out: the rest is drained, so it reads the answer."""
    with Receiver(max_body_bytes=1024 * 1024) as rec:
        body = orjson.dumps([_ce(1, "z" * (20 * 1024 * 1024))])
        r = httpx.post(rec.url, content=body, timeout=30)
        assert r.status_code == 413
        assert rec.stats()["too_large"] == 1 and rec.stats()["received"] == 0


def test_a_huge_declared_length_is_refused_without_reading_it():
    """A Content-Length of 8 GiB with no body behind it: answered at once, no 8 GiB buffer."""
    with Receiver() as rec, socket.create_connection(("127.0.0.1", rec.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 8589934592\r\n\r\n[")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert rec.stats()["too_large"] == 1


def test_a_chunked_body_is_answered_411():
    with Receiver() as rec, socket.create_connection(("127.0.0.1", rec.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411")
        assert rec.stats()["received"] == 0


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_RECEIVER__")}
    return {**env, **extra}


def test_the_cli_refuses_a_non_loopback_bind_without_a_token():
    proc = subprocess.run(pulse_cmd("receiver", "--host", "0.0.0.0", "--port", "0"), env=_cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3  # a configuration error (pulse.cli.main)
    assert "PULSE_RECEIVER__CONTROL_TOKEN" in proc.stdout + proc.stderr


@pytest.mark.parametrize("source", ["file", "env"])
def test_the_cli_takes_the_token_from_a_file_or_the_environment(tmp_path, source):
    if source == "file":
        path = tmp_path / "token"
        path.write_text(TOKEN + "\n")
        args, env = ["--control-token-file", str(path)], _cli_env()
    else:
        args, env = [], _cli_env(PULSE_RECEIVER__CONTROL_TOKEN=TOKEN)
    proc = subprocess.Popen(pulse_cmd("receiver", "--host", "0.0.0.0", "--port", "0", "--stats-every", "0",
                                      "--max-body-bytes", "2048", *args),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        url = f"http://127.0.0.1:{port}/"
        assert TOKEN not in line  # the token is never printed
        assert httpx.get(url + "stats", timeout=5).status_code == 401
        assert httpx.get(url + "stats", headers={"authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200
        assert httpx.post(url, content=b"[" + b" " * 4096 + b"]", timeout=5).status_code == 413
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert TOKEN not in err


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
                                           ("10.0.0.5", False), ("receiver", False)])
def test_what_counts_as_loopback(host, loopback):
    from pulse.receiver import is_loopback

    assert is_loopback(host) is loopback


def test_a_bad_content_length_is_answered_400():
    with Receiver() as rec, socket.create_connection(("127.0.0.1", rec.port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: lots\r\n\r\n[]")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
        assert rec.stats()["received"] == 0


def test_stats_without_latency_gives_the_counts_and_no_percentiles(receiver):
    events = [_ce(i) for i in range(3)]
    body = orjson.dumps(events)
    r = httpx.post(receiver.url, content=body, headers={"content-type": "application/cloudevents-batch+json"})
    assert r.status_code == 200, r.text
    auth = {"authorization": f"Bearer {TOKEN}"}
    full = httpx.get(receiver.url + "stats", headers=auth).json()
    brief = httpx.get(receiver.url + "stats?latency=false", headers=auth).json()
    assert full["unique"] == brief["unique"] == 3
    assert "latency_p99_s" in full and not any(k.startswith("latency_") for k in brief)
    assert {k: v for k, v in full.items() if not k.startswith("latency_")} == brief
