"""The uploader that turns spool files into rows (clients and the table set: `bigquery.client`).

`Loader.load_once()` is the uploader role of the design (and all of
`pulse upload`): under the spool lock it takes the oldest files (up to
`load_max_bytes`), loads them into a staging table of their own (WRITE_TRUNCATE,
so a re-run replaces rather than adds), runs the apply script of
`bigquery.schema.apply_script` (dead letters, MERGE, state row, one
transaction), records the position locally, deletes the files, then drops the
staging table. A crash between any two steps leaves the files in the spool;
the next run repeats the steps, and every step is idempotent, so the table
ends the same (docs/sinks/bigquery.md, "Why it is exact").

The direct path skips the staging table and the MERGE when they cannot
matter: a group whose rows are one insert per event id, none of whose ids
the table holds yet (one `count(*)` over the group's id range, under the
spool lock, so no other loader of this table runs meanwhile), is loaded
straight into the table (WRITE_APPEND; a load job is atomic), then the
state row is stored. A crash between the load and the state row leaves the
files; the next attempt finds the ids present and takes the MERGE path,
which changes nothing (same positions) and stores the state. A load the
table refuses (a value it rejects) falls back to the MERGE path too, so bad
rows still reach the dead-letter table. Only for a sink that is the table's
single writer (`direct`: not a Kafka partition instance, where one event id
can move between partitions when its content id changes), and never for a
group with fields an UPDATE did not resend (only the MERGE can keep the
stored value) or with extra columns the table types other than STRING/JSON
(only the MERGE casts and dead-letters what does not fit).

Extra source columns (a column added to the source table): before a group
is loaded, the columns its files carry are added to the table (NULLABLE, the
type of `bigquery.schema.bq_type`, with the client's `update_table`) and to
the dead-letter table (as text); a column the table already has keeps its
type, and the MERGE casts to it.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import numpy as np

from pulse import metrics
from pulse.arrays import unique_ints
from pulse.config import BigQueryConfig
from pulse.errors import PulseError, TransientError
from pulse.log import get_logger
from pulse.model import Position
from pulse.sinks.bigquery import schema as S
from pulse.sinks.bigquery.client import JOB_RETRY_REASONS, LoadState, Tables, classify, import_bigquery, make_client, retries
from pulse.sinks.bigquery.cost import IdMark, next_load_at, pacing, utc_day
from pulse.sinks.bigquery.spool import UPLOAD_TMP_PREFIX, Spool, SpoolFile, parquet_options

if TYPE_CHECKING:  # pragma: no cover
    pass

log = get_logger(__name__)


# How long a backfill's hurry lasts after its last spooled chunk.
HURRY_S = 30.0


class Loader:
    """Applies spool files to the table: the sink's background thread and `pulse upload`.

    `direct`: this loader is the table's single writer (not a Kafka partition
    instance), so it may load fresh groups straight into the table and trust
    the high-water mark it keeps. `clock`: epoch seconds (driven in tests).
    """

    def __init__(self, tables: Tables, spool: Spool, cfg: BigQueryConfig, *, direct: bool | None = None,
                 clock=time.time) -> None:
        self.tables = tables
        self.spool = spool
        self.cfg = cfg
        self.single_writer = direct is not False
        self.direct = cfg.direct_load if direct is None else (direct and cfg.direct_load)
        self.clock = clock
        self.loaded_files = 0
        self.loaded_rows = 0
        self.direct_loads = 0
        self.merge_loads = 0
        self.checks = 0  # loads that had to look ids up in the table
        self.last_error: str | None = None
        self.hurry_until = 0.0
        self.jobs_today = 0  # jobs that wrote the table today (UTC), as the state row counts them
        self.next_at = 0.0  # the budget's earliest time for the next load
        self.jobs_tat: float | None = None
        self._state: LoadState | None = None
        # (spool position after this loader's last load, the state row as that load wrote it): while
        # the spool's position is still that one, no other loader of this spool (the only writers of
        # the table) has run since, and the state row needs no read.
        self._wrote: tuple[Position, LoadState] | None = None

    def hurry(self, now: float | None = None) -> None:
        """A backfill is being spooled: load every backfill_load_interval_s for the next HURRY_S seconds."""
        self.hurry_until = (self.clock() if now is None else now) + HURRY_S

    def due(self, now: float | None = None) -> bool:
        """A load is due when the oldest file is load_interval_s old (backfill_load_interval_s while
        hurried), or the spool is big enough; and never before the day's job budget allows it."""
        now = self.clock() if now is None else now
        if now < self.next_at:
            return False
        files = self.spool.files()
        if not files:
            return False
        interval = self.cfg.backfill_load_interval_s if now < self.hurry_until else self.cfg.load_interval_s
        oldest = min(f.mtime for f in files)
        return now - oldest >= interval or sum(f.size for f in files) >= self.cfg.load_max_bytes

    def _group(self, files: list[SpoolFile]) -> list[SpoolFile]:
        group: list[SpoolFile] = []
        size = 0
        for f in files:
            if group and (size + f.size > self.cfg.load_max_bytes or len(group) >= self.cfg.load_max_files):
                break
            group.append(f)
            size += f.size
        return group

    def _note_jobs(self, used: int, tat: float | None, now: float) -> None:
        budget = self.cfg.load_jobs_per_day
        self.jobs_today = used
        self.jobs_tat = tat
        self.next_at = next_load_at(tat, budget, now)
        metrics.BQ_TABLE_JOBS.labels(table=self.tables.table).set(used)
        metrics.BQ_TABLE_JOBS_BUDGET.labels(table=self.tables.table).set(budget)

    def load_once(self, wait_lock: bool = True) -> int:
        """Apply the oldest group of files; return how many files were applied (0: nothing to do, or the
        day's job budget allows no load yet)."""
        with self.spool.locked(wait=wait_lock) as got:
            if not got:
                return 0
            for leftover in self.spool.dir.glob(UPLOAD_TMP_PREFIX + "*"):
                leftover.unlink(missing_ok=True)  # a loader killed mid-combine (we hold the lock)
            files = self.spool.files()
            if not files:
                return 0
            applied = self.spool.read_position()
            stale = [f for f in files if f.last <= applied]
            if stale:
                # Applied, but the crash came before they were deleted.
                self.spool.remove(stale)
                files = [f for f in files if f.last > applied]
                if not files:
                    return len(stale)
            now = self.clock()
            wrote = self._wrote
            self._state = (wrote[1] if self.single_writer and wrote is not None and wrote[0] == applied
                           else self.tables.read_state())
            self._note_jobs(self._state.jobs_on(utc_day(now)), self._state.jobs_tat, now)
            if now < self.next_at:
                log.warning("bigquery.job_budget_wait", jobs_today=self.jobs_today,
                            budget=self.cfg.load_jobs_per_day, spooled_files=len(files),
                            next_load_in_s=round(self.next_at - now, 1),
                            hint="bigquery.load_jobs_per_day paces the loads; a larger load_max_bytes makes "
                                 "each load take more")
                return len(stale)
            group = self._group(files)
            self._apply(group)
            return len(stale) + len(group)

    def drain(self) -> int:
        n = 0
        while True:
            k = self.load_once()
            if k == 0:
                return n
            n += k

    def _apply(self, group: list[SpoolFile]) -> None:
        t0 = time.monotonic()
        now = self.clock()
        day = utc_day(now)
        state = self._state if self._state is not None else self.tables.read_state()
        self._state = None
        self._wrote = None
        interval = pacing(self.cfg.load_jobs_per_day)[0]
        last = group[-1].last
        upload = self._combined(group)
        t_upload = time.monotonic() - t0
        timings: dict[str, float] = {}  # of the direct path's steps, for the log line
        jobs = 0
        try:
            schema = pq.read_schema(upload)
            unchanged = S.UNCHANGED in schema.names
            extras = self.tables.extra_columns(S.extra_fields(schema), unchanged)
            keys = _group_keys(self.spool, group)
            # The mark: trusted only by the table's single writer (partition
            # instances race each other); started once from the table's highest id.
            mark = state.mark if self.single_writer else None
            if self.single_writer and mark is None:
                mark = IdMark(self.tables.highest_id())
            fresh = mark.fresh(keys.ids) if mark is not None else np.zeros(len(keys.ids), bool)
            unknown = keys.ids[~fresh]
            present, days = 0, set()
            if len(unknown):
                t1 = time.monotonic()
                present, days = self.tables.locate(unknown, keys.days)
                self.checks += 1
                timings["check_s"] = round(time.monotonic() - t1, 3)
            after = mark.after(keys.ids) if mark is not None else None
            update = S.StateUpdate(after.mark if after else None, after.absent if after else None, day, 1,
                                   int(now * 1_000_000), int(interval * 1_000_000))
            rows = None
            if (self.direct and keys.plain and present == 0 and not unchanged
                    and all(e.table_type in ("STRING", "JSON") for e in extras)):
                jobs += 1  # the claim counts the load
                rows = self._try_direct(upload, last, update, timings, extras)
            path = "direct" if rows is not None else "merge"
            if rows is None:
                jobs += 1
                rows = self._apply_merge(group, upload, last, extras, unchanged, S.partition_filter(days), update)
        finally:
            if upload != group[0].path:
                upload.unlink(missing_ok=True)
            if jobs:
                tat = max(state.jobs_tat or now, now) + jobs * interval
                self._note_jobs(state.jobs_on(day) + jobs, tat, now)
        # Order: the table (and its state row) first, then the local position, then the files.
        self.spool.write_position(last)
        self._wrote = (last, LoadState(last, after, day, self.jobs_today, self.jobs_tat))
        self.spool.remove(group)
        self.loaded_files += len(group)
        self.loaded_rows += rows
        self.last_error = None
        log.info("bigquery.loaded", files=len(group), rows=rows, path=path, position=str(last),
                 checked_ids=int(len(unknown)), partitions=len(days), jobs_today=self.jobs_today,
                 seconds=round(time.monotonic() - t0, 3), combine_s=round(t_upload, 3), **timings)

    def _try_direct(self, upload, last: Position, update: S.StateUpdate, timings: dict[str, float],
                    extras: list[S.Extra]) -> int | None:
        """Load the group into the table (none of its ids are there); None when the MERGE path must run.

        The claim (mark raised over the group, the job counted) is stored
        first: from then on the group's ids count as possibly present, so a
        crash after the load sends the re-run to the checked path.
        """
        t0 = time.monotonic()
        self.tables.claim(update)
        t1 = time.monotonic()
        try:
            rows = self.tables.load_direct(upload, extras)
        except TransientError:
            raise
        except PulseError as exc:
            # A value the table refuses (e.g. a payload its JSON type rejects):
            # the job changed nothing; the MERGE path dead-letters the bad rows.
            log.warning("bigquery.direct_load_refused", error=str(exc)[:300], action="applying with MERGE")
            return None
        t2 = time.monotonic()
        self.tables.store_position(last)
        self.direct_loads += 1
        timings.update(claim_s=round(t1 - t0, 3), load_s=round(t2 - t1, 3),
                       state_s=round(time.monotonic() - t2, 3))
        return rows

    def _apply_merge(self, group: list[SpoolFile], upload, last: Position, extras: list[S.Extra],
                     unchanged: bool, target_filter: str | None = None, update: S.StateUpdate | None = None) -> int:
        key = group[0].path.stem.replace("-", "_")  # deterministic: the same group reuses its staging table
        staging = self.tables.staging(key)
        rows = self._load_staging(staging, upload, S.staging_schema() + S.staging_extra_schema(extras, unchanged))
        self.tables.apply(self.tables.ref(staging), last, extras, unchanged, target_filter=target_filter,
                          state_update=update)
        self.merge_loads += 1
        try:
            self.tables.client.delete_table(self.tables.id(staging), not_found_ok=True, retry=self.tables.retry,
                                            timeout=self.tables.timeout)
        except Exception as exc:  # the staging table expires by itself anyway
            log.warning("bigquery.staging_drop_failed", table=staging, error=str(exc)[:200])
        return rows

    def _combined(self, group: list[SpoolFile]):
        """One Parquet file for the group (the file itself when the group is one file)."""
        if len(group) == 1:
            return group[0].path
        out = self.spool.dir / f"{UPLOAD_TMP_PREFIX}{uuid.uuid4().hex}.parquet"
        writer = None
        schema = _group_schema([self.spool.read_schema(f) for f in group])
        try:
            for f in group:
                t = _conform(self.spool.read(f), schema)
                if writer is None:
                    # A short-lived local copy: cheap compression beats small size here.
                    writer = pq.ParquetWriter(out, schema, compression="snappy", **parquet_options(schema))
                writer.write_table(t)
        finally:
            if writer is not None:
                writer.close()
        return out

    def _load_staging(self, staging: str, path, schema: list) -> int:
        bigquery = import_bigquery()
        t = self.tables
        try:
            table = bigquery.Table(t.id(staging), schema=schema)
            table.expires = datetime.now(timezone.utc) + timedelta(days=1)
            t.client.delete_table(table.reference, not_found_ok=True, retry=t.retry, timeout=t.timeout)
            t.client.create_table(table, exists_ok=True, retry=t.retry, timeout=t.timeout)
            return t.load_parquet(path, table.reference, schema, "WRITE_TRUNCATE", "pulse_load_", "load job")
        except PulseError:
            raise
        except Exception as exc:
            raise classify(exc, "load job") from exc


def _group_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for files of a group: the first's base columns, then `unchanged` and every extra
    column any file has (in order of appearance; the first file's type tags win: a column is created
    with the type the source first gave it, as it would have been had the files been loaded one by one)."""
    base = [schemas[0].field(n) for n in S.NAMES]
    extras: dict[str, pa.Field] = {}
    for s in schemas:
        for f in s:
            if f.name not in S.NAMES and f.name != S.UNCHANGED:
                extras.setdefault(f.name, f)
    # A file without one of the columns: its rows list it as unchanged (see `_conform`).
    unchanged = any(S.UNCHANGED in s.names or any(n not in s.names for n in extras) for s in schemas)
    return pa.schema(base + ([S.UNCHANGED_FIELD] if unchanged else []) + list(extras.values()))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order: missing ones NULL, types cast (memory vs disk)."""
    if table.schema.equals(schema, check_metadata=False) and table.schema.names == schema.names:
        return table.cast(schema) if table.schema != schema else table
    cols = []
    absent = [f.name for f in schema if f.name not in table.schema.names and f.name not in S.NAMES
              and f.name != S.UNCHANGED]
    for f in schema:
        if f.name in table.schema.names:
            cols.append(table.column(f.name).cast(f.type))
        elif f.name == S.UNCHANGED:
            # The changes of this file do not carry `absent`: the MERGE keeps what the table has.
            cols.append(pa.array([absent] * table.num_rows, f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    if absent and S.UNCHANGED in table.schema.names:
        listed = table.column(S.UNCHANGED).to_pylist()
        cols[schema.get_field_index(S.UNCHANGED)] = pa.array([(u or []) + absent for u in listed],
                                                             S.UNCHANGED_FIELD.type)
    return pa.Table.from_arrays(cols, schema=schema)


class GroupKeys(NamedTuple):
    ids: np.ndarray  # every event id of the group (repeats included)
    days: set  # the day partitions of its rows' event_ts (None: NULL)
    plain: bool  # one insert / update per id and no delete: a plain load does what the MERGE would


def _group_keys(spool: Spool, group: list[SpoolFile]) -> GroupKeys:
    """The group's ids, its rows' partitions, and whether a plain load can apply it.

    Only three columns are read: a MERGE into a table without these ids
    would insert exactly these rows, so a plain load does the same.
    """
    ids, ops, ts = [], [], []
    for f in group:
        t = spool.read(f, columns=["event_id", "op", "event_ts"])
        ids.extend(t.column("event_id").chunks)
        ops.extend(t.column("op").chunks)
        ts.extend(t.column("event_ts").chunks)
    all_ids = pa.chunked_array(ids, pa.int64()).to_numpy()
    n = len(all_ids)
    plain = n > 0 and not pc.any(pc.equal(pa.chunked_array(ops, pa.string()), "delete")).as_py() \
        and len(unique_ints(all_ids)) == n
    stamps = pa.chunked_array(ts, pa.timestamp("us", tz="UTC"))
    days = set(pc.unique(pc.cast(stamps, pa.date32())).to_pylist()) if n else set()
    return GroupKeys(all_ids, days, plain)


class LoaderThread(threading.Thread):
    """Runs `Loader.load_once` whenever a load is due; errors are logged and retried with backoff."""

    def __init__(self, loader: Loader, poll_s: float = 0.05, ensure=None) -> None:
        super().__init__(name="pulse-bigquery-loader", daemon=True)
        self.loader = loader
        self.poll_s = poll_s
        self.ensure = ensure  # called (once successfully) before the first load
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        backoff = 0.5
        ready = self.ensure is None
        while not self.stop_event.is_set():
            try:
                if not ready:
                    self.ensure()
                    ready = True
                if self.loader.due():
                    self.loader.load_once()
                    backoff = 0.5
                    continue
            except TransientError as exc:
                self.loader.last_error = str(exc)
                log.warning("bigquery.load_retry", error=str(exc), sleep_s=round(backoff, 2),
                            spooled_files=len(self.loader.spool.files()))
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except BaseException as exc:  # terminal: the sink reports it on its next write
                self.failure = exc
                log.error("bigquery.load_failed", error=str(exc))
                return
            self.stop_event.wait(self.poll_s)

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.join(timeout)


__all__ = ["LoadState", "Loader", "LoaderThread", "Tables", "classify", "JOB_RETRY_REASONS", "make_client", "retries"]
