"""The BigQuery table's shape, the Arrow rows that feed it, and the SQL that applies them.

One column list (`COLUMNS`) drives everything: the final table, the staging /
changelog tables (the same columns, with `raw_payload` as STRING so a bad
value cannot fail a whole load), the Arrow schema of the spool files and of
Storage Write appends, and the MERGE that applies a set of changes.

Types (docs/sinks/bigquery.md explains why):

- ids and integers INT64, uuids STRING, times TIMESTAMP, `raw_payload` JSON;
- `engagement_seconds` / `engagement_pct` NUMERIC: both are decimals of fixed
  scale (3 and 2 digits), NUMERIC holds them exactly, and sums stay exact.

The MERGE is idempotent: a change is applied only when its source position
(source_lsn, source_seq) is above the row's, so applying the same staging
rows twice, or an older change after a newer one, changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timezone
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from pulse.errors import ConfigError, TerminalError
from pulse.model import EnrichedEvent

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud import bigquery


class Column(NamedTuple):
    name: str
    bq_type: str  # type in the final table
    arrow: pa.DataType
    mode: str = "NULLABLE"
    description: str = ""


_TS = pa.timestamp("us", tz="UTC")
_DEC = pa.decimal128(38, 9)  # BigQuery NUMERIC: precision 38, scale 9

COLUMNS: tuple[Column, ...] = (
    Column("event_id", "INT64", pa.int64(), "REQUIRED", "engagement_events.id in the source"),
    Column("content_id", "STRING", pa.string(), description="content.id (uuid)"),
    Column("user_id", "STRING", pa.string(), description="uuid of the user"),
    Column("event_type", "STRING", pa.string(), description="play / pause / finish / click"),
    Column("event_ts", "TIMESTAMP", _TS, description="when the event happened (partitioning column)"),
    Column("duration_ms", "INT64", pa.int64(), description="as sent; may be NULL or negative"),
    Column("device", "STRING", pa.string(), description="as sent"),
    Column("raw_payload", "JSON", pa.string(), description="the client's extra JSON"),
    Column("content_slug", "STRING", pa.string(), description="content.slug"),
    Column("content_title", "STRING", pa.string(), description="content.title"),
    Column("content_type", "STRING", pa.string(), description="podcast / newsletter / video (clustering)"),
    Column("length_seconds", "INT64", pa.int64(), description="content.length_seconds"),
    Column("engagement_seconds", "NUMERIC", _DEC, description="duration_ms / 1000, exact"),
    Column("engagement_pct", "NUMERIC", _DEC, description="engagement_seconds / length_seconds, 2 decimals"),
    Column("op", "STRING", pa.string(), description="last operation applied: insert or update"),
    Column("source_lsn", "INT64", pa.int64(), "REQUIRED", "commit LSN of the change applied"),
    Column("source_seq", "INT64", pa.int64(), "REQUIRED", "ordinal of the change in its transaction"),
    Column("commit_ts", "TIMESTAMP", _TS, description="commit time in the source"),
    Column("processed_ts", "TIMESTAMP", _TS, description="when Pulse enriched the change"),
    Column("backfill", "BOOL", pa.bool_(), description="came from a backfill"),
    Column("problems", "STRING", pa.list_(pa.string()), "REPEATED", "what was odd about the event"),
)
NAMES = tuple(c.name for c in COLUMNS)
# Staging / changelog hold raw_payload as text: PARSE_JSON happens in the MERGE,
# where a bad value can be routed to the dead-letter table instead of failing the load.
STAGING_TYPES = {"raw_payload": "STRING"}
ARROW_SCHEMA = pa.schema([pa.field(c.name, c.arrow, nullable=c.mode != "REQUIRED") for c in COLUMNS])

PARTITION_FIELD = "event_ts"
CLUSTERING = ["content_type", "content_id"]
STATE_TABLE = "_pulse_state"
DEAD_LETTER_EXTRA = (("reason", "STRING"), ("failed_ts", "TIMESTAMP"))

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9.:-]{1,62}$")


def check_identifier(kind: str, value: str) -> str:
    """Dataset / table names go into SQL as quoted identifiers: allow only safe ones."""
    ok = _PROJECT.match(value) if kind == "project" else _IDENT.match(value)
    if not ok:
        raise ConfigError(f"bigquery {kind} {value!r} is not a valid name",
                          hint=f"use letters, digits and '_' for bigquery.{kind}")
    return value


def field(col: Column, staging: bool = False) -> "bigquery.SchemaField":
    from google.cloud import bigquery

    bq_type = STAGING_TYPES.get(col.name, col.bq_type) if staging else col.bq_type
    mode = "NULLABLE" if (staging and col.mode == "REQUIRED" and col.name not in ("source_lsn", "source_seq",
                                                                                 "event_id")) else col.mode
    return bigquery.SchemaField(col.name, bq_type, mode=mode, description=col.description or None)


def final_schema() -> list["bigquery.SchemaField"]:
    return [field(c) for c in COLUMNS]


def staging_schema() -> list["bigquery.SchemaField"]:
    return [field(c, staging=True) for c in COLUMNS]


def dead_letter_schema() -> list["bigquery.SchemaField"]:
    from google.cloud import bigquery

    return staging_schema() + [bigquery.SchemaField(n, t) for n, t in DEAD_LETTER_EXTRA]


def state_schema() -> list["bigquery.SchemaField"]:
    from google.cloud import bigquery

    return [
        bigquery.SchemaField("table_name", "STRING", mode="REQUIRED"),
        bigquery.SchemaField("source_lsn", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("source_seq", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("updated_ts", "TIMESTAMP"),
    ]


# -- schema evolution ----------------------------------------------------------


def _norm(t: str) -> str:
    return {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "BIGNUMERIC": "BIGNUMERIC"}.get(t.upper(),
                                                                                                      t.upper())


def plan_schema(existing: Sequence[Any], wanted: Sequence[Any], where: str) -> list[Any]:
    """The fields to add to `existing` so it has every `wanted` column.

    Never drops a column (one the table has and Pulse does not know stays) and
    never retypes one: a type or mode clash is a TerminalError naming it.
    """
    have = {f.name.lower(): f for f in existing}
    add = []
    for want in wanted:
        cur = have.get(want.name.lower())
        if cur is None:
            if want.mode == "REQUIRED":
                # A new REQUIRED column cannot be added to a table with rows.
                from google.cloud import bigquery

                want = bigquery.SchemaField(want.name, want.field_type, mode="NULLABLE",
                                            description=want.description)
            add.append(want)
            continue
        clash = _norm(cur.field_type) != _norm(want.field_type) or (
            (cur.mode or "NULLABLE") == "REPEATED") != ((want.mode or "NULLABLE") == "REPEATED")
        if clash:
            raise TerminalError(
                f"{where}: column {want.name} is {cur.mode} {cur.field_type}, Pulse writes {want.mode} "
                f"{want.field_type}",
                hint="Pulse never retypes a column: migrate the table by hand (or point bigquery.table "
                     "at a new one) and restart",
            )
    return add


# -- rows ------------------------------------------------------------------------


def _ts(value):
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def to_arrow(events: Sequence[EnrichedEvent]) -> pa.Table:
    """Arrow rows in `ARROW_SCHEMA` order (the spool files and Storage Write appends)."""
    cols: dict[str, Any] = {
        "event_id": [e.event_id for e in events],
        "content_id": [e.content_id for e in events],
        "user_id": [e.user_id for e in events],
        "event_type": [e.event_type for e in events],
        "event_ts": [_ts(e.event_ts) for e in events],
        "duration_ms": [e.duration_ms for e in events],
        "device": [e.device for e in events],
        "raw_payload": [e.raw_payload for e in events],
        "content_slug": [e.content_slug for e in events],
        "content_title": [e.content_title for e in events],
        "content_type": [e.content_type for e in events],
        "length_seconds": [e.length_seconds for e in events],
        "op": [e.op for e in events],
        "source_lsn": [e.position.lsn for e in events],
        "source_seq": [e.position.seq for e in events],
        "commit_ts": [_ts(e.commit_ts) for e in events],
        "processed_ts": [_ts(e.processed_ts) for e in events],
        "backfill": [e.backfill for e in events],
        "problems": [list(e.problems) for e in events],
    }
    arrays = []
    for c in COLUMNS:
        if c.arrow == _DEC:
            # float -> decimal(38, 9) in Arrow rounds to the nearest 1e-9, so the
            # 2- and 3-decimal values of the enrichment arrive exactly (0.57, not 0.5699...).
            src = [getattr(e, c.name) for e in events]
            arrays.append(pa.array(src, pa.float64()).cast(_DEC))
        else:
            arrays.append(pa.array(cols[c.name], c.arrow))
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


# -- SQL -----------------------------------------------------------------------


def ref(project: str, dataset: str, table: str) -> str:
    """A quoted table reference (names were checked by `check_identifier`)."""
    return f"`{project}.{dataset}.{table}`"


_NEWER = "(S.source_lsn > T.source_lsn OR (S.source_lsn = T.source_lsn AND S.source_seq > T.source_seq))"
_BAD_JSON = "(S.raw_payload IS NOT NULL AND SAFE.PARSE_JSON(S.raw_payload) IS NULL)"


def _select_value(name: str) -> str:
    return f"SAFE.PARSE_JSON(S.{name})" if name == "raw_payload" else f"S.{name}"


def apply_script(*, final: str, source: str, dead_letter: str, state: str, table_name: str,
                 position: tuple[int, int]) -> str:
    """One script that applies the changes in `source` (a table or a subquery) to `final`.

    1. rows whose value BigQuery would reject (raw_payload not JSON) go to the
       dead-letter table with the reason, once (keyed by event id and position);
    2. the newest valid change of each event is MERGEd: delete removes the
       row, insert / update replace it, and only when newer than the row's
       position (so replays and re-runs are no-ops);
    3. the state row records `position`, in the same transaction.
    """
    lsn, seq = int(position[0]), int(position[1])
    cols = ", ".join(NAMES)
    s_cols = ", ".join(f"S.{n}" for n in NAMES)
    values = ", ".join(_select_value(n) for n in NAMES)
    updates = ", ".join(f"{n} = {_select_value(n)}" for n in NAMES if n != "event_id")
    name = table_name.replace("'", "")
    return f"""BEGIN TRANSACTION;
INSERT INTO {dead_letter} ({cols}, reason, failed_ts)
SELECT {s_cols}, 'raw_payload is not valid JSON', CURRENT_TIMESTAMP()
FROM {source} S
WHERE {_BAD_JSON} AND NOT EXISTS (
  SELECT 1 FROM {dead_letter} D
  WHERE D.event_id = S.event_id AND D.source_lsn = S.source_lsn AND D.source_seq = S.source_seq);
MERGE {final} T
USING (
  SELECT * FROM {source} S WHERE NOT {_BAD_JSON}
  QUALIFY ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY source_lsn DESC, source_seq DESC) = 1
) S
ON T.event_id = S.event_id
WHEN MATCHED AND S.op = 'delete' AND {_NEWER} THEN DELETE
WHEN MATCHED AND S.op != 'delete' AND {_NEWER} THEN UPDATE SET {updates}
WHEN NOT MATCHED AND S.op != 'delete' THEN INSERT ({cols}) VALUES ({values});
{_state_merge(state, name, lsn, seq)}
COMMIT TRANSACTION;"""


def _state_merge(state: str, name: str, lsn: int, seq: int) -> str:
    return f"""MERGE {state} T
USING (SELECT '{name}' AS table_name, {lsn} AS source_lsn, {seq} AS source_seq) S
ON T.table_name = S.table_name
WHEN MATCHED AND {_NEWER} THEN UPDATE SET source_lsn = S.source_lsn, source_seq = S.source_seq,
  updated_ts = CURRENT_TIMESTAMP()
WHEN NOT MATCHED THEN INSERT (table_name, source_lsn, source_seq, updated_ts)
  VALUES (S.table_name, S.source_lsn, S.source_seq, CURRENT_TIMESTAMP());"""


def state_script(*, state: str, table_name: str, position: tuple[int, int]) -> str:
    """The state row alone (after a direct load): moves only forward."""
    return _state_merge(state, table_name.replace("'", ""), int(position[0]), int(position[1]))


def changelog_window(changelog: str, low: tuple[int, int], high: tuple[int, int]) -> str:
    """A subquery of the changelog rows with low < position <= high."""
    (ll, ls), (hl, hs) = (int(low[0]), int(low[1])), (int(high[0]), int(high[1]))
    return (f"(SELECT * FROM {changelog} WHERE (source_lsn > {ll} OR (source_lsn = {ll} AND source_seq > {ls})) "
            f"AND (source_lsn < {hl} OR (source_lsn = {hl} AND source_seq <= {hs})))")
