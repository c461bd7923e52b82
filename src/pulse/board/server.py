"""The HTTP side of `pulse board`: one page, its two assets, a JSON state and a server-sent event stream.

Routes (all GET):

- `/`: the page (`static/index.html`; `/?token=...` checks a token, keeps it
  in an HttpOnly cookie and redirects to `/`);
- `/static/board.css`, `/static/board.js`: the assets, shipped in the package;
- `/api/state`: the newest state document (JSON);
- `/events`: `text/event-stream`; one `state` event per collector round (0.5 s
  by default), a comment every 15 s when nothing changes. However many pages
  are open, the board is read once per round (`collect.Collector`); at most
  `MAX_STREAMS` streams are served at once, more get 503.

Access: without a token the server refuses to bind anything but a loopback
address. With a token every route but `/?token=` wants it, as the
`pulse_board` cookie or `Authorization: Bearer <token>`, compared in constant
time. The page loads nothing from the network (no CDN, no fonts): a strict
Content-Security-Policy says so to the browser too.
"""

from __future__ import annotations

import hmac
import threading
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import orjson

from pulse.board.collect import Collector
from pulse.errors import ConfigError
from pulse.log import get_logger
from pulse.receiver import is_loopback

log = get_logger(__name__)

MAX_STREAMS = 64
HEARTBEAT_S = 15.0
COOKIE = "pulse_board"
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/board.css": ("board.css", "text/css; charset=utf-8"),
          "/static/board.js": ("board.js", "text/javascript; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def asset(name: str) -> bytes:
    return resources.files("pulse.board").joinpath("static", name).read_bytes()


def state_json(state: dict) -> bytes:
    return orjson.dumps(state, default=str, option=orjson.OPT_NON_STR_KEYS)


class BoardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, collector: Collector, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ConfigError("board.token is empty", hint="set a non-empty token (e.g. `openssl rand -hex 32`)")
        if token is None and not is_loopback(host):
            raise ConfigError(
                f"pulse board would serve {host} without a token: anyone who reaches it reads the pipeline's state",
                hint="set PULSE_BOARD__TOKEN or PULSE_BOARD__TOKEN_FILE, or bind 127.0.0.1 (the default)")
        self.collector = collector
        self.token = token.strip() if token else None
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.stopping = threading.Event()
        self.assets = {path: (asset(name), ctype) for path, (name, ctype) in ASSETS.items()}
        super().__init__((host, port), _Handler)

    def shutdown(self) -> None:
        self.stopping.set()
        self.collector.stop()  # wakes every stream
        super().shutdown()


class _Handler(BaseHTTPRequestHandler):
    server: BoardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        log.debug("board.request", line=format % args)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        candidates = []
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(value.strip())
        cookie = SimpleCookie(self.headers.get("Cookie") or "")
        if COOKIE in cookie:
            candidates.append(cookie[COOKIE].value)
        return any(hmac.compare_digest(c.encode(), token.encode()) for c in candidates)

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/" and self.server.token is not None and "token" in parse_qs(url.query):
            given = parse_qs(url.query)["token"][0]
            if hmac.compare_digest(given.encode(), self.server.token.encode()):
                self._send(303, b"", "text/plain", {
                    "Location": "/",
                    "Set-Cookie": f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"})
                return
        if not self._authorized():
            self._send(401, b"pulse board: a token is required (open /?token=... once)\n", "text/plain",
                       {"WWW-Authenticate": "Bearer"})
            return
        if url.path in self.server.assets:
            body, ctype = self.server.assets[url.path]
            self._send(200, body, ctype)
        elif url.path == "/api/state":
            self._send(200, state_json(self.server.collector.state()[1]), "application/json")
        elif url.path == "/events":
            self._stream()
        else:
            self._send(404, b"not found\n", "text/plain")

    def _stream(self) -> None:
        if not self.server.streams.acquire(blocking=False):
            self._send(503, b"too many open boards\n", "text/plain", {"Retry-After": "5"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            for key, value in SECURITY_HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            self.close_connection = True
            collector = self.server.collector
            version, state = collector.state()
            self.wfile.write(b"retry: 2000\n\n")
            self._event(state)
            while not self.server.stopping.is_set():
                seen = version
                version, state = collector.wait(seen, HEARTBEAT_S)
                if self.server.stopping.is_set():
                    break
                if version > seen:
                    self._event(state)
                else:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page was closed
        finally:
            self.server.streams.release()

    def _event(self, state: dict) -> None:
        self.wfile.write(b"event: state\ndata: " + state_json(state) + b"\n\n")
        self.wfile.flush()
