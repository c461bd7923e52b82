"""`pulse receiver`: a small HTTP endpoint standing in for the external system.

It does what a careful receiver does, and can be told to misbehave:

- verifies Standard Webhooks signatures when it has the secret (401 otherwise);
- records each CloudEvent once by id, counts duplicates, and flags an id seen
  again with a different payload (`conflicts`), or an event of a content id
  arriving before an older one it has not seen (`order_violations`);
- serves what it received (`GET /events`) and its counts (`GET /stats`; with
  `?latency=false` without the commit-to-arrival percentiles, which sort
  every latency recorded) as JSON; `POST /_control` changes its faults at
  run time, `POST /_reset` forgets everything;
- misbehaves at configurable rates: added latency, 500, 429 with
  Retry-After, 503, a timeout (holds the request, never answers), or
  accept-then-reset (reads and records the request, then resets the TCP
  connection: the sender cannot know it arrived, the nastiest case for
  duplicates); or refuses everything with one status (`reject_status`, e.g.
  422 to exercise the dead-letter store); or refuses bodies larger than
  `max_body_bytes` with 413, as a real endpoint's size limit does.

It is a test stand-in, not a production endpoint: it keeps everything it
receives in memory. Two guards keep it from being a hazard on a network:

- the control and inspection endpoints (`/_control`, `/_reset`, `/stats`,
  `/events`) want `Authorization: Bearer <control_token>` when a token is set,
  and a token is required to bind anything but a loopback address (`start()`
  raises `ConfigError` otherwise); `/healthz` and the ingest POST are open
  (the ingest POST is authenticated by the webhook signature when the secret
  is set);
- a request body larger than `max_body_bytes` is answered 413 without being
  read into memory, a chunked body (no Content-Length) 411.

`Receiver(...).start()` runs it in-process on a background thread (tests
and benchmarks, on 127.0.0.1 and an ephemeral port by default); `stop()` and
`start()` again keep the recorded state and the port (an endpoint that goes
down and comes back).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import socket
import struct
import threading
import time
import zlib
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import orjson

from pulse.errors import ConfigError
from pulse.log import get_logger
from pulse.sinks.external.signing import VerificationError, verify

log = get_logger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # 16 MiB: sixteen of the external sink's default 1 MB batches
_DRAIN_MAX_BYTES = 64 * 1024 * 1024  # an oversized body up to this is read and discarded, so the 413 arrives
_DRAIN_TIMEOUT_S = 10.0
_PROTECTED = {("GET", "/stats"), ("GET", "/events"), ("GET", "/_control"), ("POST", "/_control"),
              ("POST", "/_reset")}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, `localhost`)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (every interface): treat as reachable from elsewhere


def _brief(event: Any, limit: int = 300) -> Any:
    """The event with long strings cut (a conflict sample must not hold megabyte payloads)."""
    if isinstance(event, dict):
        return {k: _brief(v, limit) for k, v in event.items()}
    if isinstance(event, list):
        return [_brief(v, limit) for v in event]
    if isinstance(event, str) and len(event) > limit:
        return event[:limit] + f"...({len(event)} chars)"
    return event


@dataclass
class Faults:
    """How the receiver misbehaves; rates are fractions of POST requests (drawn independently per request)."""

    latency_ms: float = 0.0  # added before answering ...
    latency_rate: float = 1.0  # ... to this fraction of requests
    error_500: float = 0.0
    error_429: float = 0.0
    retry_after_s: float = 1.0  # sent with 429 and 503
    error_503: float = 0.0
    timeout: float = 0.0  # record, then hold the request for timeout_s without answering
    timeout_s: float = 30.0
    reset: float = 0.0  # record, then reset the connection instead of answering
    reject_status: int | None = None  # answer every POST with this status (nothing recorded)
    max_body_bytes: int | None = None  # answer 413 to a larger body (nothing recorded)
    accept_gzip: bool = False  # list gzip in an Accept-Encoding response header (RFC 7694)
    refuse_gzip: bool = False  # answer 415 to a gzip body

    def update(self, values: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(names)}")
            setattr(self, key, value)


def _percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile of an already sorted list (None when empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class ReceiverState:
    """What the receiver has seen; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}  # id -> {event, digest, count, first_at}
        self.order: list[str] = []  # ids in first-arrival order
        self.last_pos: dict[str, tuple[int, int]] = {}  # partition key -> newest position first-seen
        self.requests = 0
        self.accepted_requests = 0
        self.received = 0
        self.duplicates = 0
        self.conflicts = 0
        self.conflicting_ids: list[str] = []
        self.conflict_samples: list[dict[str, Any]] = []
        self.order_violations = 0
        self.signature_ok = 0
        self.signature_failures = 0
        self.unsigned = 0
        self.faults_served: dict[str, int] = {}
        self.too_large = 0  # requests answered 413 (body over max_body_bytes)
        self.gzip_requests = 0  # bodies received gzip-compressed (content-encoding: gzip)
        self.control_unauthorized = 0  # control / inspection requests without the right token
        self.latencies: list[float] = []  # seconds from commit_ts to first arrival

    def record(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        now = time.time()
        with self.lock:
            self.accepted_requests += 1
            for ce_id, event in items:
                self.received += 1
                digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()
                seen = self.events.get(ce_id)
                if seen is not None:
                    seen["count"] += 1
                    self.duplicates += 1
                    if seen["digest"] != digest:
                        self.conflicts += 1
                        self.conflicting_ids.append(ce_id)
                        if len(self.conflict_samples) < 20:  # what differed, for diagnosis (bounded)
                            self.conflict_samples.append({"id": ce_id, "first": _brief(seen["event"]),
                                                          "again": _brief(event)})
                    continue
                self.events[ce_id] = {"event": event, "digest": digest, "count": 1, "first_at": now}
                self.order.append(ce_id)
                data = event.get("data") if "specversion" in event else event
                if isinstance(data, dict):
                    key = event.get("partitionkey") or data.get("content_id") or ""
                    pos = (int(data.get("source_lsn") or 0), int(data.get("source_seq") or 0))
                    if pos < self.last_pos.get(key, (0, 0)):
                        self.order_violations += 1
                    else:
                        self.last_pos[key] = pos
                    commit = data.get("commit_ts")
                    if commit:
                        try:
                            self.latencies.append(now - datetime.fromisoformat(commit).timestamp())
                        except ValueError:
                            pass

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.faults_served[kind] = self.faults_served.get(kind, 0) + 1

    def stats(self, latency: bool = True) -> dict[str, Any]:
        """The counts, and the commit-to-arrival percentiles unless `latency` is False.

        The percentiles sort every latency recorded so far (a few tens of
        milliseconds at 10^5 events), so a poller that only waits for a count
        asks without them (`GET /stats?latency=false`), or it would take the
        receiver's time from the sender it measures.
        """
        with self.lock:
            doc = {
                "requests": self.requests,
                "accepted_requests": self.accepted_requests,
                "received": self.received,
                "unique": len(self.events),
                "duplicates": self.duplicates,
                "conflicts": self.conflicts,
                "conflicting_ids": self.conflicting_ids[:100],
                "conflict_samples": list(self.conflict_samples),
                "order_violations": self.order_violations,
                "signature_ok": self.signature_ok,
                "signature_failures": self.signature_failures,
                "unsigned": self.unsigned,
                "faults_served": dict(self.faults_served),
                "too_large": self.too_large,
                "gzip_requests": self.gzip_requests,
                "control_unauthorized": self.control_unauthorized,
            }
            lat = list(self.latencies) if latency else None
        if lat is not None:  # sorted outside the lock: the ingest threads go on meanwhile
            lat.sort()
            doc.update(latency_p50_s=_percentile(lat, 0.50), latency_p99_s=_percentile(lat, 0.99),
                       latency_max_s=lat[-1] if lat else None)
        return doc

    def events_doc(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"id": i, "count": self.events[i]["count"], "event": self.events[i]["event"]} for i in self.order]


def parse_body(content_type: str, body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(id, event) pairs of a request in any of the sink's three modes."""
    doc = orjson.loads(body)
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/cloudevents+json":
        doc = [doc]
    if not isinstance(doc, list):
        raise ValueError("expected a JSON array")
    out = []
    for item in doc:
        if not isinstance(item, dict):
            raise ValueError("expected JSON objects")
        if "specversion" in item:
            if not item.get("id"):
                raise ValueError("a CloudEvent without id")
            out.append((str(item["id"]), item))
        else:  # plain JSON-array mode: the enriched event, identified by its position
            out.append((f"plain-{item.get('event_id')}-{item.get('op')}-{item.get('source_lsn')}-"
                        f"{item.get('source_seq')}", item))
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the sink expects
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stats tell the story
        pass

    def _send(self, status: int, doc: Any = None, headers: dict[str, str] | None = None) -> None:
        body = orjson.dumps(doc if doc is not None else {})
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.server.receiver.faults.accept_gzip:
            self.send_header("accept-encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self, method: str, path: str) -> bool:
        """Control and inspection need the bearer token (when one is set); 401 sent otherwise."""
        token = self.server.receiver.control_token
        if token is None or (method, path) not in _PROTECTED:
            return True
        given = self.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return True
        with self.server.receiver.state.lock:
            self.server.receiver.state.control_unauthorized += 1
        self._refuse(401, f"{method} {path} needs 'Authorization: Bearer <control token>'", self._content_length(),
                     {"www-authenticate": "Bearer"})
        return False

    def _content_length(self) -> int:
        try:
            return int(self.headers.get("content-length") or 0)
        except ValueError:
            return -1

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        rec = self.server.receiver
        path, _, query = self.path.partition("?")
        if not self._authorized("GET", path):
            return
        if path == "/stats":
            latency = parse_qs(query).get("latency", ["true"])[-1].lower() not in ("false", "0", "no")
            self._send(200, rec.state.stats(latency=latency))
        elif path == "/events":
            self._send(200, {"events": rec.state.events_doc()})
        elif path == "/healthz":
            self._send(200, {"ok": True})
        elif path == "/_control":
            self._send(200, asdict(rec.faults))
        else:
            self._send(404, {"error": "GET /stats, /events, /healthz or /_control"})

    def _read_body(self) -> bytes | None:
        """The body, or None after answering 411 / 413 / 400 (bounded: never more than max_body_bytes read)."""
        rec = self.server.receiver
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._refuse(411, "send a Content-Length (chunked bodies are not accepted)", 0)
            return None
        n = self._content_length()
        if n < 0:
            self._refuse(400, "bad Content-Length", 0)
            return None
        if n > rec.max_body_bytes:
            with rec.state.lock:
                rec.state.too_large += 1
            self._refuse(413, f"body of {n} bytes is over max_body_bytes={rec.max_body_bytes}", n)
            return None
        return self.rfile.read(n) if n else b""

    def _refuse(self, status: int, message: str, pending: int, headers: dict[str, str] | None = None) -> None:
        """Answer, then discard what the client is still sending (bounded) so it reads the answer, not a reset."""
        self.close_connection = True
        self._send(status, {"error": message}, {**(headers or {}), "connection": "close"})
        if not 0 < pending <= _DRAIN_MAX_BYTES:
            return
        try:
            self.connection.settimeout(_DRAIN_TIMEOUT_S)
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while pending > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read(min(pending, 65536))
                if not chunk:
                    break
                pending -= len(chunk)
        except OSError:
            pass

    def do_POST(self) -> None:  # noqa: N802
        rec = self.server.receiver
        path = self.path.split("?")[0]
        if not self._authorized("POST", path):
            return
        body = self._read_body()
        if body is None:
            return
        if path == "/_control":
            try:
                with rec.lock:
                    rec.faults.update(orjson.loads(body or b"{}"))
            except (ValueError, orjson.JSONDecodeError) as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(200, asdict(rec.faults))
            return
        if path == "/_reset":
            with rec.state.lock:
                rec.state.reset()
            self._send(200, {"ok": True})
            return
        self._ingest(rec, body)

    def _ingest(self, rec: "Receiver", body: bytes) -> None:
        state = rec.state
        with state.lock:
            state.requests += 1
        with rec.lock:
            f = Faults(**asdict(rec.faults))
            draw = rec.rng.random()
            slow = f.latency_ms > 0 and rec.rng.random() < f.latency_rate
        if f.max_body_bytes is not None and len(body) > f.max_body_bytes:
            state.count_fault("413")
            self._send(413, {"error": f"body of {len(body)} bytes exceeds {f.max_body_bytes}"})
            return
        if (self.headers.get("content-encoding") or "identity").lower() == "gzip":
            if f.refuse_gzip:
                state.count_fault("415")
                self._send(415, {"error": "gzip bodies are not accepted"}, {"accept-encoding": "identity"})
                return
            inflater = zlib.decompressobj(wbits=31)
            try:
                body = inflater.decompress(body, rec.max_body_bytes)
            except zlib.error as exc:
                self._send(400, {"error": f"bad gzip body: {exc}"})
                return
            if inflater.unconsumed_tail:
                state.count_fault("413")
                self._send(413, {"error": f"body inflates past max_body_bytes={rec.max_body_bytes}"})
                return
            with state.lock:
                state.gzip_requests += 1
        if rec.secret:
            try:
                verify(rec.secret, dict(self.headers.items()), body, tolerance_s=rec.tolerance_s)
            except VerificationError as exc:
                with state.lock:
                    state.signature_failures += 1
                self._send(401, {"error": f"signature: {exc}"})
                return
            with state.lock:
                state.signature_ok += 1
        elif "webhook-signature" not in self.headers:
            with state.lock:
                state.unsigned += 1
        if slow:
            time.sleep(f.latency_ms / 1000)
        if f.reject_status is not None:
            state.count_fault(f"reject_{f.reject_status}")
            self._send(int(f.reject_status), {"error": "rejected (reject_status is set)"})
            return
        edge = 0.0
        for kind, rate in (("500", f.error_500), ("429", f.error_429), ("503", f.error_503),
                           ("timeout", f.timeout), ("reset", f.reset)):
            edge += rate
            if draw < edge:
                self._fault(rec, kind, f, body)
                return
        try:
            items = parse_body(self.headers.get("content-type", ""), body)
        except (ValueError, orjson.JSONDecodeError) as exc:
            self._send(400, {"error": f"bad body: {exc}"})
            return
        state.record(items)
        self._send(200, {"accepted": len(items)})

    def _fault(self, rec: "Receiver", kind: str, f: Faults, body: bytes) -> None:
        rec.state.count_fault(kind)
        if kind in ("500",):
            self._send(500, {"error": "injected 500"})
        elif kind in ("429", "503"):
            self._send(int(kind), {"error": f"injected {kind}"}, {"retry-after": str(int(f.retry_after_s))})
        else:
            # Accepted: the receiver has the events, but the sender will never hear so.
            try:
                rec.state.record(parse_body(self.headers.get("content-type", ""), body))
            except (ValueError, orjson.JSONDecodeError):
                pass
            if kind == "timeout":
                rec.stopping.wait(f.timeout_s)
            self.close_connection = True
            try:  # RST instead of FIN: the client sees "connection reset"
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: "Receiver"

    def handle_error(self, request: Any, client_address: Any) -> None:  # resets are on purpose
        pass


class Receiver:
    """The receiver as an object: `start()` (returns self), `url`, `stats()`, `events()`, `stop()`.

    `control_token`: the bearer token of the control and inspection endpoints (required to bind a
    non-loopback address). `max_body_bytes`: larger request bodies are answered 413.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, secret: str | None = None,
                 faults: Faults | None = None, seed: int | None = None, tolerance_s: float = 300.0,
                 control_token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if control_token is not None and not control_token.strip():
            raise ConfigError("the receiver's control token is empty",
                              hint="set a non-empty token (e.g. `openssl rand -hex 32`) or none on a loopback bind")
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be positive, got {max_body_bytes}",
                              hint="set --max-body-bytes to a byte count (default 16 MiB)")
        self.host = host
        self.port = port
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.control_token = control_token.strip() if control_token else None
        self.max_body_bytes = max_body_bytes
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.state = ReceiverState()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "Receiver":
        if self._server is not None:
            return self
        if self.control_token is None and not is_loopback(self.host):
            raise ConfigError(
                f"the receiver would bind {self.host or 'every interface'} with its control endpoints open",
                hint="set PULSE_RECEIVER__CONTROL_TOKEN or --control-token-file, or bind 127.0.0.1",
            )
        self.stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="pulse-receiver", daemon=True)
        self._thread.start()
        log.info("receiver.listening", url=self.url, signed=self.secret is not None,
                 control_token=self.control_token is not None, max_body_bytes=self.max_body_bytes)
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused until `start()`); what was received is kept."""
        server = self._server
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def set_faults(self, **values: Any) -> None:
        with self.lock:
            self.faults.update(values)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def events(self) -> list[dict[str, Any]]:
        return self.state.events_doc()

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
