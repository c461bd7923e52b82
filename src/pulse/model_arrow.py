"""The event model's columnar forms (Arrow), shared by the source, the enrichment and every sink.

- `RAW_SCHEMA`: a row of `engagement_events` as read, before enrichment:
  what a snapshot or backfill chunk's COPY hands out
  (`pulse.source.chunks`) and what the native reader's live runs of
  inserts become (`pulse.source.native.run_table`);
- `ENRICHED_SCHEMA`: an `EnrichedEvent` as columns, the output of
  `transform.columnar.enrich_table`. The BigQuery sink stores it as it is
  (its table types and descriptions are in `sinks/bigquery/schema.py`); the
  external sink encodes its CloudEvents from it.

Extra source columns (beyond `model.EVENT_COLUMNS`) ride in a raw table as
`EXTRA_PREFIX + name` text columns.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", tz="UTC")
NUMERIC = pa.decimal128(38, 9)  # exact decimals (BigQuery NUMERIC: precision 38, scale 9)

# `event_us` is event_ts in microseconds since the epoch; `event_ts_bad`
# flags a value Python cannot hold (infinity, BC, year > 9999).
RAW_SCHEMA = pa.schema([
    ("id", pa.int64()), ("content_id", pa.string()), ("user_id", pa.string()), ("event_type", pa.string()),
    ("event_us", pa.int64()), ("event_ts_bad", pa.bool_()), ("duration_ms", pa.int64()),
    ("device", pa.string()), ("raw_payload", pa.string()),
])

EXTRA_PREFIX = "extra:"  # raw column name of an extra source column (no RAW_SCHEMA name has a ':')

ENRICHED_SCHEMA = pa.schema([
    pa.field("event_id", pa.int64(), nullable=False),
    ("content_id", pa.string()),
    ("user_id", pa.string()),
    ("event_type", pa.string()),
    ("event_ts", TIMESTAMP),
    ("duration_ms", pa.int64()),
    ("device", pa.string()),
    ("raw_payload", pa.string()),
    ("content_slug", pa.string()),
    ("content_title", pa.string()),
    ("content_type", pa.string()),
    ("length_seconds", pa.int64()),
    ("engagement_seconds", NUMERIC),
    ("engagement_pct", NUMERIC),
    ("op", pa.string()),
    pa.field("source_lsn", pa.int64(), nullable=False),
    pa.field("source_seq", pa.int64(), nullable=False),
    ("commit_ts", TIMESTAMP),
    ("processed_ts", TIMESTAMP),
    ("backfill", pa.bool_()),
    ("problems", pa.list_(pa.string())),
])


def rows_after(table: pa.Table, position) -> pa.Table:
    """The rows of an enriched table after `position` (a `model.Position`), by (source_lsn, source_seq):
    what a sink that already holds `position` still has to take of a batch sent again."""
    lsn, seq = pc.field("source_lsn"), pc.field("source_seq")
    return table.filter((lsn > position.lsn) | ((lsn == position.lsn) & (seq > position.seq)))


__all__ = ["ENRICHED_SCHEMA", "EXTRA_PREFIX", "NUMERIC", "RAW_SCHEMA", "TIMESTAMP", "rows_after"]
