"""The one sink contract.

A sink receives batches of enriched events in position order, makes them
durable, and says how far it is durable. It stores that position inside the
destination, atomically with the data, where the destination allows; on
start (`open`) it returns the position it had stored, and the runtime hands
it only events after that position.

Checkpoint order is fixed (quixstreams' `Checkpoint.commit`, supabase/etl):
the sink is durable first, its position is stored second (in the same step
where possible), the slot is acknowledged last and only up to the slowest
sink.

Errors: raise `TransientError` for what retrying fixes (the runtime retries
the same batch with backoff; a sink must therefore be idempotent per
batch), `TerminalError` for what needs the operator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, NamedTuple

from pulse.model import ZERO, Batch, Change, Position

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

    import pyarrow as pa

    from pulse.sinks.dead_letter import DeadLetterAccess, DeadLetters

    from pulse.config import DatabaseConfig, Settings


class SinkInstance(NamedTuple):
    """Which instance of a sink kind a sink object is: `pulse run`'s (no partition), or, under
    `pulse consume`, the one of a Kafka partition (each keeps its own position and local state)."""

    kind: str  # the registry's name: redis, bigquery, external, ...
    topic: str | None = None
    partition: int | None = None

    @property
    def name(self) -> str:
        """The instance's name in metrics, logs and stored positions: `<kind>`, or `<kind>@<topic>/<partition>`."""
        return self.kind if self.partition is None else f"{self.kind}@{self.topic}/{self.partition}"

    @property
    def partitioned(self) -> bool:
        return self.partition is not None

    @classmethod
    def of(cls, name: "str | SinkInstance") -> "SinkInstance":
        """`name` as an instance: an instance as it is; a string in the form `name` gives (a stored or typed one)."""
        if isinstance(name, SinkInstance):
            return name
        kind, at, rest = name.partition("@")
        if not at:
            return cls(kind)
        topic, _, partition = rest.rpartition("/")
        return cls(kind, topic, int(partition))


class Sink(ABC):
    """Base class of every destination (Redis, BigQuery, external HTTP, test doubles)."""

    #: Short name used in config, metrics and logs (`instance.name`).
    name: str = "sink"
    #: Which instance this is (`SinkInstance`): set by `identify` in the constructor.
    instance: SinkInstance = SinkInstance("sink")

    def identify(self, name: "str | SinkInstance") -> None:
        """Set this object's instance (and `name`): constructors take the instance the runtime gives."""
        self.instance = SinkInstance.of(name)
        self.name = self.instance.name

    #: Over Kafka, a DELETE without old values is copied to every partition so
    #: it never overtakes its insert. A sink applying deletes by event id takes
    #: every copy (True); a sink that must see each event once, in order per
    #: content, takes only the copy in the null-content partition (False).
    takes_broadcast_copies: bool = True

    #: What `write` and `flush` report survives a crash of this process (it is in the
    #: destination). False for a sink that keeps events in memory only (`memory`): beside
    #: a durable sink it neither moves nor holds back the slot (`runtime/progress.py`).
    durable: bool = True

    #: Corrects what it holds with the old values of an UPDATE or DELETE
    #: (`EnrichedEvent.before`), which the server sends only under REPLICA
    #: IDENTITY FULL: `pulse run` warns at start when the source table lacks it.
    needs_old_values: bool = False

    #: Forwards events to workers of other sinks (Kafka): a backfill for sinks
    #: this pipeline lacks goes through it, its batches naming the targets.
    relays: bool = False

    #: Takes backfill chunks as Arrow tables (`write_columns`) rather than events.
    accepts_columns: bool = False

    #: Seconds the runtime keeps gathering events for one `write` once the
    #: first is there (up to `runtime.batch_max_events`), for a sink whose
    #: write has a fixed cost worth sharing (a spool file and its fsyncs) and
    #: whose data is not visible sooner anyway. 0: write what is there at once.
    linger_s: float = 0.0

    #: Can correct an event it already holds (`replay`): over Kafka, a dead
    #: letter published again in full after its size limit was raised.
    takes_replays: bool = False

    #: Stores its position with its data, so `open()` says where it stands.
    #: False for a sink whose durable state is the Kafka topic itself (the
    #: external sink with `outbox = "kafka"`): `pulse consume` then resumes it
    #: from the position committed with the group's offsets (bus/consumer.py).
    holds_position: bool = True

    #: What the initial snapshot does for this sink (`runtime/snapshot.py`):
    #: "rows" (it receives the existing rows, as backfill batches), "window"
    #: (it keeps only a recent window and is rebuilt from the source through
    #: `rebuild_window`), "none" (it wants only changes after the slot).
    snapshot_mode: str = "rows"

    def rebuild_window(self, database: "DatabaseConfig") -> dict[str, object]:
        """Rebuild this sink's window from the source (snapshot_mode "window"); returns a summary for the log."""
        raise NotImplementedError(f"sink {self.name} keeps no window")

    #: Can send its dead letters again in full (`replay_dead_letters`, for `pulse dlq replay`).
    replays_dead_letters: bool = False

    @classmethod
    def dead_letters(cls, settings: "Settings", name: str, **options: object) -> "DeadLetterAccess":
        """`pulse dlq`'s view of the dead letters of sink instance `name` (`options`: the verb's, e.g. `url`).

        The default: Pulse's `dead_letter` table, replayed by `replay_dead_letters` when the sink can.
        """
        from pulse.sinks.dead_letter import StoreAccess

        return StoreAccess(settings, name, cls.replay_dead_letters if cls.replays_dead_letters else None)

    @classmethod
    def replay_dead_letters(cls, settings: "Settings", store: "DeadLetters",
                            ids: "Sequence[int] | None") -> tuple[int, int, str | None]:
        """Send the selected dead letters of `store` again in full; (done, still failing, last error)."""
        raise NotImplementedError(f"sink {cls.__name__} does not replay dead letters")

    def publish_content(self, change: "Change") -> None:
        """For a relaying sink: forward a `content` row change, so the other side's content cache follows."""
        raise NotImplementedError(f"sink {self.name} relays nothing")

    def relay_snapshot_targets(self, settings: "Settings") -> tuple[tuple[str, ...], tuple[str, ...]]:
        """For a relaying sink: (destinations taking the snapshot's rows, destinations rebuilt for their window)."""
        return (), ()

    def open(self) -> Position:
        """Connect and return the durable position stored in the destination (ZERO when none)."""
        return ZERO

    @abstractmethod
    def write(self, batch: Batch) -> Position:
        """Write one batch; return the highest position now durable.

        A sink that buffers (e.g. a spool awaiting a load job) may return a
        position below `batch.last`; `flush` then forces the rest.
        """

    def write_columns(self, table: "pa.Table", first: Position, last: Position) -> Position:
        """Write enriched rows, the columnar form of `EnrichedEvent` (`model_arrow.ENRICHED_SCHEMA`), at first..last.

        Only called when `accepts_columns` is True; same durability contract as `write`.
        """
        raise NotImplementedError(f"sink {self.name} does not take columns")

    def replay(self, batch: Batch) -> None:
        """Deliver events again whose truncated form (`payload_too_large`) the sink already holds; durable on return.

        Their positions are at or below the sink's; only called when `takes_replays` is True.
        """
        raise NotImplementedError(f"sink {self.name} does not take replays")

    def flush(self) -> Position | None:
        """Make everything written durable; return the durable position (None: unchanged)."""
        return None

    def status(self) -> dict[str, object]:
        """Destination-specific counters for `pulse status` and `pulse board` (cheap: no I/O).

        Keys with a meaning shared by every sink (metrics.sink_gauges exports them):
        `backlog` (events held durably but not delivered downstream yet, an int),
        `backlog_oldest_s` (age of the oldest of them, 0 when none), `dead_lettered`
        (events this process moved to the dead-letter store).
        """
        return {}

    def close(self) -> None:
        """Release connections. Called once, after the last write or flush."""
