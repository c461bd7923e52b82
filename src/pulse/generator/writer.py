"""Writing events to PostgreSQL: COPY for history, small INSERT transactions for live.

**Bulk** (`write_bulk`): each chunk of events is encoded as COPY text in
memory and sent with psycopg2 `copy_expert`, one transaction per chunk (so a
CDC reader sees commits of bounded size, and a crash loses at most one
chunk). While chunk k is being copied on a worker thread (psycopg2 releases
the GIL while libpq sends it and waits for the server), chunk k+1 is
generated: memory holds at most two chunks. UPDATEs and DELETEs of past
events, when anomalies ask for them, run after the last COPY, on ids of this
run's rows: each chunk's ids end at the sequence value its session drew last
(`lastval()`) and are taken to be contiguous, which holds unless another
session inserts into the table during the same COPY (then a mutation may hit
one of its rows: the generator is for test and demo databases).

**Live** (`write_live`): event i is due at start + i / rate on the monotonic
clock (so the rate never drifts, and a late wake-up catches up); the events
due at a wake-up are inserted with `INSERT ... RETURNING id` in transactions
of at most `txn_rows`, as an application's request handlers would. UPDATEs
and DELETEs of recent events ride in the same transactions.
"""

from __future__ import annotations

import io
import threading
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import accumulate
from operator import itemgetter

import orjson
from psycopg2 import sql
from psycopg2.extras import execute_values

from pulse.errors import TerminalError
from pulse.generator.anomalies import DELETE_KIND, UPDATE_KIND, AnomalyInjector
from pulse.generator.events import DEVICES, Event
from pulse.log import get_logger

log = get_logger(__name__)

COLUMNS = ("content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")
_NULL = "\\N"
_SAFE_DEVICES = frozenset(name for name, _ in DEVICES)
_BUFFER_READ = 1 << 20
_EVENT_TYPE = itemgetter(2)


def events_table(schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier("engagement_events"))


def copy_escape(value: str) -> str:
    """Escape a value for COPY text format (backslash, tab, newline, carriage return)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class TimestampText:
    """Milliseconds since the epoch to `YYYY-MM-DD HH:MM:SS.mmm+00`, caching the minute prefix."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        minute, rest = divmod(ms, 60_000)
        prefix = self._cache.get(minute)
        if prefix is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            prefix = time.strftime("%Y-%m-%d %H:%M:", time.gmtime(minute * 60))
            self._cache[minute] = prefix
        return f"{prefix}{rest // 1000:02d}.{rest % 1000:03d}+00"


def encode_copy(events: Iterable[Event], ts_text: TimestampText | None = None) -> bytes:
    """COPY text-format lines (columns `COLUMNS`) for `events`, UTF-8."""
    ts_text = ts_text or TimestampText()
    dumps = orjson.dumps
    safe = _SAFE_DEVICES
    # Lines are encoded one by one: joining str first would widen a whole chunk
    # to 4 bytes a character as soon as one row holds an emoji.
    out: list[bytes] = []
    add = out.append
    for content_id, user_id, event_type, ts_ms, duration_ms, device, payload in events:
        body = dumps(payload).decode()
        if "\\" in body:
            body = body.replace("\\", "\\\\")
        if device not in safe:
            device = _NULL if device is None else copy_escape(device)
        add(
            f"{content_id or _NULL}\t{user_id}\t{event_type}\t{ts_text(ts_ms)}\t"
            f"{_NULL if duration_ms is None else duration_ms}\t{device}\t{body}\n".encode()
        )
    return b"".join(out)


def copy_statement(schema: str) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        events_table(schema), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )


def copy_bytes(conn, statement: sql.Composed, data: bytes) -> tuple[int, int]:
    """COPY `data` in one transaction; return (rows copied, last id this session drew)."""
    with conn, conn.cursor() as cur:
        cur.copy_expert(statement, io.BytesIO(data), size=_BUFFER_READ)
        rows = cur.rowcount
        cur.execute("SELECT lastval()")
        last_id = cur.fetchone()[0]
    return rows, last_id


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class WriteStats:
    """What a writer did: rows by event type, elapsed seconds of writing."""

    def __init__(self) -> None:
        self.rows = 0
        self.by_type: Counter[str] = Counter()
        self.elapsed_s = 0.0
        self.updated = 0
        self.deleted = 0

    def add(self, events: list[Event]) -> None:
        self.add_counts(len(events), Counter(map(_EVENT_TYPE, events)))

    def add_counts(self, rows: int, by_type: Counter[str]) -> None:
        self.rows += rows
        self.by_type.update(by_type)


def _mutation_counts(injector: AnomalyInjector | None, rows: int) -> tuple[int, int]:
    """How many UPDATEs and DELETEs a bulk load of `rows` gets (the live rate, in expectation)."""
    if injector is None or injector.fraction <= 0:
        return 0, 0
    each = max(1, round(rows * injector.mutation_probability)) if rows else 0
    return each, each


def write_bulk(
    conn,
    schema: str,
    chunks: Iterator[list[Event]],
    *,
    injector: AnomalyInjector | None = None,
    on_chunk: Callable[[WriteStats], None] | None = None,
) -> WriteStats:
    """COPY every chunk (one transaction each, pipelined with generation), then run mutations."""
    stats = WriteStats()
    statement = copy_statement(schema)
    ts_text = TimestampText()
    ranges: list[tuple[int, int]] = []  # (first id, rows) of each chunk
    started = time.perf_counter()
    pending: Future | None = None
    pending_counts: tuple[int, Counter[str]] = (0, Counter())

    def finish(fut: Future, expected: int, by_type: Counter[str]) -> None:
        rows, last_id = fut.result()
        if rows != expected:
            raise TerminalError(
                f"COPY wrote {rows} rows of a chunk of {expected}",
                hint="a trigger or rule on engagement_events drops rows; generate into a table without one",
            )
        ranges.append((last_id - rows + 1, rows))
        stats.add_counts(rows, by_type)
        if on_chunk is not None:
            on_chunk(stats)
        log.debug("generator.bulk.chunk", rows=rows, total=stats.rows)

    # Memory: the chunk being copied (as bytes) and the next one being built.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pulse-copy") as pool:
        try:
            for chunk in chunks:
                data = encode_copy(chunk, ts_text)
                counts = (len(chunk), Counter(map(_EVENT_TYPE, chunk)))
                del chunk
                if pending is not None:
                    finish(pending, *pending_counts)
                pending = pool.submit(copy_bytes, conn, statement, data)
                pending_counts = counts
                del data
            if pending is not None:
                finish(pending, *pending_counts)
                pending = None
        finally:
            if pending is not None:
                pending.exception()  # wait, so the connection is idle before it is closed

    updates, deletes = _mutation_counts(injector, stats.rows)
    if updates or deletes:
        total = sum(n for _, n in ranges)
        picks = injector.choose(updates + deletes, total)
        ids = _nth_ids(ranges, picks)
        stats.updated, stats.deleted = _mutate(conn, schema, ids[:updates], ids[updates:])
        injector.count(UPDATE_KIND, stats.updated)
        injector.count(DELETE_KIND, stats.deleted)
    stats.elapsed_s = time.perf_counter() - started
    return stats


def _nth_ids(ranges: list[tuple[int, int]], indexes: list[int]) -> list[int]:
    """The ids of the rows at `indexes` (0-based, in write order) of chunks whose ids are `ranges`."""
    starts = list(accumulate((rows for _, rows in ranges), initial=0))
    out = []
    for index in indexes:
        k = bisect_right(starts, index) - 1
        out.append(ranges[k][0] + index - starts[k])
    return out


_UPDATE_SQL = (
    "UPDATE {} SET duration_ms = CASE WHEN duration_ms IS NULL THEN NULL "
    "ELSE abs(duration_ms) + 1000 END, "
    "raw_payload = coalesce(raw_payload, '{{}}'::jsonb) || jsonb_build_object('amended', 'duration_corrected') "
    "WHERE id = ANY(%s)"
)
_DELETE_SQL = "DELETE FROM {} WHERE id = ANY(%s)"


def _mutate(conn, schema: str, update_ids: list[int], delete_ids: list[int]) -> tuple[int, int]:
    """UPDATE and DELETE past events by id, in one transaction; return the rows affected."""
    table = events_table(schema)
    updated = deleted = 0
    with conn, conn.cursor() as cur:
        if update_ids:
            cur.execute(sql.SQL(_UPDATE_SQL).format(table), (update_ids,))
            updated = cur.rowcount
        if delete_ids:
            cur.execute(sql.SQL(_DELETE_SQL).format(table), (delete_ids,))
            deleted = cur.rowcount
    return updated, deleted


def write_live(
    conn,
    schema: str,
    stream: Iterator[Event],
    *,
    rate: float,
    duration_s: float,
    txn_rows: int = 50,
    injector: AnomalyInjector | None = None,
    stop: threading.Event | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> WriteStats:
    """Insert events from `stream` at `rate`/s for `duration_s` (0: until `stop` is set)."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    stop = stop or threading.Event()
    total = round(rate * duration_s) if duration_s > 0 else None
    stats = WriteStats()
    recent: deque[int] = deque(maxlen=10_000)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES %s RETURNING id").format(
        events_table(schema), sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    )
    template = "(%s::uuid, %s::uuid, %s, %s, %s, %s, %s::jsonb)"
    table = events_table(schema)
    update = sql.SQL(_UPDATE_SQL).format(table)
    delete = sql.SQL(_DELETE_SQL).format(table)
    behind_logged = 0.0
    start = monotonic()
    while total is None or stats.rows < total:
        if stop.is_set():
            break
        now = monotonic()
        due = int((now - start) * rate) + 1
        if total is not None:
            due = min(due, total)
        n = due - stats.rows
        if n <= 0:
            stop.wait(max(0.0, start + stats.rows / rate - now))
            continue
        lag = now - (start + stats.rows / rate)
        if lag > 1.0 and now - behind_logged > 10.0:
            log.warning("generator.live.behind", lag_s=round(lag, 2), rate=rate)
            behind_logged = now
        while n > 0:
            size = min(n, txn_rows)
            batch = [next(stream) for _ in range(size)]
            mutations = []
            if injector is not None:
                for _ in batch:
                    kind = injector.draw_mutation()
                    if kind is not None and recent:
                        target = recent[injector.pick(len(recent))]
                        mutations.append((kind, target))
            rows = [
                (ev.content_id, ev.user_id, ev.event_type, _ms_to_datetime(ev.event_ts_ms), ev.duration_ms,
                 ev.device, orjson.dumps(ev.raw_payload).decode())
                for ev in batch
            ]
            with conn, conn.cursor() as cur:
                ids = execute_values(cur, insert, rows, template=template, page_size=size, fetch=True)
                for kind, target in mutations:
                    if kind == UPDATE_KIND:
                        cur.execute(update, ([target],))
                        stats.updated += cur.rowcount
                    else:
                        cur.execute(delete, ([target],))
                        stats.deleted += cur.rowcount
                        if cur.rowcount:
                            recent.remove(target)
            recent.extend(row[0] for row in ids)
            stats.add(batch)
            n -= size
    stats.elapsed_s = monotonic() - start
    if injector is not None:
        injector.count(UPDATE_KIND, stats.updated)
        injector.count(DELETE_KIND, stats.deleted)
    return stats


__all__ = [
    "COLUMNS",
    "TimestampText",
    "WriteStats",
    "copy_bytes",
    "copy_escape",
    "copy_statement",
    "encode_copy",
    "events_table",
    "write_bulk",
    "write_live",
]
