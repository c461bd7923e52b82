"""`pulse board` in a real headless Chromium, over a running `pulse run` pipeline.

The oracle of the first place is SQL over the source tables (the sum of
`duration_ms` per content in the last 10 minutes); the page is read through
the DevTools protocol (Chromium's --remote-debugging-port on loopback, driven
over its websocket), so the test sees the page change over time without
reloading it: a marker set in the page before the new event must still be
there when the new title shows (a reload would drop it). Screenshots go to
artifacts/ (git-ignored): board.png (1280 px wide) and board-narrow.png (390 px).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import need

from .pipeline_helpers import wait_for
from .pipeline_helpers import pulse_cmd, pulse_env, slot_streaming

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TITLES = [("The Quiet Hour: Sleep and Memory", "podcast"), ("Weekly Markets Digest", "newsletter"),
          ("Building a Cabin in Ten Days", "video"), ("Founders at Night", "podcast"),
          ("Notes on Rust for Data Engineers", "newsletter"), ("Street Food of Lisbon", "video"),
          ("How Logical Replication Works", "podcast"), ("The Climate Briefing", "newsletter")]
DEVICES = ["ios", "android", "web-chrome", "web-safari", "smart-tv"]
EVENT_TYPES = ["play", "pause", "finish", "click"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """A page of a headless Chromium, driven over the DevTools protocol (one websocket)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._session = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10)
        self.ws = self._session.__enter__()
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._session.__exit__(None, None, None)


@pytest.fixture
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    need(exe is not None, "Debian's chromium package (installed by `pulse dev up` / `make services`)")
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="pulse-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         f"--remote-debugging-port={port}", "--window-size=1280,1500", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def page_ws() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode}")
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
        except OSError:
            return None
        pages = [t for t in targets if t.get("type") == "page"]
        return pages[0]["webSocketDebuggerUrl"] if pages else None

    try:
        tools = DevTools(wait_for(page_ws, 60, "chromium's DevTools endpoint"))
        try:
            yield tools
        finally:
            tools.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def _insert_content(cur, title: str, ctype: str) -> str:
    cid = str(uuid.uuid4())
    cur.execute("INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                "VALUES (%s, %s, %s, %s, 1800, now())", (cid, f"s-{cid[:8]}", title, ctype))
    return cid


def _insert_traffic(cur, ids: list[str], n: int, rng: random.Random) -> None:
    """`n` events spread over the last 9 minutes (so the chart has history), random devices and types."""
    now = datetime.now(timezone.utc)
    rows = []
    for _ in range(n):
        rows.append((rng.choice(ids), str(uuid.uuid4()), rng.choice(EVENT_TYPES),
                     now - timedelta(seconds=rng.uniform(0, 540) ** 1.0), rng.randint(1_000, 300_000),
                     rng.choice(DEVICES)))
    cur.executemany("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
                    "VALUES (%s, %s, %s, %s, %s, %s)", rows)


def _first_by_sql(cur) -> tuple[str, float]:
    cur.execute("SELECT c.title, sum(e.duration_ms) FROM engagement_events e JOIN content c ON c.id = e.content_id "
                "WHERE e.event_ts > now() - interval '10 minutes' GROUP BY c.id, c.title "
                "ORDER BY sum(e.duration_ms) DESC LIMIT 2")
    rows = cur.fetchall()
    assert len(rows) == 2 and rows[0][1] > rows[1][1], rows  # a clear first place
    return rows[0][0], rows[0][1] / 1000


TOP_TITLE = "(() => { const t = document.querySelector('#top-table tbody tr td.title .t'); " \
            "return t ? t.textContent : null; })()"


def test_board_page_shows_the_sql_first_and_updates_live(scratch_db, services, rprefix, chromium):
    prefix, client = rprefix
    conn = scratch_db.connect()
    cur = conn.cursor()
    env = pulse_env(scratch_db, PULSE_REDIS_URL=services["PULSE_REDIS_URL"], PULSE_REDIS_PREFIX=prefix)
    run = subprocess.Popen(pulse_cmd("run", "--sink", "redis", "--sink", "memory"), env=env,
                           stderr=subprocess.PIPE, text=True)
    board_port = _free_port()
    board = None
    try:
        wait_for(lambda: slot_streaming(cur, scratch_db.slot) or run.poll() is not None, 60, "replication start")
        assert run.poll() is None, run.stderr.read()
        rng = random.Random(20)
        ids = [_insert_content(cur, title, ctype) for title, ctype in TITLES]
        _insert_traffic(cur, ids, 400, rng)
        expected, seconds = _first_by_sql(cur)
        wait_for(lambda: client.zcard(prefix + "top:10m") == len(ids), 30, "the board to count every content")

        board = subprocess.Popen(pulse_cmd("board", "--port", str(board_port)), env=env,
                                 stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{board_port}/"

        def serving() -> bool:
            if board.poll() is not None:
                raise AssertionError(board.stderr.read())
            try:
                return urllib.request.urlopen(url, timeout=2).status == 200
            except OSError:
                return False

        wait_for(serving, 30, "pulse board to serve")
        chromium.call("Page.enable")
        chromium.call("Page.navigate", url=url)
        first = wait_for(lambda: chromium.eval(TOP_TITLE), 20, "the page to show the top content")
        assert first == expected, (first, expected)
        # The pipeline's own status reaches the page too (the sink's line, the slot).
        wait_for(lambda: chromium.eval("document.querySelector('#sinks tr[data-sink=\"redis\"]') !== null"), 20,
                 "the sinks table")
        assert chromium.eval("document.querySelector('#chart svg rect') !== null")  # the chart has bars
        chromium.eval("window.__noReload = 42")
        renders = chromium.eval("window.pulseBoard.renders")

        # A new content with more engagement than the first: it must become first without a reload.
        newcomer = "Breaking: The Live Board Test"
        cid = _insert_content(cur, newcomer, "video")
        cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device) "
                    "VALUES (%s, %s, 'finish', now(), %s, 'web-chrome')",
                    (cid, str(uuid.uuid4()), int(seconds * 1000) + 600_000))
        committed = time.monotonic()
        assert _first_by_sql(cur)[0] == newcomer
        shown = None
        while time.monotonic() - committed < 5:
            shown = chromium.eval(TOP_TITLE)
            if shown == newcomer:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - committed
        assert shown == newcomer, shown
        assert elapsed < 2.0, f"the page showed the new first place {elapsed:.2f}s after the commit"
        assert chromium.eval("window.__noReload") == 42  # the same document: updated in place
        assert chromium.eval("window.pulseBoard.renders") > renders

        ARTIFACTS.mkdir(exist_ok=True)
        wait_for(lambda: chromium.eval("document.querySelector('#health').textContent") == "healthy", 20,
                 "the pipeline to report healthy")
        # Rates come from two successive reports of the pipeline (every 2 s): events/s in, and out per sink.
        wait_for(lambda: chromium.eval("window.pulseBoard.state.rates.in") is not None, 20, "the rates")
        assert chromium.eval("document.querySelector('#pipeline').textContent").count("/s") == 1
        assert chromium.eval("document.querySelectorAll('#sinks tbody tr').length") == 2  # redis, memory
        chromium.screenshot(ARTIFACTS / "board.png")
        chromium.call("Emulation.setDeviceMetricsOverride", width=390, height=1400, deviceScaleFactor=1,
                      mobile=True)
        wait_for(lambda: chromium.eval("document.documentElement.scrollWidth <= 390"), 10,
                 "the page to fit a 390 px window")
        chromium.screenshot(ARTIFACTS / "board-narrow.png")
        assert (ARTIFACTS / "board.png").stat().st_size > 10_000
        print(f"board: newcomer first after {elapsed:.2f}s; screenshots in {ARTIFACTS}")
    finally:
        for proc in (board, run):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        conn.close()
