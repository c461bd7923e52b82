"""One sink's writes, the same for `pulse run` and `pulse consume`.

`SinkWorker` (runtime/pipeline.py: a thread per sink, fed by a queue) and
the Kafka consumer (bus/consumer.py: an instance per partition) both hand
their batches to a `SinkDriver`, which owns what must not differ between
them: the retry policy (a `TransientError` is retried with jittered
exponential backoff, up to 30 s between attempts, until the caller stops;
anything else propagates), batches of at most `batch_max` events, a chunk
written as columns to a sink that takes them (as events otherwise), and the
per-sink metrics (events out, commit-to-sink latency measured once the
write returned, transient errors, problems counted on chunks). Each write returns what the sink reported
durable; the caller moves its own position with it (the slot's tracker, or
the partition's offsets).
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

log = get_logger(__name__)


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
        hist = metrics.E2E.labels(self.metric)
        now = time.time()
        for ev in events:
            if ev.commit_ts is not None and not ev.backfill:  # live only: a backfill's commit is long past
                hist.observe(now - ev.commit_ts.timestamp())
        self._out(len(events))
        return durable

    def write_chunk(self, chunk: EventChunk) -> Position | None:
        """A chunk as columns to a sink that takes them (and the chunk allows it), else as its events."""
        if self.sink.accepts_columns and not chunk.row_only:
            durable = self.call(self.sink.write_columns, chunk.table(), chunk.first, chunk.position)
        else:
            durable = self._batches(chunk.events(), chunk.backfill, chunk.targets)
        for problem, count in chunk.take_problems().items():
            metrics.PROBLEMS.labels(problem).inc(count)
        if not chunk.backfill and chunk.commit_ts is not None:  # one commit for the chunk: one observation
            metrics.observe_many(metrics.E2E.labels(self.metric), time.time() - chunk.commit_ts.timestamp(),
                                 len(chunk))
        self._out(len(chunk))
        return durable

    def write_chunks(self, chunks: Sequence[EventChunk]) -> Position | None:
        """Consecutive chunks that all take the columnar path, as one table: one write (one spool file,
        one frame and fsync) instead of one per native run (`pipeline._merge_columns` groups them)."""
        table = pa.concat_tables([c.table() for c in chunks])
        durable = self.call(self.sink.write_columns, table, chunks[0].first, chunks[-1].position)
        now = time.time()
        hist = metrics.E2E.labels(self.metric)
        for chunk in chunks:
            for problem, count in chunk.take_problems().items():
                metrics.PROBLEMS.labels(problem).inc(count)
            if not chunk.backfill and chunk.commit_ts is not None:
                metrics.observe_many(hist, now - chunk.commit_ts.timestamp(), len(chunk))
        self._out(sum(len(c) for c in chunks))
        return durable

    def _batches(self, events: Sequence[EnrichedEvent], backfill: bool, targets: tuple[str, ...]) -> Position | None:
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
