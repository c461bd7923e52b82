"""The BigQuery sink: exactly one row per source event in `<dataset>.engagement_events`.

Two modes (`bigquery.mode`), one table, one apply step:

- `batch` (default): `write()` spools the batch as a Parquet file on local
  disk (fsync'd, renamed into place) and returns `batch.last` as durable:
  the spool is the durable store, so BigQuery being down never blocks the
  pipeline. A loader thread (the same code as `pulse upload`) loads due
  files into a staging table and applies them with one idempotent script
  (dead letters, MERGE keyed by event_id keeping the highest source
  position, state row). See `bigquery_load`.
- `stream`: the Storage Write API, one PENDING stream per batch into
  `<table>_changelog` (visible atomically, position stored with the rows),
  MERGEd into the table every `merge_interval_s`. See `bigquery_stream`.

`open()` returns the highest position held: in batch mode the spool's
(its file names and its `position` file) or the state table's; in stream
mode the changelog's. docs/sinks/bigquery.md has the exactness argument.
"""

from __future__ import annotations

import re
from pathlib import Path

from pulse.config import BigQueryConfig, Settings
from pulse.errors import TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Batch, Position
from pulse.sinks import bigquery_schema as S
from pulse.sinks.base import Sink
from pulse.sinks.bigquery_load import Loader, LoaderThread, Tables, make_client
from pulse.sinks.bigquery_spool import Spool

log = get_logger(__name__)


class BigQuerySink(Sink):
    name = "bigquery"
    accepts_columns = True  # backfill chunks arrive enriched column-wise, already in the row shape

    def __init__(self, cfg: BigQueryConfig, *, name: str = "bigquery", client=None, write_client=None) -> None:
        self.cfg = cfg
        self.name = name
        self._client = client
        self._write_client = write_client
        self.tables: Tables | None = None
        self.spool: Spool | None = None
        self.loader: Loader | None = None
        self.loader_thread: LoaderThread | None = None
        self.writer = None
        self.merger = None

    @classmethod
    def from_settings(cls, settings: Settings, name: str = "bigquery") -> "BigQuerySink":
        return cls(settings.bigquery, name=name)

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> Position:
        cfg = self.cfg
        client = self._client or make_client(cfg)
        self._client = client
        self.tables = Tables(client, cfg)
        if cfg.mode == "stream":
            return self._open_stream()
        return self._open_batch()

    @property
    def partitioned(self) -> bool:
        """One instance per Kafka partition (`pulse consume` names them `bigquery@<topic>/<partition>`)."""
        return "@" in self.name

    def _spool_dir(self) -> Path:
        if not self.partitioned:
            return Path(self.cfg.spool_dir)
        # Each partition keeps its own spool and position file: positions only
        # increase within a partition, so they cannot share one.
        return Path(self.cfg.spool_dir) / re.sub(r"[^A-Za-z0-9_.-]", "_", self.name.split("@", 1)[1])

    def _open_batch(self) -> Position:
        assert self.tables is not None
        self.spool = Spool(self._spool_dir(), memory_bytes=self.cfg.load_max_bytes)
        removed = self.spool.clean_partial()
        if removed:
            log.info("bigquery.spool_partial_removed", files=removed)
        local = self.spool.highest()
        remote = ZERO
        try:
            self.tables.ensure()
            remote = self.tables.state_position()
            ready = True
        except TransientError as exc:
            if local == ZERO:
                raise  # nothing local tells us where we are: the runtime retries open()
            # The spool knows the position; BigQuery is only needed by the loader.
            log.warning("bigquery.unreachable_at_open", error=str(exc), position=str(local))
            ready = False
        self.loader = Loader(self.tables, self.spool, self.cfg, direct=not self.partitioned)
        if self.cfg.upload_in_process:
            self.loader_thread = LoaderThread(self.loader, ensure=None if ready else self.tables.ensure)
            self.loader_thread.start()
        # The table's state row is shared by every partition instance: only the
        # local spool speaks for this partition. Anything re-delivered from
        # Kafka is absorbed by the MERGE (by event id, guarded by position).
        pos = local if self.partitioned else max(local, remote)
        log.info("bigquery.opened", mode="batch", spool=str(self.spool.dir), spooled_files=len(self.spool.files()),
                 position=str(pos))
        return pos

    def _open_stream(self) -> Position:
        from pulse.sinks.bigquery_stream import MergerThread, StreamWriter

        assert self.tables is not None
        self.tables.ensure(changelog=True)
        self.writer = StreamWriter(self.tables, self.cfg, self._write_client)
        # Shared by all partition instances: a partition instance starts from
        # ZERO (its committed Kafka offsets bound the re-read; MERGE absorbs it).
        pos = ZERO if self.partitioned else max(self.tables.changelog_position(), self.tables.state_position())
        self.merger = MergerThread(self.tables, self.cfg)
        self.merger.start()
        log.info("bigquery.opened", mode="stream", position=str(pos))
        return pos

    def write(self, batch: Batch) -> Position:
        if not batch.events:
            return ZERO
        return self.write_columns(S.to_arrow(batch.events), batch.first, batch.last)

    def write_columns(self, table, first: Position, last: Position) -> Position:
        if table.num_rows == 0:
            return ZERO
        self._check_background()
        if self.cfg.mode == "stream":
            assert self.writer is not None
            self.writer.append(table, last)
        else:
            assert self.spool is not None
            self.spool.append(table, first, last)
            if self.loader is not None and table.column("backfill")[0].as_py():
                self.loader.hurry()  # a backfill: load it now, not at the next load_interval_s
        return last

    def flush(self) -> Position | None:
        self._check_background()
        return None

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
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # pragma: no cover - closing must not mask the outcome
                pass


__all__ = ["BigQuerySink"]
