"""The BigQuery sink: exactly one row per source event in `<dataset>.engagement_events`.

Two modes (`bigquery.mode`), one table, one apply step:

- `batch` (default): `write()` spools the batch as a Parquet file on local
  disk (fsync'd, renamed into place) and returns `batch.last` as durable:
  the spool is the durable store, so BigQuery being down never blocks the
  pipeline. A loader thread (the same code as `pulse upload`) loads due
  files into a staging table and applies them with one idempotent script
  (dead letters, MERGE keyed by event_id keeping the highest source
  position, state row). See `bigquery.load`.
- `stream`: the Storage Write API, one PENDING stream per batch into
  `<table>_changelog` (visible atomically, position stored with the rows),
  MERGEd into the table every `merge_interval_s`. See `bigquery.stream`.

An event whose `raw_payload` exceeds what BigQuery takes in one row
(`bigquery.max_row_bytes`; by default the Storage Write API's 10 MB request
in stream mode, a load job's 100 MB row in batch mode) is written with the
payload marker and the problem `payload_too_large`, its full form first kept
in Pulse's dead-letter store (sinks/dead_letter.py). Backfill chunks taken
column-wise are not checked (batch mode's 100 MB).

`open()` returns the highest position held: in batch mode the spool's
(its file names and its `position` file) or the state table's; in stream
mode the changelog's. docs/sinks/bigquery.md has the exactness argument.

What differs between the modes is the way in (`BatchMode`, `StreamMode`:
how to open, how to append a table, the row limit, whether writes linger),
chosen once from `bigquery.mode` (`MODES`); the sink around it (the row
limit's dead letters, replays, status, the background threads' failures)
is one.
"""

from __future__ import annotations

from pulse.config import BigQueryConfig, DatabaseConfig, Settings
from pulse.errors import TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, Position
from pulse.sinks.bigquery import schema as S
from pulse.sinks import dead_letter as dl
from pulse.sinks.base import Sink, SinkInstance
from pulse.sinks.bigquery.client import Tables, make_client
from pulse.sinks.bigquery.load import Loader, LoaderThread
from pulse.sinks.bigquery.spool import DEFAULT_ROOT, Spool, SpoolOwner, holds_batches, process_budget, spool_folder

log = get_logger(__name__)


class BatchMode:
    """`bigquery.mode = batch`: each write is a Parquet file in the local spool; a loader thread applies
    due files (a load job into staging, then the MERGE script: `bigquery.load`)."""

    #: Under a load job's 100 MB row.
    max_row_bytes = 99 * 1024 * 1024
    #: One spool file (and two fsyncs) per write, and rows reach the table at the next load anyway:
    #: the runtime gathers a write's events for `bigquery.write_linger_s`.
    lingers = True

    @staticmethod
    def open(sink: "BigQuerySink") -> Position:
        cfg, tables = sink.cfg, sink.tables
        assert tables is not None
        if cfg.spool_dir is None and holds_batches(DEFAULT_ROOT):
            log.warning("bigquery.old_spool", spool=str(DEFAULT_ROOT),
                        fix=f"an earlier Pulse spooled into {DEFAULT_ROOT}/ itself, which nothing loads now: "
                            f"pulse upload --once --spool-dir {DEFAULT_ROOT}")
        # One memory budget for the process: `pulse consume` opens a sink per partition. Each partition
        # keeps its own spool and position file: positions only increase within a partition.
        sink.spool = spool = Spool(spool_folder(cfg.spool_dir, sink.owner), owner=sink.owner,
                                   budget=process_budget(cfg.load_max_bytes))
        removed = spool.clean_partial()
        if removed:
            log.info("bigquery.spool_partial_removed", files=removed)
        local = spool.highest()
        remote = ZERO
        try:
            tables.ensure()
            remote = tables.state_position()
            ready = True
        except TransientError as exc:
            if local == ZERO:
                raise  # nothing local tells us where we are: the runtime retries open()
            # The spool knows the position; BigQuery is only needed by the loader.
            log.warning("bigquery.unreachable_at_open", error=str(exc), position=str(local))
            ready = False
        sink.loader = Loader(tables, spool, cfg, direct=not sink.partitioned)
        if cfg.upload_in_process:
            sink.loader_thread = LoaderThread(sink.loader, ensure=None if ready else tables.ensure)
            sink.loader_thread.start()
        # The table's state row is shared by every partition instance: only the
        # local spool speaks for this partition. Anything re-delivered from
        # Kafka is absorbed by the MERGE (by event id, guarded by position).
        pos = local if sink.partitioned else max(local, remote)
        log.info("bigquery.opened", mode="batch", spool=str(spool.dir), spooled_files=len(spool.files()),
                 position=str(pos))
        return pos

    @staticmethod
    def append(sink: "BigQuerySink", table, first: Position, last: Position) -> None:
        assert sink.spool is not None
        sink.spool.append(table, first, last)
        if sink.loader is not None and table.column("backfill")[0].as_py():
            sink.loader.hurry()  # a backfill: load it now, not at the next load_interval_s


class StreamMode:
    """`bigquery.mode = stream`: each write a PENDING Storage Write stream into `<table>_changelog`,
    committed atomically; a merger thread applies the changelog to the table (`bigquery.stream`)."""

    #: Under the 10 MB AppendRows request.
    max_row_bytes = 9 * 1024 * 1024
    #: Rows are visible once committed: written at once.
    lingers = False

    @staticmethod
    def open(sink: "BigQuerySink") -> Position:
        from pulse.sinks.bigquery.stream import MergerThread, StreamWriter

        tables = sink.tables
        assert tables is not None
        tables.ensure(changelog=True)
        sink.writer = StreamWriter(tables, sink.cfg, sink._write_client)
        # Shared by all partition instances: a partition instance starts from
        # ZERO (its committed Kafka offsets bound the re-read; MERGE absorbs it).
        pos = ZERO if sink.partitioned else max(tables.changelog_position(), tables.state_position())
        sink.merger = MergerThread(tables, sink.cfg)
        sink.merger.start()
        log.info("bigquery.opened", mode="stream", position=str(pos))
        return pos

    @staticmethod
    def append(sink: "BigQuerySink", table, first: Position, last: Position) -> None:
        assert sink.writer is not None
        sink.writer.append(table, last)


#: The way in of each `bigquery.mode`.
MODES: dict[str, type[BatchMode] | type[StreamMode]] = {"batch": BatchMode, "stream": StreamMode}
#: Default `max_row_bytes` per mode.
MAX_ROW_BYTES = {name: mode.max_row_bytes for name, mode in MODES.items()}


class BigQuerySink(Sink):
    name = "bigquery"
    accepts_columns = True  # backfill chunks arrive enriched column-wise, already in the row shape
    takes_replays = True  # a full payload replayed over Kafka is MERGEd into the row holding its marker
    replays_dead_letters = True  # full payloads put into the rows holding their markers (a load job and a MERGE)

    @classmethod
    def replay_dead_letters(cls, settings: Settings, store, ids) -> tuple[int, int, str | None]:
        return replay_dead_letters(settings.bigquery, store, ids=ids)

    def __init__(self, cfg: BigQueryConfig, *, name: "str | SinkInstance" = "bigquery", client=None,
                 write_client=None, slot: str | None = None, group: str | None = None,
                 db: DatabaseConfig | None = None) -> None:
        self.cfg = cfg
        self.identify(name)
        self.slot = slot
        # Whose spool this is: the table, and the slot (or Kafka topic, partition, group) it spools.
        self.owner = SpoolOwner.of(cfg.project, cfg.dataset, cfg.table, self.instance, slot=slot, group=group)
        self.mode = MODES[cfg.mode]
        self.max_row_bytes = cfg.max_row_bytes or self.mode.max_row_bytes
        self.linger_s = cfg.write_linger_s if self.mode.lingers else 0.0
        self.dead_letters = (dl.DeadLetters(db.dsn(), db.state_schema, f"{db.slot}/{self.name}")
                             if db is not None else None)
        self.truncated = 0
        self._client = client
        self._write_client = write_client
        self.tables: Tables | None = None
        self.spool: Spool | None = None
        self.position = ZERO  # the highest position written (spooled, or appended in stream mode)
        self.loader: Loader | None = None
        self.loader_thread: LoaderThread | None = None
        self.writer = None
        self.merger = None

    @classmethod
    def from_settings(cls, settings: Settings, name: "str | SinkInstance" = "bigquery") -> "BigQuerySink":
        return cls(settings.bigquery, name=name, slot=settings.database.slot,
                   group=settings.kafka.group_for(SinkInstance.of(name).kind), db=settings.database)

    @staticmethod
    def upload_owner(settings: Settings) -> SpoolOwner:
        """Whose spool folders `pulse upload` loads: this table, this slot's run spool and the
        `pulse consume --sink bigquery` partitions of its consumer group."""
        bq = settings.bigquery
        return SpoolOwner(bq.project, bq.dataset, bq.table, slot=settings.database.slot,
                          group=settings.kafka.group_for("bigquery"))

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> Position:
        cfg = self.cfg
        client = self._client or make_client(cfg)
        self._client = client
        self.tables = Tables(client, cfg, slot=self.slot)
        self.position = self.mode.open(self)
        return self.position

    @property
    def partitioned(self) -> bool:
        """One instance per Kafka partition (`pulse consume`)."""
        return self.instance.partitioned

    def write(self, batch: Batch) -> Position:
        if not batch.events:
            return ZERO
        return self.write_columns(S.to_arrow(self._fit(batch.events)), batch.first, batch.last)

    def _payload_bytes(self, raw: str | None) -> int:
        if raw is None or len(raw) * 4 <= self.max_row_bytes:  # cheap: at most 4 bytes per character
            return 0
        return len(raw.encode())

    def _fit(self, events: tuple) -> tuple:
        """The events, those too large for one row truncated after their full form is dead-lettered."""
        limit = self.max_row_bytes
        oversized = [e for e in events if self._payload_bytes(e.raw_payload) > limit]
        if not oversized:
            return events
        if self.dead_letters is None:
            raise TerminalError(f"event {oversized[0].event_id} exceeds bigquery.max_row_bytes ({limit}) and this "
                                "sink has no dead-letter store",
                                hint="build the sink with the database config (BigQuerySink.from_settings)")
        added = self.dead_letters.add([(e, dl.full_json(e)) for e in oversized], dl.PAYLOAD_TOO_LARGE,
                                      f"bigquery.max_row_bytes {limit} ({self.cfg.mode} mode)")
        if added:
            dl.count(self.name, dl.PAYLOAD_TOO_LARGE, added)
            self.truncated += added
        for e in oversized:
            log.warning("bigquery.event_too_large", event_id=e.event_id, position=str(e.position), limit=limit,
                        hint="written with a marker; the full event is in `pulse dlq list --sink bigquery`")
        big = {e.position for e in oversized}
        return tuple(dl.truncate(e) if e.position in big else e for e in events)

    def write_columns(self, table, first: Position, last: Position) -> Position:
        if table.num_rows == 0:
            return ZERO
        self._check_background()
        if last <= self.position:
            # Sent again (a retry, a replay from an older slot position): already spooled or loaded.
            return self.position
        self.mode.append(self, table, first, last)
        self.position = last
        return last

    def replay(self, batch: Batch) -> None:
        """Full payloads of events held with a marker (Kafka mode): merged into their rows once loaded."""
        from pulse.bus.codec import to_dict

        assert self.tables is not None
        docs = [to_dict(e) for e in batch.events]
        waiting = not_loaded_yet(self.tables, docs)
        if waiting:  # the consumer retries with backoff: the loader brings the rows meanwhile
            raise TransientError(f"replay waits for events {waiting[:10]} to be loaded into the table")
        try:
            merge_full_payloads(self.tables, docs)
        except TerminalError as exc:  # BigQuery refuses them still: keep them here, the stream goes on
            if self.dead_letters is None:
                raise
            self.dead_letters.add([(e, dl.full_json(e)) for e in batch.events], "replay_refused", str(exc))
            dl.count(self.name, "replay_refused", len(batch.events))
            log.warning("bigquery.replay_refused", events=len(batch.events), error=str(exc),
                        hint="`pulse dlq list --sink NAME` shows them")

    def flush(self) -> Position | None:
        self._check_background()
        return None

    def status(self) -> dict[str, object]:
        """For `pulse status`: the jobs that wrote the table today against the day's budget (batch mode)."""
        if self.loader is None:
            return {}
        return {"table jobs today": f"{self.loader.jobs_today}/{self.cfg.load_jobs_per_day}"}

    def _check_background(self) -> None:
        for t in (self.loader_thread, self.merger):
            if t is not None and t.failure is not None:
                exc = t.failure
                if isinstance(exc, TerminalError):
                    raise exc
                raise TerminalError(f"the BigQuery {t.name} thread failed: {exc}",
                                    hint="see the log line bigquery.load_failed / merge_failed") from exc

    def close(self) -> None:
        for t in (self.loader_thread, self.merger):
            if t is not None:
                t.stop()
        self.loader_thread = None
        self.merger = None
        if self.spool is not None:
            self.spool.forget()
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # pragma: no cover - closing must not mask the outcome
                pass


__all__ = ["BigQuerySink"]



def _full_payload_table(docs: list[dict]):
    import pyarrow as pa

    return pa.table({
        "event_id": pa.array([d["event_id"] for d in docs], pa.int64()),
        "source_lsn": pa.array([d["source_lsn"] for d in docs], pa.int64()),
        "source_seq": pa.array([d["source_seq"] for d in docs], pa.int64()),
        "raw_payload": pa.array([d["raw_payload"] for d in docs], pa.string()),
        "problems": pa.array([[p for p in d["problems"] if p != dl.PAYLOAD_TOO_LARGE] for d in docs],
                             pa.list_(pa.string())),
    })


def _days(docs: list[dict]) -> set | None:
    """The UTC day partitions of the events' event_ts (None: NULL), as dates; None when one cannot be told.

    A dead-letter document's event_ts is ISO text or a datetime; one that does
    not parse, or overflows on its way to UTC (a date at the edge of the
    range with an offset), names no partition: the caller then reads every
    partition rather than miss the row.
    """
    from datetime import datetime, timezone

    out = set()
    for d in docs:
        ts = d.get("event_ts")
        try:
            if isinstance(ts, str):
                ts = datetime.fromisoformat(ts)
            if ts is not None and ts.tzinfo is None:
                ts = ts.replace(tzinfo=timezone.utc)
            out.add(ts.astimezone(timezone.utc).date() if ts is not None else None)
        except (ValueError, OverflowError, TypeError, AttributeError):
            return None
    return out


def _partitions(docs: list[dict]) -> str:
    """The partition predicate of the documents' rows (`_days`), or TRUE when a day cannot be told."""
    days = _days(docs)
    return "TRUE" if days is None else S.partition_filter(days)


def not_loaded_yet(tables: Tables, docs: list[dict]) -> list[int]:
    """Event ids whose marker row is not in the table yet (still spooled or in the changelog).

    A row already replaced by a newer change, or deleted (the state row is
    past it), is not waited for: the replay has nothing to correct there.
    """
    ids = sorted({int(d["event_id"]) for d in docs})
    # Only the partitions of the replayed changes: a row holding one of them, or an older change
    # of its event, lies there or is waited for anyway; a newer change is past the state position.
    found = {int(r[0]): Position(int(r[1]), int(r[2])) for r in tables.query(
        f"SELECT event_id, source_lsn, source_seq FROM {tables.ref(tables.table)} T "
        f"WHERE event_id IN ({', '.join(str(i) for i in ids)}) AND {_partitions(docs)}",
        "replay check", path="replay")}
    applied = tables.state_position()
    waiting = []
    for d in docs:
        pos = Position(int(d["source_lsn"]), int(d["source_seq"]))
        have = found.get(int(d["event_id"]))
        if (have is None and applied < pos) or (have is not None and have < pos):
            waiting.append(int(d["event_id"]))
    return waiting


def merge_full_payloads(tables: Tables, docs: list[dict]) -> None:
    """Put the full payloads of events (their enriched JSON) into the rows carrying their markers.

    One load job (rows up to 100 MB, whatever the sink's mode) brings them
    into a scratch table; one MERGE sets `raw_payload` and `problems` of the
    rows still at the same event id and source position (a row a newer change
    replaced since is left alone); the scratch table is dropped.
    """
    import tempfile
    import uuid

    import pyarrow.parquet as pq

    from pulse.sinks.bigquery.client import import_bigquery

    bigquery = import_bigquery()
    scratch = f"_pulse_replay_{tables.table}_{uuid.uuid4().hex[:12]}"
    schema = [bigquery.SchemaField("event_id", "INT64"), bigquery.SchemaField("source_lsn", "INT64"),
              bigquery.SchemaField("source_seq", "INT64"), bigquery.SchemaField("raw_payload", "STRING"),
              bigquery.SchemaField("problems", "STRING", mode="REPEATED")]
    try:
        with tempfile.NamedTemporaryFile(suffix=".parquet") as fh:
            pq.write_table(_full_payload_table(docs), fh.name)
            tables.load_parquet(fh.name, tables.id(scratch), schema, "WRITE_TRUNCATE", "pulse_replay_",
                                "dead-letter replay load")
        tables.query(
            f"MERGE {tables.ref(tables.table)} T USING {tables.ref(scratch)} S "
            "ON T.event_id = S.event_id AND T.source_lsn = S.source_lsn AND T.source_seq = S.source_seq "
            f"AND {_partitions(docs)} "  # the row of that very change: its event_ts
            "WHEN MATCHED THEN UPDATE SET raw_payload = SAFE.PARSE_JSON(S.raw_payload), problems = S.problems",
            "dead-letter replay", path="replay")
    finally:
        try:
            tables.client.delete_table(tables.id(scratch), not_found_ok=True)
        except Exception as exc:  # a leftover scratch table is harmless; say so
            log.warning("bigquery.replay_scratch_left", table=scratch, error=str(exc))


def replay_dead_letters(cfg: BigQueryConfig, store: "dl.DeadLetters", ids: list[int] | None = None,
                        client=None) -> tuple[int, int, str | None]:
    """`pulse dlq replay --sink bigquery`: full payloads into the rows; returns (replayed, failed, last error).

    Rows whose marker row is not loaded yet, or that BigQuery still refuses
    (a payload over a load job's 100 MB), stay in the store with the error.
    One load job and one MERGE per chunk (bounded in bytes); stops after the
    first chunk that fails.
    """
    import orjson

    tables = Tables(client or make_client(cfg), cfg)
    replayed = 0
    conn = store.connect(name="pulse-dlq-replay")
    try:
        while True:
            with conn, conn.cursor() as cur:
                rows = store.lock_for_replay(cur, 1000, ids)
                if not rows:
                    return replayed, 0, None
                docs = [orjson.loads(r["event"]) for r in rows]
                try:
                    waiting = not_loaded_yet(tables, docs)
                    error = (f"events {waiting[:10]} are not loaded into the table yet; replay again later"
                             if waiting else None)
                    if not waiting:
                        merge_full_payloads(tables, docs)
                except Exception as exc:  # the load or the MERGE refused: the rows stay, with the error
                    error = str(exc)[:2000]
                if error is not None:
                    store.note_replay_failure(cur, [r["id"] for r in rows], error)
                    return replayed, len(rows), error
                store.remove(cur, [r["id"] for r in rows])
                replayed += len(rows)
    finally:
        conn.close()
