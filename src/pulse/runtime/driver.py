"""One sink's writes, the same for `pulse run` and `pulse consume`.

`SinkWorker` (runtime/pipeline.py: a thread per sink, fed by a queue) and
the Kafka consumer (bus/consumer.py: an instance per partition) both hand
their batches to a `SinkDriver`, which owns what must not differ between
them: the retry policy (a `TransientError` is retried with jittered
exponential backoff, up to 30 s between attempts, until the caller stops;
anything else propagates), the form each chunk is written in, batches of at
most `batch_max` events, and the per-sink metrics (events out,
commit-to-sink latency measured once the write returned, transient errors,
problems counted on chunks). Each write returns what the sink reported
durable; the caller moves its own position with it (the slot's tracker, or
the partition's offsets).

`write(chunks)` takes a queue read of `pulse run` (`EventChunk`s and
`RowChunk`s, in order) and groups consecutive chunks that go the same way:

- to a sink that takes columns, chunks with a columnar form become one
  Arrow table of at most `COLUMNS_MERGE_ROWS` rows: one write, so one
  encode, frame, spool file and fsync instead of one per native run;
- the others become the events of one `write` call per `batch_max`.

A group never mixes backfill and live rows, nor two backfills' targets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pyarrow as pa
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from pulse import metrics
from pulse.errors import TransientError
from pulse.log import get_logger
from pulse.model import Batch, EnrichedEvent, Position
from pulse.sinks.base import Sink
from pulse.transform.columnar import EventChunk
from pulse.transform.rows import RowChunk

log = get_logger(__name__)

# A queue item of `pulse run` (runtime/pipeline.py).
Chunk = EventChunk | RowChunk
# Rows of consecutive columnar chunks merged into one table at most (a native
# read's runs hold up to ~2,000 rows each).
COLUMNS_MERGE_ROWS = 20_000


def newer(a: Position | None, b: Position | None) -> Position | None:
    """The later of two durable positions (None: not reported)."""
    return b if a is None or (b is not None and b > a) else a


class SinkDriver:
    def __init__(self, sink: Sink, *, batch_max: int, stopping: Callable[[], bool], metric: str | None = None,
                 retry_event: str = "sink.retry") -> None:
        self.sink = sink
        self.batch_max = batch_max
        self.stopping = stopping  # True: give up retrying (shutting down, or another part failed)
        self.metric = metric or sink.name  # the sink label of its metrics
        self.retry_event = retry_event
        self.written = 0
        self.retries = 0
        self.last_error: str | None = None

    # -- retries ----------------------------------------------------------------

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        self.last_error = str(exc)
        metrics.ERRORS.labels(self.metric, "transient").inc()
        log.warning(self.retry_event, sink=self.sink.name, attempt=state.attempt_number, error=str(exc),
                    sleep_s=round(state.next_action.sleep if state.next_action else 0, 2))

    def retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(TransientError),
            wait=wait_random_exponential(multiplier=0.2, max=30),
            stop=lambda _state: self.stopping(),
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def call(self, fn: Callable, *args):
        """`fn(*args)` under the retry policy."""
        return self.retrying()(fn, *args)

    # -- writes -----------------------------------------------------------------

    def write_events(self, events: Sequence[EnrichedEvent], *, backfill: bool | None = None,
                     targets: tuple[str, ...] = ()) -> Position | None:
        """Write `events` in batches of at most `batch_max`; the newest durable position the sink reported."""
        if not events:
            return None
        durable = self._batches(events, events[0].backfill if backfill is None else backfill, targets)
        self._observe(events, time.time())
        self._out(len(events))
        return durable

    def _observe(self, events: Sequence[EnrichedEvent], now: float) -> None:
        """Commit-to-sink latency, once per live event written (a backfill's commit is long past)."""
        hist = metrics.E2E.labels(self.metric)
        for ev in events:
            if ev.commit_ts is not None and not ev.backfill:
                hist.observe(now - ev.commit_ts.timestamp())

    def write(self, chunks: Sequence[Chunk]) -> Position | None:
        """A queue read, in order, as few writes as its groups allow (`plan`); the newest durable position."""
        durable = None
        for columnar, group in self.plan(chunks):
            head = group[0]
            if columnar:
                table = head.table() if len(group) == 1 else pa.concat_tables([c.table() for c in group])
                written = self.call(self.sink.write_columns, table, head.first, group[-1].position)
            else:
                events = head.events() if len(group) == 1 else [e for c in group for e in c.events()]
                written = self._batches(events, head.backfill, head.targets)
            durable = newer(durable, written)
            self._done(group)
        return durable

    def plan(self, chunks: Sequence[Chunk]) -> list[tuple[bool, list[Chunk]]]:
        """`chunks` as (columnar?, consecutive chunks written together), in order."""
        takes_columns = self.sink.accepts_columns
        out: list[tuple[bool, list[Chunk]]] = []
        rows = 0
        for chunk in chunks:
            columnar = takes_columns and not chunk.row_only
            if out:
                kind, group = out[-1]
                head = group[0]
                if (kind == columnar and head.backfill == chunk.backfill and head.targets == chunk.targets
                        and (not columnar or rows + len(chunk) <= COLUMNS_MERGE_ROWS)):
                    group.append(chunk)
                    rows += len(chunk)
                    continue
            out.append((columnar, [chunk]))
            rows = len(chunk)
        return out

    def _done(self, chunks: Sequence[Chunk]) -> None:
        """The metrics of chunks written: problems, commit-to-sink latency (live rows only), events out."""
        now = time.time()
        hist = metrics.E2E.labels(self.metric)
        n = 0
        for chunk in chunks:
            n += len(chunk)
            for problem, count in chunk.take_problems().items():
                metrics.PROBLEMS.labels(problem).inc(count)
            if chunk.backfill:  # a backfill's commit is long past
                continue
            if chunk.commit_ts is not None:  # one commit for the chunk: one observation
                metrics.observe_many(hist, now - chunk.commit_ts.timestamp(), len(chunk))
            else:  # rows of several transactions: each its own
                self._observe(chunk.events(), now)
        self._out(n)

    def _batches(self, events: Sequence[EnrichedEvent], backfill: bool,
                 targets: tuple[str, ...] | None) -> Position | None:
        durable = None
        for i in range(0, len(events), self.batch_max):
            part = tuple(events[i:i + self.batch_max])
            durable = newer(durable, self.call(self.sink.write, Batch(part, backfill=backfill, targets=targets)))
        return durable

    def flush(self) -> Position | None:
        return self.call(self.sink.flush)

    def replay(self, batch: Batch) -> None:
        self.call(self.sink.replay, batch)

    def _out(self, n: int) -> None:
        self.written += n
        metrics.EVENTS_OUT.labels(self.metric).inc(n)


__all__ = ["SinkDriver", "newer"]
