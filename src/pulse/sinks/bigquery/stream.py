"""Stream mode: Storage Write API appends to a changelog table, MERGEd into the table.

Each batch goes into a PENDING write stream of its own on
`<table>_changelog`, appended at explicit offsets, then finalized and
committed with `BatchCommitWriteStreams`: the batch becomes visible at once
or not at all. The changelog rows carry their source positions, so the
position is stored *with the data*: `open()` reads the highest committed
position from the changelog itself.

- a crash mid-append (or before the commit): the stream is never committed,
  nothing is visible, the runtime resends the batch from the changelog's
  position into a new stream;
- an append answered ALREADY_EXISTS: those rows are already in the stream
  (a resend after a lost answer), treated as success;
- OUT_OF_RANGE: a gap in the offsets; the stream is abandoned uncommitted
  (fail closed) and the batch is retried in a new stream;
- a commit whose answer was lost: the retry first asks whether the stream was
  committed, so the batch is not appended twice.

The merger (a thread of the sink) applies changelog rows between the
state table's position and the changelog's highest position to the table
every `merge_interval_s`, with the same idempotent script as batch mode.
Google's `AppendRowsStream` helper is not used: the emulator needs
`write_stream` on every request, so requests are sent as one plain
bidirectional call.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pyarrow as pa

from pulse.config import BigQueryConfig
from pulse.errors import PulseError, TerminalError, TransientError
from pulse.log import get_logger
from pulse.model import Position
from pulse.sinks.bigquery import schema as S
from pulse.sinks.bigquery.client import Tables, classify

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient

log = get_logger(__name__)

ALREADY_EXISTS = 6
OUT_OF_RANGE = 11
# AppendRows requests are limited to 10 MB; stay well below.
MAX_REQUEST_BYTES = 6 * 1024 * 1024


def make_write_client(cfg: BigQueryConfig) -> "BigQueryWriteClient":
    try:
        from google.cloud.bigquery_storage_v1 import BigQueryWriteClient
    except ModuleNotFoundError as exc:  # pragma: no cover
        from pulse.errors import ConfigError

        raise ConfigError("stream mode needs google-cloud-bigquery-storage",
                          hint="pip install 'pulse-cdc[bigquery]'") from exc
    if cfg.grpc_endpoint:
        import grpc
        from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
            BigQueryWriteGrpcTransport,
        )

        channel = grpc.insecure_channel(cfg.grpc_endpoint)
        return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
    if cfg.endpoint:
        raise TerminalError("bigquery.endpoint is set (an emulator) but bigquery.grpc_endpoint is not",
                            hint="set PULSE_BIGQUERY__GRPC_ENDPOINT to the emulator's gRPC host:port")
    if cfg.credentials_file:
        from google.oauth2 import service_account

        creds = service_account.Credentials.from_service_account_file(str(cfg.credentials_file))
        return BigQueryWriteClient(credentials=creds)
    return BigQueryWriteClient()


def _chunks(table: pa.Table) -> list[pa.RecordBatch]:
    """Record batches small enough for one AppendRows request each."""
    out: list[pa.RecordBatch] = []
    for rb in table.to_batches():
        if rb.nbytes <= MAX_REQUEST_BYTES or rb.num_rows == 1:
            out.append(rb)
            continue
        n = max(1, rb.num_rows * MAX_REQUEST_BYTES // max(rb.nbytes, 1))
        for start in range(0, rb.num_rows, n):
            out.append(rb.slice(start, n))
    return out


class StreamWriter:
    """Appends one batch per PENDING stream to the changelog table."""

    def __init__(self, tables: Tables, cfg: BigQueryConfig, client: "BigQueryWriteClient | None" = None) -> None:
        self.tables = tables
        self.cfg = cfg
        self.client = client or make_write_client(cfg)
        self.parent = (f"projects/{tables.project}/datasets/{tables.dataset}/tables/{tables.changelog}")
        # (stream name, batch last position) of a commit whose outcome we did not see.
        self._uncertain: tuple[str, Position] | None = None
        self._schema_bytes = S.ARROW_SCHEMA.serialize().to_pybytes()
        self._changelog_extras: set[str] | None = None  # extra columns the changelog has (read once)

    def append(self, table: pa.Table, last: Position) -> None:
        from google.cloud.bigquery_storage_v1 import types

        timeout = self.cfg.request_timeout_s
        if self._uncertain is not None and self._uncertain[1] == last:
            if self._committed(self._uncertain[0]):
                self._uncertain = None
                return
        self._uncertain = None
        schema_bytes = self._schema_bytes
        if self._changelog_extras is None:
            self._changelog_extras = {e.name for e in self.tables.changelog_extras()[0]}
        absent = self._changelog_extras - set(table.schema.names)
        if absent:
            # Rows without a column the changelog has: listed as unchanged, so the MERGE keeps the stored value.
            from pulse.sinks.bigquery.load import _conform

            fields = list(table.schema) + ([S.UNCHANGED_FIELD] if S.UNCHANGED not in table.schema.names else [])
            table = _conform(table, pa.schema(fields + [pa.field(n, pa.string()) for n in sorted(absent)]))
        if table.num_columns != len(S.NAMES):
            # Extra source columns / unchanged fields: the changelog (and the table) gain them first.
            extras = S.extra_fields(table.schema)
            self.tables.extra_columns(extras, S.UNCHANGED in table.schema.names, changelog=True)
            self._changelog_extras.update(e.name for e in extras)
            schema_bytes = table.schema.remove_metadata().serialize().to_pybytes()
        try:
            stream = self.client.create_write_stream(
                parent=self.parent, write_stream=types.WriteStream(type_=types.WriteStream.Type.PENDING),
                timeout=timeout)
            requests = []
            offset = 0
            for rb in _chunks(table):
                req = types.AppendRowsRequest(write_stream=stream.name, offset=offset)
                data = types.AppendRowsRequest.ArrowData()
                data.writer_schema = types.ArrowSchema(serialized_schema=schema_bytes)
                data.rows = types.ArrowRecordBatch(serialized_record_batch=rb.serialize().to_pybytes(),
                                                   row_count=rb.num_rows)
                req.arrow_rows = data
                requests.append(req)
                offset += rb.num_rows
            responses = list(self.client.append_rows(iter(requests), timeout=timeout))
            if len(responses) != len(requests):
                raise TransientError(f"Storage Write API answered {len(responses)} of {len(requests)} appends")
            for resp in responses:
                code = resp.error.code if resp.error else 0
                if resp.row_errors:
                    raise TerminalError(
                        f"Storage Write API rejected rows: {resp.row_errors[0].message}",
                        hint="the changelog table's schema differs from Pulse's: drop or fix it and restart")
                if code in (0, ALREADY_EXISTS):
                    continue  # ALREADY_EXISTS: these rows are in the stream already
                if code == OUT_OF_RANGE:
                    raise TransientError(f"append offset gap (OUT_OF_RANGE): {resp.error.message}; "
                                         "the stream is abandoned uncommitted and the batch retried")
                raise TransientError(f"append failed with status {code}: {resp.error.message}")
            self.client.finalize_write_stream(name=stream.name, timeout=timeout)
            self._uncertain = (stream.name, last)
            result = self.client.batch_commit_write_streams(
                request=types.BatchCommitWriteStreamsRequest(parent=self.parent, write_streams=[stream.name]),
                timeout=timeout)
            if result.stream_errors:
                err = result.stream_errors[0]
                raise TransientError(f"commit of {stream.name} failed: {err.error_message}")
            self._uncertain = None
        except PulseError:
            raise
        except Exception as exc:
            raise classify(exc, "Storage Write append") from exc

    def _committed(self, name: str) -> bool:
        try:
            ws = self.client.get_write_stream(name=name, timeout=self.cfg.request_timeout_s)
        except Exception as exc:
            raise classify(exc, "write stream status") from exc
        return bool(ws.commit_time)


class MergerThread(threading.Thread):
    """Every `merge_interval_s`, applies the new changelog rows to the table."""

    def __init__(self, tables: Tables, cfg: BigQueryConfig) -> None:
        super().__init__(name="pulse-bigquery-merger", daemon=True)
        self.tables = tables
        self.interval = cfg.merge_interval_s
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None
        self.merged = Position(0, 0)
        self.last_error: str | None = None

    def merge_once(self) -> bool:
        low = self.tables.state_position()
        high = self.tables.changelog_position()
        self.merged = low
        if high <= low:
            return False
        source = S.changelog_window(self.tables.ref(self.tables.changelog), (low.lsn, low.seq),
                                    (high.lsn, high.seq))
        extras, unchanged = self.tables.changelog_extras()
        self.tables.apply(source, high, extras, unchanged)
        self.merged = high
        log.info("bigquery.merged", position=str(high))
        return True

    def run(self) -> None:
        backoff = 0.5
        while not self.stop_event.wait(self.interval if backoff == 0.5 else backoff):
            try:
                self.merge_once()
                backoff = 0.5
                self.last_error = None
            except TransientError as exc:
                self.last_error = str(exc)
                backoff = min(max(backoff * 2, 1.0), 30.0)
                log.warning("bigquery.merge_retry", error=str(exc), sleep_s=backoff)
            except BaseException as exc:
                self.failure = exc
                log.error("bigquery.merge_failed", error=str(exc))
                return

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.join(timeout)
