"""BigQuery clients and the table set: the client factory, error classification, retries, and `Tables`
(creating and reading the tables, the id checks of the direct path, the state row).

The uploader that uses them is `bigquery.load`."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, NamedTuple


import numpy as np

from pulse import metrics
from pulse.arrays import unique_ints
from pulse.config import BigQueryConfig
from pulse.errors import ConfigError, PulseError, TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import ZERO, Position
from pulse.sinks.bigquery import schema as S
from pulse.sinks.bigquery.cost import IdMark, job_labels

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud import bigquery

log = get_logger(__name__)


def import_bigquery():
    try:
        from google.cloud import bigquery
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the bigquery sink needs google-cloud-bigquery",
                          hint="pip install 'pulse-cdc[bigquery]'") from exc
    return bigquery


def make_client(cfg: BigQueryConfig) -> "bigquery.Client":
    """A REST client: anonymous against an emulator (`endpoint`), else real credentials."""
    bigquery = import_bigquery()
    from google.api_core.client_options import ClientOptions

    S.check_identifier("project", cfg.project)
    if cfg.endpoint:
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(project=cfg.project, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=cfg.endpoint), location=cfg.location)
    import google.auth.exceptions

    try:
        if cfg.credentials_file:
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_file(str(cfg.credentials_file))
            return bigquery.Client(project=cfg.project, credentials=creds, location=cfg.location)
        return bigquery.Client(project=cfg.project, location=cfg.location)
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
        raise ConfigError(f"no usable BigQuery credentials: {str(exc).splitlines()[0][:300]}",
                          hint="set bigquery.credentials_file (PULSE_BIGQUERY__CREDENTIALS_FILE), run "
                               "`gcloud auth application-default login`, or set PULSE_BIGQUERY_ENDPOINT "
                               "for an emulator") from exc


def retries(deadline_s: float):
    """(retry, job_retry) for the client's calls: API calls retried for `deadline_s`
    (bigquery.request_timeout_s), whole jobs not re-run by the client.

    google-cloud-bigquery's default `job_retry` re-runs a failed query job for
    up to 40 minutes, and while it is set, the job's insert is retried for 10
    minutes whatever `retry` says (connection errors included): a loader sat
    inside one query for the whole of an emulator outage and reported
    nothing. With `job_retry=None` a failed job raises at once; `classify`
    calls the reasons the client would have re-run (`JOB_RETRY_REASONS`)
    transient, and the caller's own backoff (`LoaderThread`) runs the step
    again, which is safe: every step is idempotent (docs/sinks/bigquery.md).
    """
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(deadline_s), None


# Error reasons of a failed job that running it again may cure: the ones
# google-cloud-bigquery's default job_retry re-runs (its `retry.py`).
JOB_RETRY_REASONS = frozenset({"rateLimitExceeded", "backendError", "internalError", "badGateway",
                               "jobBackendError", "jobInternalError", "jobRateLimitExceeded"})


def query_config(cfg: BigQueryConfig, slot: str | None, path: str, params: list | None = None):
    """A QueryJobConfig with the labels pulse_slot / pulse_path and bigquery.maximum_bytes_billed."""
    bigquery = import_bigquery()
    config = bigquery.QueryJobConfig(labels=job_labels(slot, path), query_parameters=params or [])
    if cfg.maximum_bytes_billed is not None:
        config.maximum_bytes_billed = int(cfg.maximum_bytes_billed)
    return config


def query_error(exc: BaseException, cfg: BigQueryConfig, what: str, sql: str) -> PulseError:
    """`classify`, and for a query BigQuery refused over maximum_bytes_billed an error naming the query."""
    if _over_billing_limit(exc):
        return TerminalError(
            f"BigQuery {what}: the query would bill more than bigquery.maximum_bytes_billed "
            f"({cfg.maximum_bytes_billed or 0:,} bytes): {' '.join(sql.split())[:300]}",
            hint="raise bigquery.maximum_bytes_billed (PULSE_BIGQUERY__MAXIMUM_BYTES_BILLED) or unset it; "
                 "docs/sinks/bigquery.md, \"Cost model\", says what each query reads. The spool keeps "
                 "the rows until the load succeeds")
    return classify(exc, what)


def _over_billing_limit(exc: BaseException) -> bool:
    """BigQuery refused a query over its maximumBytesBilled (reason bytesBilledLimitExceeded)."""
    reasons = [e.get("reason") for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)]
    return "bytesBilledLimitExceeded" in reasons or "limit for bytes billed" in str(exc)


class LoadState(NamedTuple):
    """The table's state row as the loader reads it."""

    position: Position
    mark: IdMark | None  # None: not known yet (a table from before the mark, or a new one)
    jobs_day: "date | None"
    jobs_today: int
    jobs_tat: float | None = None  # the budget's pacing clock (epoch seconds; `bigquery.cost.pacing`)

    def jobs_on(self, day: "date") -> int:
        return self.jobs_today if self.jobs_day == day else 0


# Most ids named one by one in the staged-partition check (a query parameter); a larger
# group is checked by id ranges in every partition.
LOCATE_MAX_IDS = 50_000


def classify(exc: BaseException, what: str) -> PulseError:
    """Sort a client error into transient (retry) or terminal (operator)."""
    from google.api_core import exceptions as g

    if isinstance(exc, PulseError):
        return exc
    transient = (g.ServiceUnavailable, g.InternalServerError, g.TooManyRequests, g.GatewayTimeout,
                 g.BadGateway, g.DeadlineExceeded, g.RetryError, g.Aborted)
    text = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    if isinstance(exc, transient) or isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return TransientError(f"BigQuery {what}: {text}")
    try:
        import requests

        if isinstance(exc, requests.exceptions.RequestException):
            return TransientError(f"BigQuery {what}: {text}")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, g.NotFound) and _vanished_job(exc):
        # A job BigQuery no longer knows while Pulse polled it (seen when the emulator restarts
        # mid-job). Running the step again is safe: a MERGE is guarded by position, and a
        # direct load's ids are at or below its claimed mark, so the retry checks them first.
        return TransientError(f"BigQuery {what}: the job vanished while polled: {text}")
    if isinstance(exc, g.NotFound) and _vanished_upload(exc):
        # A resumable upload whose session the server forgot mid-upload (the emulator restarted
        # between the session's start and its PUT; BigQuery lets sessions expire too). No job
        # was created from it; the step starts a new upload, its ids checked as above.
        return TransientError(f"BigQuery {what}: the upload session vanished: {text}")
    if isinstance(exc, g.Forbidden) and "rateLimitExceeded" in str(exc):
        return TransientError(f"BigQuery {what}: rate limited: {text}")
    reasons = {e.get("reason") for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)}
    if reasons & JOB_RETRY_REASONS:
        return TransientError(f"BigQuery {what}: {'/'.join(sorted(reasons & JOB_RETRY_REASONS))}: {text}")
    if isinstance(exc, (g.Forbidden, g.Unauthorized)):
        return TerminalError(f"BigQuery {what}: permission denied: {text}",
                             hint="grant the service account BigQuery Data Editor and Job User on the project, "
                                  "or fix bigquery.credentials_file")
    if isinstance(exc, g.GoogleAPICallError):
        return TerminalError(f"BigQuery {what}: {text}",
                             hint="see the message; check bigquery.project / dataset / table and the table schema")
    return TransientError(f"BigQuery {what}: {type(exc).__name__}: {text}")


def _vanished_job(exc: BaseException) -> bool:
    """A 404 about a job (its URL names /jobs/ or /queries/, or the message says "Not found: Job")."""
    text = str(exc)
    return "/jobs/" in text or "/queries/" in text or "not found: job" in text.lower()


def _vanished_upload(exc: BaseException) -> bool:
    """A 404 about a resumable upload session (`upload_id=` in its URL, or "upload session ... not found")."""
    text = str(exc).lower()
    return "upload_id=" in text or ("upload session" in text and "not found" in text)


class Tables:
    """Names, creation and schema evolution of the sink's tables in one dataset."""

    def __init__(self, client: "bigquery.Client", cfg: BigQueryConfig, slot: str | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.slot = slot  # the `pulse_slot` label of every job
        self.project = client.project
        self.dataset = S.check_identifier("dataset", cfg.dataset)
        self.table = S.check_identifier("table", cfg.table)
        self.timeout = cfg.request_timeout_s
        self.retry, self.job_retry = retries(cfg.request_timeout_s)
        self._final_types: dict[str, str] = {}  # lower-cased column -> type, once extra columns appear
        self._side_columns: dict[str, set[str]] = {}  # dead-letter / changelog table -> its columns (lower)
        self._warned: set[str] = set()

    def id(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def ref(self, table: str) -> str:
        return S.ref(self.project, self.dataset, table)

    @property
    def dead_letter(self) -> str:
        return f"{self.table}_dead_letter"

    @property
    def changelog(self) -> str:
        return f"{self.table}_changelog"

    def staging(self, key: str) -> str:
        return f"_pulse_stage_{self.table}_{key}"

    # -- set-up ------------------------------------------------------------------------

    def ensure(self, changelog: bool = False) -> None:
        """Create the dataset and tables when missing; add new columns (never drop or retype)."""
        bigquery = import_bigquery()
        from google.api_core import exceptions as g

        try:
            ds = bigquery.Dataset(f"{self.project}.{self.dataset}")
            if self.cfg.location:
                ds.location = self.cfg.location
            self.client.create_dataset(ds, exists_ok=True, retry=self.retry, timeout=self.timeout)
            final = bigquery.Table(self.id(self.table), schema=S.final_schema())
            final.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                                                field=S.PARTITION_FIELD)
            final.clustering_fields = S.CLUSTERING
            final.description = "Pulse: one row per engagement event (docs/sinks/bigquery.md)"
            created = self._ensure_table(final, S.final_schema())
            self._ensure_table(bigquery.Table(self.id(self.dead_letter), schema=S.dead_letter_schema()),
                               S.dead_letter_schema())
            self._ensure_table(bigquery.Table(self.id(S.STATE_TABLE), schema=S.state_schema()), S.state_schema())
            if created:  # an empty table: its high-water mark is known without reading it
                self.claim(S.StateUpdate(mark=0, absent=()))
            if changelog:
                cl = bigquery.Table(self.id(self.changelog), schema=S.staging_schema())
                cl.time_partitioning = bigquery.TimePartitioning(
                    type_=bigquery.TimePartitioningType.DAY, field="processed_ts",
                    expiration_ms=self.cfg.changelog_retention_days * 86_400_000)
                self._ensure_table(cl, S.staging_schema())
        except g.GoogleAPICallError as exc:
            raise classify(exc, "table set-up") from exc
        except PulseError:
            raise
        except Exception as exc:
            raise classify(exc, "table set-up") from exc

    def _ensure_table(self, table: "bigquery.Table", wanted: list) -> bool:
        """Create the table, or add the columns it lacks; True when it was created."""
        from google.api_core import exceptions as g

        try:
            current = self.client.get_table(table.reference, retry=self.retry, timeout=self.timeout)
        except g.NotFound:
            try:
                self.client.create_table(table, retry=self.retry, timeout=self.timeout)
                log.info("bigquery.table_created", table=table.table_id)
                return True
            except g.Conflict:
                current = self.client.get_table(table.reference, retry=self.retry, timeout=self.timeout)
        add = S.plan_schema(current.schema, wanted, table.table_id)
        if add:
            # Through _add_columns: the emulator's query engine sees a column only after its DDL.
            self._add_columns(table.table_id, add)
        return False

    # -- state -----------------------------------------------------------------------------

    def extra_columns(self, extras: list[S.Extra], unchanged: bool = False,
                      changelog: bool = False) -> list[S.Extra]:
        """Make sure the table (and the dead-letter table, and the changelog) have these columns.

        Returns `extras` with the type each has in the table: a column the
        table already has keeps its type (a type change in the source is
        cast by the MERGE, and what does not fit is dead-lettered).
        """
        if not extras and not unchanged:
            return []
        from google.api_core import exceptions as g

        bigquery = import_bigquery()
        try:
            if not self._final_types or any(e.name.lower() not in self._final_types for e in extras):
                wanted = [bigquery.SchemaField(e.name, e.bq_type, mode="NULLABLE",
                                               description=f"source column ({e.pg_type})") for e in extras]
                self._final_types = self._add_columns(self.table, wanted)
            side = S.staging_extra_schema(extras, unchanged)
            for name in (self.dead_letter,) + ((self.changelog,) if changelog else ()):
                have = self._side_columns.setdefault(name, set())
                if any(f.name.lower() not in have for f in side):
                    have.update(self._add_columns(name, side))
        except g.GoogleAPICallError as exc:
            raise classify(exc, "adding columns") from exc
        known = self._final_types
        out = []
        for e in extras:
            table_type = known[e.name.lower()]
            if table_type != e.bq_type and e.name not in self._warned:
                self._warned.add(e.name)
                log.warning("bigquery.column_type_differs", column=e.name, table_type=table_type,
                            source_type=e.pg_type, note="values are cast to the table's type; a value that does "
                            "not fit sends its row to the dead-letter table")
            out.append(e._replace(table_type=table_type))
        return out

    def changelog_extras(self) -> tuple[list[S.Extra], bool]:
        """The extra columns of the changelog (with their type in the table) and whether it has `unchanged`."""
        from google.api_core import exceptions as g

        try:
            cl = self.client.get_table(self.id(self.changelog), retry=self.retry, timeout=self.timeout)
            base = {f.name for f in S.staging_schema()}
            names = [f.name for f in cl.schema if f.name not in base and f.name != S.UNCHANGED]
            unchanged = any(f.name == S.UNCHANGED for f in cl.schema)
            if any(n.lower() not in self._final_types for n in names):
                final = self.client.get_table(self.id(self.table), retry=self.retry, timeout=self.timeout)
                self._final_types = {f.name.lower(): S._norm(f.field_type) for f in final.schema}
        except g.GoogleAPICallError as exc:
            raise classify(exc, "changelog schema") from exc
        extras = []
        for n in names:
            table_type = self._final_types.get(n.lower(), "STRING")
            # The source's type of each row is not kept in the changelog: the reason names the table's.
            extras.append(S.Extra(S.check_identifier("column", n), table_type, "", table_type))
        return extras, unchanged

    def _add_columns(self, table_name: str, wanted: list) -> dict[str, str]:
        """Add the `wanted` fields the table lacks (never retyping one); returns name -> type of the table."""
        current = self.client.get_table(self.id(table_name), retry=self.retry, timeout=self.timeout)
        have = {f.name.lower() for f in current.schema}
        add = [f for f in wanted if f.name.lower() not in have]
        if add:
            current.schema = list(current.schema) + add
            current = self.client.update_table(current, ["schema"], retry=self.retry, timeout=self.timeout)
            for f in add:
                # The same as DDL: a no-op on BigQuery (the column is there now); the
                # emulator's query engine only sees columns added this way.
                col_type = f"ARRAY<{f.field_type}>" if f.mode == "REPEATED" else f.field_type
                self.query(f"ALTER TABLE {self.ref(table_name)} ADD COLUMN IF NOT EXISTS "
                           f"`{S.check_identifier('column', f.name)}` {col_type}", "adding a column", path="ddl")
            log.warning("bigquery.columns_added", table=table_name, columns=",".join(f.name for f in add))
        return {f.name.lower(): S._norm(f.field_type) for f in current.schema} | {
            f.name.lower(): S._norm(f.field_type) for f in add}

    def state_position(self) -> Position:
        # Only the position columns: readers that do not run ensure() first (`pulse dlq replay`)
        # may meet a state table from an earlier Pulse.
        rows = self.query(
            f"SELECT source_lsn, source_seq FROM {self.ref(S.STATE_TABLE)} WHERE table_name = '{self.table}'",
            "state read", path="state")
        return max((Position(int(r[0]), int(r[1])) for r in rows), default=ZERO)

    def read_state(self) -> "LoadState":
        """The table's state row: position, high-water mark, the day's job count (one query of the state table)."""
        rows = self.query(
            f"SELECT source_lsn, source_seq, max_event_id, absent_ids, jobs_day, jobs_today, jobs_tat "
            f"FROM {self.ref(S.STATE_TABLE)} WHERE table_name = '{self.table}'", "state read", path="state")
        if not rows:
            return LoadState(ZERO, None, None, 0, None)
        r = max(rows, key=lambda r: (int(r[0]), int(r[1])))
        return LoadState(Position(int(r[0]), int(r[1])), IdMark.parse(r[2], r[3]), r[4], int(r[5] or 0),
                         r[6].timestamp() if r[6] is not None else None)

    def highest_id(self) -> int:
        """The table's highest event_id (0: empty): once per table, to start its high-water mark."""
        rows = self.query(f"SELECT MAX(event_id) FROM {self.ref(self.table)}", "high-water mark start",
                          path="mark-start")
        return int(rows[0][0] or 0) if rows else 0

    def changelog_position(self) -> Position:
        rows = self.query(
            f"SELECT source_lsn, source_seq FROM {self.ref(self.changelog)} "
            "ORDER BY source_lsn DESC, source_seq DESC LIMIT 1", "changelog read", path="stream")
        return Position(int(rows[0][0]), int(rows[0][1])) if rows else ZERO

    def job_labels(self, path: str) -> dict[str, str]:
        return job_labels(self.slot, path)

    def query(self, sql: str, what: str, path: str = "other", params: list | None = None) -> list:
        """Run one query job (labelled, under bigquery.maximum_bytes_billed); its rows."""
        config = query_config(self.cfg, self.slot, path, params)
        try:
            job = self.client.query(sql, job_config=config, retry=self.retry, timeout=self.timeout,
                                    job_id_prefix="pulse_", job_retry=self.job_retry)
            rows = list(job.result(timeout=self.timeout, retry=self.retry, job_retry=self.job_retry))
        except Exception as exc:
            raise query_error(exc, self.cfg, what, sql) from exc
        billed = getattr(job, "total_bytes_billed", None)
        if billed:
            metrics.BQ_BYTES_BILLED.labels(path=path).inc(int(billed))
        return rows

    def apply(self, source: str, position: Position, extras: list[S.Extra] = (),  # type: ignore[assignment]
              unchanged: bool = False, target_filter: str | None = None,
              state_update: S.StateUpdate | None = None) -> None:
        script = S.apply_script(final=self.ref(self.table), source=source, dead_letter=self.ref(self.dead_letter),
                                state=self.ref(S.STATE_TABLE), table_name=self.table,
                                position=(position.lsn, position.seq), extras=extras, unchanged=unchanged,
                                target_filter=target_filter, state_update=state_update)
        self.query(script, "apply (MERGE)", path="merge")

    def locate(self, ids: "np.ndarray", days: set) -> tuple[int, set]:
        """Where the table holds rows of these event ids: (how many rows, their day partitions; None: NULL).

        First in the partitions of `days` only (the staged rows' own, where a
        row of a re-run group, or a row an update did not move, lies): each id
        is in the table at most once, so an id found there is nowhere else.
        Only ids not found there are then looked up in every partition (two
        columns read: event_id and event_ts), by id ranges covering them.
        """
        ids = unique_ints(ids)
        found_days: set = set()
        found = 0
        rest = ids
        bigquery = import_bigquery()
        if days and len(ids) <= LOCATE_MAX_IDS:
            rows = self.query(
                f"SELECT event_id, DATE(event_ts) FROM {self.ref(self.table)} T "
                f"WHERE {S.partition_filter(days)} AND event_id IN UNNEST(@ids)", "id check (staged partitions)",
                path="check", params=[bigquery.ArrayQueryParameter("ids", "INT64", ids.tolist())])
            seen = np.array(sorted({int(r[0]) for r in rows}), dtype=np.int64)
            found += len(rows)
            found_days.update(r[1] for r in rows)
            rest = np.setdiff1d(ids, seen, assume_unique=True)
        if len(rest):
            where = " OR ".join(f"event_id BETWEEN {lo} AND {hi}" for lo, hi in id_ranges(rest))
            rows = self.query(
                f"SELECT DATE(event_ts), count(*) FROM {self.ref(self.table)} T WHERE {where} GROUP BY 1",
                "id check (every partition)", path="check-all")
            found += sum(int(r[1]) for r in rows)
            found_days.update(r[0] for r in rows)
        return found, found_days

    def store_position(self, position: Position, update: S.StateUpdate | None = None) -> None:
        self.query(S.state_script(state=self.ref(S.STATE_TABLE), table_name=self.table,
                                  position=(position.lsn, position.seq), update=update), "state row", path="state")

    def claim(self, update: S.StateUpdate) -> None:
        """Before a direct load: raise the mark over the group's ids and count the job (the position stays)."""
        self.query(S.state_script(state=self.ref(S.STATE_TABLE), table_name=self.table, position=(0, 0),
                                  update=update), "state row (claim)", path="state")

    def load_parquet(self, path, destination, schema: list, disposition: str, prefix: str, what: str) -> int:
        """One load job of a Parquet file into `destination` (atomic); returns the rows loaded."""
        bigquery = import_bigquery()
        job_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=schema,
            write_disposition=disposition,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            labels=self.job_labels(prefix.strip("_").removeprefix("pulse_") or "load"),
        )
        opts = bigquery.ParquetOptions()
        opts.enable_list_inference = True
        job_config.parquet_options = opts
        try:
            with open(path, "rb") as fh:
                job = self.client.load_table_from_file(fh, destination, job_config=job_config, job_id_prefix=prefix,
                                                       timeout=self.timeout)
            job.result(timeout=self.timeout, retry=self.retry)
        except Exception as exc:
            raise classify(exc, what) from exc
        return int(job.output_rows or 0)

    def load_direct(self, path, extras: list[S.Extra] = ()) -> int:  # type: ignore[assignment]
        """Append a Parquet file's rows to the table itself (one atomic load job); returns the rows loaded."""
        bigquery = import_bigquery()
        schema = S.final_schema() + [bigquery.SchemaField(e.name, e.table_type) for e in extras]
        return self.load_parquet(path, self.id(self.table), schema, "WRITE_APPEND", "pulse_direct_",
                                 "direct load")


# Most id ranges one direct-path check names. A group mixes a few runs of
# ids (a snapshot or backfill chunk, the live stream's newest ids): checking
# each run instead of one span from the lowest to the highest keeps a group of
# fresh live ids and fresh chunk rows on the direct path, where one span would
# cover ids loaded before and send it to the MERGE.
MAX_ID_RANGES = 16


def id_ranges(ids, max_ranges: int = MAX_ID_RANGES) -> list[tuple[int, int]]:
    """The fewest (low, high) ranges, at most `max_ranges`, that cover `ids` and leave out the widest gaps."""
    values = unique_ints(ids)
    n = len(values)
    if n == 0:
        return []
    gaps = np.diff(values)
    # Cut at the (max_ranges - 1) widest gaps wider than 1 (adjacent ids need no cut); of equal gaps, the lowest.
    order = np.argsort(-gaps, kind="stable")[:max_ranges - 1]
    cuts = np.sort(order[gaps[order] > 1])
    starts = np.concatenate(([0], cuts + 1))
    ends = np.concatenate((cuts, [n - 1]))
    return list(zip(values[starts].tolist(), values[ends].tolist()))
