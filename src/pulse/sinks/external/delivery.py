"""Delivery from the outbox to the external endpoint: requests, retries, circuit breaker, lanes.

- `build_request` turns the head of a lane's queue into one HTTP request in
  the configured mode (CloudEvents batch, single CloudEvent, plain JSON array).
- `HttpClient.send` POSTs it (httpx, keep-alive, optional HTTP/2, connect
  and read timeouts) and sorts the answer into an `Outcome`: delivered,
  retry (timeouts, resets, 5xx, 408/409/425/429) or terminal (other 4xx).
- `deliver` is the one retry helper (tenacity): exponential backoff with
  full jitter, `Retry-After` honoured, a shared `CircuitBreaker` consulted
  before each attempt, and a verdict: delivered, dead-letter, or stopped.
- `Lane`: one thread per lane; content ids are hashed onto lanes, and a lane
  sends one request at a time in source order, so events of one content id
  arrive in order while different lanes run in parallel.
- 413 (payload too large): a batch is split in halves until it passes; one
  event refused alone is delivered with its payload replaced by a marker
  (`truncated_row`, problem `payload_too_large`) and kept in full in the
  dead-letter store, whose replay re-sends the full event.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import orjson
import psycopg2
from prometheus_client import Counter, Gauge, Histogram
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from pulse.config import ExternalConfig
from pulse.errors import ConfigError
from pulse.log import get_logger
from pulse.model import ZERO
from pulse.sinks.base import SinkInstance
from pulse.sinks.external.outbox import Outbox, OutboxRow
from pulse.sinks.external.signing import Signer, parse_retry_after

log = get_logger(__name__)

DELIVERED = Counter("pulse_external_delivered_total", "Events acknowledged by the external endpoint")
DEAD = Counter("pulse_external_dead_letter_total", "Events moved to the dead-letter store", ["reason"])
ATTEMPTS = Counter("pulse_external_requests_total", "Requests sent to the external endpoint, by outcome",
                   ["outcome"])
CIRCUIT_OPEN = Gauge("pulse_external_circuit_open", "1 while the circuit breaker is open or probing")
DELIVERY_LAG = Histogram(
    "pulse_external_delivery_seconds",
    "Seconds from appending to the outbox (the event's durable hand-over to the sink) to acknowledged by the endpoint",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)

def dead_letter_metric(sink: str, reason: str, n: int) -> None:
    """Count dead letters by sink too (`pulse_dead_letters_total{sink,reason}`, shared with the other sinks)."""
    from pulse import metrics

    metrics.DEAD_LETTERS.labels(SinkInstance.of(sink).kind, reason).inc(n)


#: 4xx answers that mean "try again later" rather than "this request is wrong".
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
#: The body is larger than the endpoint takes: split the batch, or truncate a lone event.
TOO_LARGE = 413

CONTENT_TYPES = {
    "cloudevents-batch": "application/cloudevents-batch+json",
    "single": "application/cloudevents+json",
    "json-array": "application/json",
}


class Request(NamedTuple):
    rows: tuple[OutboxRow, ...]
    body: bytes
    content_type: str
    msg_id: str  # webhook-id and Idempotency-Key: derived from the events' ids, so stable across retries


def message_id(rows: Sequence[OutboxRow]) -> str:
    """webhook-id of a request: the CloudEvent id for one event, a digest of the ids for a batch."""
    if len(rows) == 1:
        return rows[0].ce_id
    digest = hashlib.sha256("\n".join(r.ce_id for r in rows).encode()).hexdigest()[:32]
    return f"msg_{digest}"


def build_request(rows: Sequence[OutboxRow], mode: str, max_events: int, max_bytes: int) -> Request:
    """One request from the head of `rows` (at least one event; then up to the count and byte limits)."""
    if not rows:
        raise ValueError("no rows")
    if mode not in CONTENT_TYPES:
        raise ConfigError(f"unknown external mode {mode!r}", hint="use cloudevents-batch, single or json-array")
    limit = 1 if mode == "single" else max_events
    parts: list[str] = []
    size = 2
    for row in rows[:limit]:
        part = row.data if mode == "json-array" else row.cloudevent()
        if parts and size + len(part) + 1 > max_bytes:
            break
        parts.append(part)
        size += len(part) + 1
    taken = tuple(rows[: len(parts)])
    body = parts[0] if mode == "single" else "[" + ",".join(parts) + "]"
    return Request(taken, body.encode(), CONTENT_TYPES[mode], message_id(taken))


def truncated_row(row: OutboxRow) -> OutboxRow:
    """The row with its `raw_payload` replaced by the marker and the problem `payload_too_large` added.

    Same position and CloudEvent id: it is the same event, delivered in the
    form the endpoint takes; the full row goes to the dead-letter store.
    """
    from pulse.sinks.dead_letter import PAYLOAD_TOO_LARGE, marker

    doc = orjson.loads(row.data)
    if isinstance(doc.get("raw_payload"), str):
        doc["raw_payload"] = marker(doc["raw_payload"])
    problems = list(doc.get("problems") or [])
    if PAYLOAD_TOO_LARGE not in problems:
        problems.append(PAYLOAD_TOO_LARGE)
    doc["problems"] = problems
    return row._replace(data=orjson.dumps(doc).decode())


class Outcome(NamedTuple):
    kind: str  # "ok" | "retry" | "terminal"
    status: int | None
    error: str
    retry_after: float | None = None
    endpoint_down: bool = False  # counts towards opening the circuit


def classify(status: int, retry_after: str | None, text: str = "") -> Outcome:
    """What an HTTP answer means for the batch it answered."""
    if 200 <= status < 300:
        return Outcome("ok", status, "")
    detail = f"HTTP {status}" + (f": {text.strip()[:200]}" if text.strip() else "")
    if status >= 500:
        wait = parse_retry_after(retry_after) if status == 503 else None
        return Outcome("retry", status, detail, wait, endpoint_down=True)
    if status in RETRYABLE_4XX:
        wait = parse_retry_after(retry_after) if status == 429 else None
        return Outcome("retry", status, detail, wait)
    # Other 4xx (and 3xx: redirects are not followed) say the request itself is wrong.
    return Outcome("terminal", status, detail)


class HttpClient:
    """A keep-alive httpx client that signs and POSTs requests; thread-safe (shared by the lanes)."""

    def __init__(self, cfg: ExternalConfig) -> None:
        import httpx

        if not cfg.url:
            raise ConfigError("the external sink needs an endpoint URL", hint="set PULSE_EXTERNAL_URL")
        self.url = cfg.url
        self._httpx = httpx
        self.signer = Signer(cfg.secret.get_secret_value()) if cfg.secret is not None else None
        self.compression = cfg.compression
        # auto: gzip once the endpoint lists it in an Accept-Encoding response header (RFC 7694)
        self.gzip = cfg.compression == "gzip"
        pool = cfg.concurrency + 2
        self.client = httpx.Client(
            http2=cfg.http2,
            timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s,
                                  write=cfg.read_timeout_s, pool=cfg.read_timeout_s),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=30),
            headers={"user-agent": cfg.user_agent},
            follow_redirects=False,
        )

    def send(self, req: Request) -> Outcome:
        httpx = self._httpx
        headers = {"content-type": req.content_type, "idempotency-key": req.msg_id}
        # The signature covers the JSON body, before any content coding (decompress, then verify).
        if self.signer is not None:
            headers.update(self.signer.headers(req.msg_id, req.body))
        else:
            headers["webhook-id"] = req.msg_id
        compressed = self.gzip
        body = req.body
        if compressed:
            body = gzip.compress(body, compresslevel=1)
            headers["content-encoding"] = "gzip"
        try:
            resp = self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Outcome("retry", None, f"timeout ({type(exc).__name__})", endpoint_down=True)
        except httpx.TransportError as exc:
            return Outcome("retry", None, f"{type(exc).__name__}: {exc}"[:300], endpoint_down=True)
        if self.compression == "auto":
            if compressed and resp.status_code == 415:
                self.gzip = False
                log.info("external.gzip_refused", note="the endpoint answered 415 to a gzip body; sending bodies "
                                                       "uncompressed from now on")
                return self.send(req)
            if not compressed and "gzip" in resp.headers.get("accept-encoding", "").lower():
                self.gzip = True
                log.info("external.gzip_accepted", note="the endpoint lists gzip in Accept-Encoding; compressing "
                                                        "request bodies from now on")
        text = resp.text if resp.status_code >= 300 else ""
        return classify(resp.status_code, resp.headers.get("retry-after"), text)

    def close(self) -> None:
        self.client.close()


class Stopped(Exception):
    """Delivery interrupted by shutdown (the rows stay in the outbox)."""


class CircuitBreaker:
    """Shared by all lanes: stops hammering a dead endpoint, then lets one probe through.

    closed -> (N consecutive endpoint failures) -> open for `open_s` -> one
    probe (half-open) -> success closes; failure re-opens for twice as long,
    up to `open_max_s`. A `Retry-After` pauses every lane until it expires.
    """

    def __init__(self, failures: int, open_s: float, open_max_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.open_s = open_s
        self.open_max_s = open_max_s
        self.clock = clock
        self._lock = threading.Lock()
        self.state = "closed"
        self.consecutive = 0
        self._open_for = open_s
        self._open_until = 0.0
        self._pause_until = 0.0
        self.opened = 0  # times opened (status, tests)

    def acquire(self, stop: threading.Event) -> bool:
        """Block until a request may go; True if it is the half-open probe. Raises Stopped on shutdown."""
        while True:
            with self._lock:
                now = self.clock()
                if self._pause_until > now:
                    wait = self._pause_until - now
                elif self.state == "closed":
                    return False
                elif self.state == "open" and now >= self._open_until:
                    self.state = "half-open"
                    return True
                elif self.state == "open":
                    wait = self._open_until - now
                else:  # half-open: a probe is in flight
                    wait = 0.05
            if stop.wait(min(wait, 0.25)):
                raise Stopped()

    def record(self, outcome: Outcome, probe: bool) -> None:
        with self._lock:
            if outcome.retry_after is not None:
                self._pause_until = max(self._pause_until, self.clock() + outcome.retry_after)
            if outcome.endpoint_down:
                if probe or self.state == "half-open":
                    self._open(min(self._open_for * 2, self.open_max_s))
                else:
                    self.consecutive += 1
                    if self.state == "closed" and self.consecutive >= self.failures:
                        self._open(self.open_s)
            else:  # the endpoint answered: it is up
                self.consecutive = 0
                if self.state != "closed":
                    log.info("external.circuit_closed")
                self.state = "closed"
                self._open_for = self.open_s
                CIRCUIT_OPEN.set(0)

    def release(self, probe: bool) -> None:
        """A probe that ended without an outcome (shutdown, a bug) hands its turn back."""
        with self._lock:
            if probe and self.state == "half-open":
                self.state = "open"
                self._open_until = self.clock()

    def _open(self, seconds: float) -> None:
        if self.state == "closed":
            self.opened += 1
            log.warning("external.circuit_open", seconds=round(seconds, 2), failures=self.consecutive)
        self.state = "open"
        self._open_for = seconds
        self._open_until = self.clock() + seconds
        CIRCUIT_OPEN.set(1)


class RetryPolicy:
    """Backoff (exponential, full jitter), Retry-After, and when to give up."""

    def __init__(self, initial_s: float, max_s: float, retry_after_max_s: float, max_attempts: int,
                 max_age_s: float, rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.retry_after_max_s = retry_after_max_s
        self.max_attempts = max_attempts
        self.max_age_s = max_age_s
        self.rng = rng
        self.clock = clock

    @classmethod
    def from_config(cls, cfg: ExternalConfig) -> "RetryPolicy":
        return cls(cfg.retry_initial_s, cfg.retry_max_s, cfg.retry_after_max_s, cfg.max_attempts, cfg.max_age_s)

    def wait(self, failures: int, retry_after: float | None) -> float:
        """Seconds before the next attempt after `failures` failed ones (full jitter: uniform in [0, cap])."""
        cap = min(self.max_s, self.initial_s * (2 ** max(0, failures - 1)))
        backoff = self.rng() * cap
        if retry_after is not None:
            return max(min(retry_after, self.retry_after_max_s), backoff)
        return backoff

    def exhausted(self, attempts: int, oldest_enqueued: float) -> str | None:
        if attempts >= self.max_attempts:
            return "max_attempts"
        if self.clock() - oldest_enqueued >= self.max_age_s:
            return "max_age"
        return None


class _Retry(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class Verdict(NamedTuple):
    kind: str  # "delivered" | "dead" | "stopped"
    status: int | None = None
    error: str = ""
    reason: str = ""  # dead: terminal | max_attempts | max_age
    attempts: int = 0


def deliver(send: Callable[[], Outcome], policy: RetryPolicy, breaker: CircuitBreaker, stop: threading.Event, *,
            prior_attempts: int = 0, oldest_enqueued: float | None = None,
            on_failure: Callable[[Outcome], None] = lambda o: None) -> Verdict:
    """Send one request until it is delivered, must be dead-lettered, or shutdown stops it.

    Attempts made by earlier processes (`prior_attempts`, kept in the outbox)
    count towards the limit; a failed half-open probe does not (the endpoint
    was down, not this batch wrong), but its age still runs.
    """
    oldest = oldest_enqueued if oldest_enqueued is not None else policy.clock()
    counted = prior_attempts
    exhausted: list[str] = []

    def attempt() -> Outcome:
        nonlocal counted
        probe = breaker.acquire(stop)
        try:
            outcome = send()
        except BaseException:
            breaker.release(probe)
            raise
        breaker.record(outcome, probe)
        ATTEMPTS.labels(outcome.kind if outcome.kind != "retry" else f"retry_{outcome.status or 'io'}").inc()
        if outcome.kind == "retry":
            if not (probe and outcome.endpoint_down):
                counted += 1
            on_failure(outcome)
            raise _Retry(outcome)
        return outcome

    def should_stop(state: RetryCallState) -> bool:
        if stop.is_set():
            return True
        why = policy.exhausted(counted, oldest)
        if why:
            exhausted.append(why)
            return True
        return False

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.outcome.retry_after if isinstance(exc, _Retry) else None
        return policy.wait(state.attempt_number, retry_after)

    retrying = Retrying(retry=retry_if_exception_type(_Retry), stop=should_stop, wait=wait,
                        sleep=lambda s: stop.wait(s), reraise=True)
    try:
        outcome = retrying(attempt)
    except Stopped:
        return Verdict("stopped", attempts=counted)
    except _Retry as exc:
        if not exhausted:
            return Verdict("stopped", exc.outcome.status, exc.outcome.error, attempts=counted)
        return Verdict("dead", exc.outcome.status, exc.outcome.error, exhausted[0], attempts=counted)
    if outcome.kind == "ok":
        return Verdict("delivered", outcome.status, attempts=counted + 1)
    return Verdict("dead", outcome.status, outcome.error, "terminal", attempts=counted + 1)


class LaneStats:
    """Counters the sink reports (shared by lanes; ints under the GIL are good enough for status)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.dead = 0
        self.failures = 0
        self.last_error: str | None = None
        self.removed = 0  # outbox rows delivered or dead-lettered (the backlog is what was appended minus these)
        self.heads: dict[int, float] = {}  # lane -> enqueue time (epoch) of the oldest row it holds undelivered


class Lane(threading.Thread):
    """Delivers one lane of the outbox, oldest first, one request at a time."""

    def __init__(self, index: int, lanes: int, outbox: Outbox, client: HttpClient, cfg: ExternalConfig,
                 breaker: CircuitBreaker, policy: RetryPolicy, stop: threading.Event, stats: LaneStats) -> None:
        super().__init__(name=f"pulse-external-lane-{index}", daemon=True)
        self.index = index
        self.lanes = lanes
        self.outbox = outbox
        self.client = client
        self.cfg = cfg
        self.breaker = breaker
        self.policy = policy
        self.stop_event = stop
        self.stats = stats
        self.wake = threading.Event()
        self.rewind = threading.Event()  # replays were queued behind the cursor: re-read the lane
        self.cap: int | None = None  # most events per request after a 413 (halved per 413)

    def run(self) -> None:
        cfg = self.cfg
        conn = None
        pending: list[OutboxRow] = []
        cursor = ZERO  # everything at or below was delivered or dead-lettered by this lane
        first_seen: float | None = None
        db_failures = 0
        while not self.stop_event.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.outbox.connect(autocommit=True, name=f"pulse-external-lane-{self.index}")
                self.wake.clear()
                if self.rewind.is_set():
                    self.rewind.clear()
                    pending, cursor, first_seen = [], ZERO, None
                room = cfg.batch_max_events - len(pending)
                if room > 0:
                    after = pending[-1].position if pending else cursor
                    pending.extend(self.outbox.fetch(conn, after, self.index, self.lanes, room))
                db_failures = 0
                if pending:
                    self.stats.heads[self.index] = pending[0].enqueued_at
                else:
                    self.stats.heads.pop(self.index, None)
                    self.wake.wait(cfg.poll_interval_s)
                    continue
                now = time.monotonic()
                if first_seen is None:
                    first_seen = now
                full = len(pending) >= cfg.batch_max_events or cfg.mode == "single" or (
                    sum(len(r.data) + len(r.attrs) for r in pending) >= cfg.batch_max_bytes)
                if not full and now - first_seen < cfg.batch_max_age_s:
                    self.wake.wait(cfg.batch_max_age_s - (now - first_seen))
                    continue
                req = build_request(pending, cfg.mode, self.cap or cfg.batch_max_events, cfg.batch_max_bytes)
                verdict = self._deliver(conn, req)
                if verdict.kind == "stopped":
                    break
                if verdict.kind == "split":  # 413 for several events: send the first half alone
                    self.cap = max(1, len(req.rows) // 2)
                    log.info("external.split", lane=self.index, events=len(req.rows), next=self.cap)
                    continue
                if self.cap is not None and verdict.kind == "delivered":
                    self.cap = None if self.cap * 2 >= cfg.batch_max_events else self.cap * 2
                done = len(req.rows)
                pending = pending[done:]
                cursor = req.rows[-1].position
                first_seen = first_seen if pending else None
            except psycopg2.Error as exc:
                # The outbox is the truth: forget what is in memory and re-read the lane.
                db_failures += 1
                self.stats.last_error = f"outbox: {str(exc).strip()[:300]}"
                log.warning("external.outbox_error", lane=self.index, error=self.stats.last_error)
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn, pending, cursor, first_seen = None, [], ZERO, None
                self.stop_event.wait(self.policy.wait(db_failures, None) + 0.1)
            except Exception as exc:  # a bug must not end delivery silently: log, back off, re-read
                db_failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("external.lane_error", lane=self.index, error=self.stats.last_error)
                pending, cursor, first_seen = [], ZERO, None
                self.stop_event.wait(self.policy.wait(db_failures, None) + 0.1)
        if conn is not None:
            conn.close()

    def _deliver(self, conn, req: Request) -> Verdict:
        rows = req.rows

        def on_failure(outcome: Outcome) -> None:
            self.stats.failures += 1
            self.stats.last_error = outcome.error
            log.info("external.retry", lane=self.index, events=len(rows), status=outcome.status,
                     error=outcome.error, retry_after=outcome.retry_after)
            self.outbox.note_failure(conn, rows, outcome.error)

        verdict = deliver(lambda: self.client.send(req), self.policy, self.breaker, self.stop_event,
                          prior_attempts=max(r.attempts for r in rows),
                          oldest_enqueued=min(r.enqueued_at for r in rows), on_failure=on_failure)
        if verdict.kind == "delivered":
            self.outbox.delete(conn, rows)
            self.stats.delivered += len(rows)
            self.stats.removed += len(rows)
            DELIVERED.inc(len(rows))
            now = time.time()
            for r in rows:
                # commit_ts is in the data; the enqueue time is a close, cheaper stand-in.
                DELIVERY_LAG.observe(max(0.0, now - r.enqueued_at))
        elif verdict.kind == "dead" and verdict.status == TOO_LARGE and len(rows) > 1:
            return verdict._replace(kind="split")
        elif verdict.kind == "dead" and verdict.status == TOO_LARGE:
            return self._deliver_truncated(conn, rows[0], verdict)
        elif verdict.kind == "dead":
            self.outbox.dead_letter(conn, rows, verdict.status, verdict.error or verdict.reason)
            self.stats.dead += len(rows)
            self.stats.removed += len(rows)
            DEAD.labels(verdict.reason).inc(len(rows))
            dead_letter_metric(self.outbox.sink_key.split("/", 1)[-1], verdict.reason, len(rows))
            log.warning("external.dead_letter", lane=self.index, events=len(rows), reason=verdict.reason,
                        status=verdict.status, error=verdict.error, first=str(rows[0].position),
                        hint="inspect with `pulse dlq list`, fix the receiver, then `pulse dlq replay`")
        return verdict


    def _deliver_truncated(self, conn, row: OutboxRow, refused: Verdict) -> Verdict:
        """One event the endpoint refused with 413: send it with the marker, keep it in full as a dead letter."""
        from pulse.sinks import dead_letter as dl

        cfg = self.cfg
        req = build_request([truncated_row(row)], cfg.mode, 1, cfg.batch_max_bytes)
        verdict = deliver(lambda: self.client.send(req), self.policy, self.breaker, self.stop_event,
                          oldest_enqueued=row.enqueued_at)
        if verdict.kind == "stopped":
            return verdict
        if verdict.kind == "delivered":
            error = f"{dl.PAYLOAD_TOO_LARGE}: {refused.error}; delivered with a marker"
            self.outbox.dead_letter(conn, [row], refused.status, error)
            self.stats.delivered += 1
            self.stats.dead += 1
            self.stats.removed += 1
            DELIVERED.inc()
            DEAD.labels(dl.PAYLOAD_TOO_LARGE).inc()
            dl.count(self.outbox.sink_key.split("/", 1)[-1], dl.PAYLOAD_TOO_LARGE)
            log.warning("external.event_too_large", lane=self.index, event_id=row.event_id, bytes=len(row.data),
                        position=str(row.position),
                        hint="delivered with a marker; the full event is in `pulse dlq list` (replay it once "
                             "the endpoint takes larger bodies)")
            return verdict
        # Even the marker was refused: the event is dead-lettered whole, as any refused event.
        self.outbox.dead_letter(conn, [row], verdict.status, verdict.error or verdict.reason)
        self.stats.dead += 1
        self.stats.removed += 1
        DEAD.labels(verdict.reason).inc()
        dead_letter_metric(self.outbox.sink_key.split("/", 1)[-1], verdict.reason, 1)
        return verdict


def replay_dead_letters(outbox: Outbox, client: HttpClient, cfg: ExternalConfig, *, ids: Sequence[int] | None = None,
                        max_attempts: int = 5, stop: threading.Event | None = None) -> tuple[int, int, str | None]:
    """Send dead letters again, oldest first, with their original ids; returns (delivered, failed, last error).

    Rows are locked (FOR UPDATE SKIP LOCKED) while they are sent, so two
    replays never send the same rows at once; delivered rows are deleted in
    the same transaction. Stops at the first batch that still fails, which
    stays in the store with its new error.
    """
    stop = stop or threading.Event()
    policy = RetryPolicy(cfg.retry_initial_s, cfg.retry_max_s, cfg.retry_after_max_s, max_attempts, cfg.max_age_s)
    breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_open_s, cfg.breaker_open_max_s)
    delivered = failed = 0
    error: str | None = None
    conn = outbox.connect(name="pulse-dlq-replay")
    try:
        while not stop.is_set():
            with conn, conn.cursor() as cur:
                locked = outbox.lock_dead_for_replay(cur, cfg.batch_max_events, ids)
                if not locked:
                    break
                dead_ids = [i for i, _ in locked]
                rows = [r for _, r in locked]
                while rows:
                    req = build_request(rows, cfg.mode, cfg.batch_max_events, cfg.batch_max_bytes)
                    verdict = deliver(lambda: client.send(req), policy, breaker, stop)
                    row_ids = dead_ids[:len(req.rows)]
                    if verdict.kind != "delivered":
                        failed += len(row_ids)
                        error = verdict.error or verdict.reason or "stopped"
                        outbox.note_replay_failure(cur, row_ids, verdict.status, error)
                        break
                    outbox.remove_dead(cur, row_ids)
                    delivered += len(row_ids)
                    rows = rows[len(req.rows):]
                    dead_ids = dead_ids[len(req.rows):]
            if error is not None:
                break
    finally:
        conn.close()
    return delivered, failed, error
