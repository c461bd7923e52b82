"""What `pulse board` shows, read by one thread whatever the number of open pages.

Two sources, two rates:

- the Redis board (every `board.interval_s`, 0.5 s by default): the same
  read as `pulse top` (`cli.top.snapshot`: top content with titles, per-type
  boards, devices, event types, freshness) plus the events of each bucket
  of the window by event type, for the chart (one HMGET per bucket of the
  window's fields `e|<event type>`: a few dozen small reads in one round
  trip, never the per-content fields);
- Pulse's own status in PostgreSQL (every `board.status_interval_s`, 2 s by
  default, the pace at which the pipeline reports): the slot, the
  pipeline's last report (`runtime_status`), the snapshot and backfill runs
  (`cli.status.read_status`). Rates in and out are differences between two
  reports. Nothing here reads the source tables.

Every read makes a new state document (`Collector.state`) and wakes the
server's event streams (`Collector.wait`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from pulse.log import get_logger
from pulse.sinks.redis.board import Keys, lowest_bucket

log = get_logger(__name__)


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read_series(client, keys: Keys, bucket_s: int, now: float) -> dict[str, Any]:
    """Events per bucket of the window by event type: {"bucket_s", "types", "points": [{"t", "counts"}]}.

    Buckets without events are present with zeros, so the chart's time axis is
    regular: from the oldest bucket of the window to the current one.
    """
    lo = lowest_bucket(now, keys.window_s, bucket_s)
    hi = int(now // bucket_s)
    pipe = client.pipeline(transaction=True)
    pipe.zrangebyscore(keys.index, lo, "+inf")
    pipe.zrange(keys.event_types, 0, -1)
    present, types = pipe.execute()
    buckets = sorted({int(float(_s(b))) for b in present} & set(range(lo, hi + 1)))
    names = sorted(_s(t) for t in types)
    counts: dict[int, dict[str, int]] = {}
    if buckets and names:
        pipe = client.pipeline(transaction=False)
        for b in buckets:
            pipe.hmget(keys.bucket(b), [f"e|{n}" for n in names])
        for b, row in zip(buckets, pipe.execute()):
            counts[b] = {n: int(v) for n, v in zip(names, row) if v is not None and int(v) > 0}
    points = [{"t": b * bucket_s, "counts": counts.get(b, {})} for b in range(lo, hi + 1)]
    return {"bucket_s": bucket_s, "window_s": keys.window_s, "types": names, "points": points}


def rates(previous: dict | None, current: dict | None) -> dict[str, Any]:
    """Events per second in and out per sink between two pipeline reports (None when unknown)."""
    out: dict[str, Any] = {"in": None, "sinks": {}}
    if not previous or not current or previous.get("pid") != current.get("pid"):
        return out
    dt = current["_at"] - previous["_at"]
    if dt <= 0:
        return out
    out["in"] = max(0.0, (current["events_in"] - previous["events_in"]) / dt)
    for name, sink in (current.get("sinks") or {}).items():
        before = (previous.get("sinks") or {}).get(name)
        if before is not None:
            out["sinks"][name] = max(0.0, (sink["written"] - before["written"]) / dt)
    return out


class Collector(threading.Thread):
    """Reads the board and the status on their own clocks; `state()` is the newest document."""

    def __init__(self, read_board: Callable[[float], dict], read_status: Callable[[], dict] | None,
                 interval_s: float, status_interval_s: float) -> None:
        super().__init__(name="pulse-board-collector", daemon=True)
        self.read_board = read_board
        self.read_status = read_status
        self.interval_s = interval_s
        self.status_interval_s = status_interval_s
        self.stop_event = threading.Event()
        self._cond = threading.Condition()
        self._version = 0
        self._state: dict[str, Any] = {"board": None, "status": None, "rates": rates(None, None),
                                       "errors": {}, "generated_at": time.time()}
        self._reports: list[dict] = []  # the last two distinct pipeline reports (for the rates)
        self._next_status = 0.0

    def state(self) -> tuple[int, dict[str, Any]]:
        with self._cond:
            return self._version, self._state

    def wait(self, after: int, timeout: float) -> tuple[int, dict[str, Any]]:
        """The state once its version is past `after` (or the current one after `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > after or self.stop_event.is_set(), timeout)
            return self._version, self._state

    def stop(self) -> None:
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()

    def collect_once(self) -> None:
        """One round: the board always, the status when its interval has passed."""
        now = time.time()
        state = dict(self._state)
        errors = dict(state["errors"])
        try:
            state["board"] = self.read_board(now)
            errors.pop("redis", None)
        except Exception as exc:  # shown on the page; the next round tries again
            errors["redis"] = f"{type(exc).__name__}: {exc}"
            log.debug("board.redis_failed", error=errors["redis"])
        if self.read_status is not None and time.monotonic() >= self._next_status:
            self._next_status = time.monotonic() + self.status_interval_s
            try:
                status = self.read_status()
                errors.pop("postgres", None)
                runtime = status.get("runtime")
                if runtime is not None:
                    runtime = dict(runtime, _at=now - runtime["age_s"])
                    if not self._reports or self._reports[-1]["updated_at"] != runtime["updated_at"]:
                        self._reports = [*self._reports[-1:], runtime]
                state["rates"] = rates(*(([None] + self._reports)[-2:]))
                state["status"] = status
            except Exception as exc:
                errors["postgres"] = f"{type(exc).__name__}: {exc}"
                log.debug("board.status_failed", error=errors["postgres"])
        state["errors"] = errors
        state["generated_at"] = now
        with self._cond:
            self._state = state
            self._version += 1
            self._cond.notify_all()

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.collect_once()
            self.stop_event.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
