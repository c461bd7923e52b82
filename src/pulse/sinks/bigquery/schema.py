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

Schema changes of the source (docs/sinks/bigquery.md, "Schema changes"):
an event's extra columns (`EnrichedEvent.extra`) travel in the Arrow rows
as text, each field tagged with its PostgreSQL and BigQuery types
(`EXTRA_PG_TYPE` / `EXTRA_BQ_TYPE` metadata, type from `bq_type`), and
become NULLABLE columns of the table; the MERGE casts the text to the
table's type, and a value that does not fit sends its row to the
dead-letter table. Fields an UPDATE did not resend are listed per row in
the `unchanged` column (staging only) and the MERGE keeps their stored value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from pulse.errors import ConfigError, TerminalError
from pulse.model import EnrichedEvent
from pulse.model_arrow import ENRICHED_SCHEMA, NUMERIC, TIMESTAMP

if TYPE_CHECKING:  # pragma: no cover
    from google.cloud import bigquery


class Column(NamedTuple):
    name: str
    bq_type: str  # type in the final table
    arrow: pa.DataType
    mode: str = "NULLABLE"
    description: str = ""


_TS = TIMESTAMP
_DEC = NUMERIC

# The table's type and description of each column of the enriched event (model_arrow.ENRICHED_SCHEMA).
_TABLE: dict[str, tuple[str, str]] = {
    "event_id": ("INT64", "engagement_events.id in the source"),
    "content_id": ("STRING", "content.id (uuid)"),
    "user_id": ("STRING", "uuid of the user"),
    "event_type": ("STRING", "play / pause / finish / click"),
    "event_ts": ("TIMESTAMP", "when the event happened (partitioning column)"),
    "duration_ms": ("INT64", "as sent; may be NULL or negative"),
    "device": ("STRING", "as sent"),
    "raw_payload": ("JSON", "the client's extra JSON"),
    "content_slug": ("STRING", "content.slug"),
    "content_title": ("STRING", "content.title"),
    "content_type": ("STRING", "podcast / newsletter / video (clustering)"),
    "length_seconds": ("INT64", "content.length_seconds"),
    "engagement_seconds": ("NUMERIC", "duration_ms / 1000, exact"),
    "engagement_pct": ("NUMERIC", "engagement_seconds / length_seconds, 2 decimals"),
    "op": ("STRING", "last operation applied: insert or update"),
    "source_lsn": ("INT64", "commit LSN of the change applied"),
    "source_seq": ("INT64", "ordinal of the change in its transaction"),
    "commit_ts": ("TIMESTAMP", "commit time in the source"),
    "processed_ts": ("TIMESTAMP", "when Pulse enriched the change"),
    "backfill": ("BOOL", "came from a backfill"),
    "problems": ("STRING", "what was odd about the event"),
}


def _mode(f: pa.Field) -> str:
    return "REPEATED" if pa.types.is_list(f.type) else "NULLABLE" if f.nullable else "REQUIRED"


COLUMNS: tuple[Column, ...] = tuple(Column(f.name, _TABLE[f.name][0], f.type, _mode(f), _TABLE[f.name][1])
                                    for f in ENRICHED_SCHEMA)
NAMES = tuple(c.name for c in COLUMNS)
# Staging / changelog hold raw_payload as text: PARSE_JSON happens in the MERGE,
# where a bad value can be routed to the dead-letter table instead of failing the load.
STAGING_TYPES = {"raw_payload": "STRING"}
ARROW_SCHEMA = ENRICHED_SCHEMA  # the spool files and Storage Write appends store the event as it is

PARTITION_FIELD = "event_ts"
CLUSTERING = ["content_type", "content_id"]
STATE_TABLE = "_pulse_state"
DEAD_LETTER_EXTRA = (("reason", "STRING"), ("failed_ts", "TIMESTAMP"))

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
_PROJECT = re.compile(r"^[a-z][a-z0-9.:-]{1,62}$")


# -- extra (source) columns -------------------------------------------------------

UNCHANGED = "unchanged"  # staging / changelog / dead letters only: fields not resent, per row
UNCHANGED_FIELD = pa.field(UNCHANGED, pa.list_(pa.string()))
EXTRA_PG_TYPE = b"pulse.pg_type"
EXTRA_BQ_TYPE = b"pulse.bq_type"
# PostgreSQL type name (`pgoutput.type_name`) -> BigQuery type of the column
# Pulse adds. numeric is STRING: PostgreSQL's numeric holds what NUMERIC
# cannot (NaN, infinity, more than 9 decimals, 38 digits), and text is exact.
PG_TO_BQ = {
    "text": "STRING", "varchar": "STRING", "bpchar": "STRING", "name": "STRING", "uuid": "STRING",
    "int2": "INT64", "int4": "INT64", "int8": "INT64", "oid": "INT64",
    "numeric": "STRING",
    "bool": "BOOL",
    "timestamptz": "TIMESTAMP",
    "json": "JSON", "jsonb": "JSON",
    "float4": "FLOAT64", "float8": "FLOAT64",
}
# Types a MERGE can produce from the staging text (anything else a table
# has is kept as it is, and the value is cast to it the same way).
_CASTABLE = frozenset({"STRING", "INT64", "BOOL", "TIMESTAMP", "JSON", "FLOAT64", "NUMERIC", "BIGNUMERIC",
                       "DATE", "DATETIME", "TIME", "BYTES"})


def bq_type(pg_type: str) -> str:
    """The BigQuery type of a new column for a source column of PostgreSQL type `pg_type`."""
    base = pg_type.split("(", 1)[0]
    return PG_TO_BQ.get(base, "STRING")


class Extra(NamedTuple):
    """An extra column as the loader sees it: name, its type in the table, the source's types."""

    name: str
    table_type: str  # in the final table (what the MERGE casts to)
    pg_type: str = "text"  # as the source last described it
    bq_type: str = "STRING"  # what Pulse would create for it


def extra_fields(schema: pa.Schema) -> list[Extra]:
    """The extra columns of a spool / changelog Arrow schema (their BigQuery type as Pulse maps it)."""
    out = []
    for f in schema:
        if f.name in NAMES or f.name == UNCHANGED:
            continue
        meta = f.metadata or {}
        bq = meta.get(EXTRA_BQ_TYPE, b"STRING").decode()
        out.append(Extra(check_identifier("column", f.name), bq, meta.get(EXTRA_PG_TYPE, b"text").decode(), bq))
    return out


def _text(value: object) -> str | None:
    """An extra value as the text the MERGE casts (ISO 8601 times, 'true' / 'false', exact numbers)."""
    if value is None or type(value) is str:
        return value  # type: ignore[return-value]
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        import orjson

        return orjson.dumps(value).decode()
    if type(value) is float:
        return repr(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[union-attr]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    return str(value)


def check_identifier(kind: str, value: str) -> str:
    """Dataset / table names go into SQL as quoted identifiers: allow only safe ones."""
    ok = _PROJECT.match(value) if kind == "project" else _IDENT.match(value)
    if kind == "column" and not ok:
        raise TerminalError(f"extra column {value!r} is not a valid BigQuery column name",
                            hint="the spool file was not written by this Pulse version: remove it from the spool")
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


def staging_extra_schema(extras: Sequence[Extra], unchanged: bool) -> list["bigquery.SchemaField"]:
    """The staging / changelog / dead-letter columns beyond `staging_schema()`: all text."""
    from google.cloud import bigquery

    out = [bigquery.SchemaField(UNCHANGED, "STRING", mode="REPEATED")] if unchanged else []
    return out + [bigquery.SchemaField(e.name, "STRING") for e in extras]


def state_schema() -> list["bigquery.SchemaField"]:
    from google.cloud import bigquery

    return [
        bigquery.SchemaField("table_name", "STRING", mode="REQUIRED"),
        bigquery.SchemaField("source_lsn", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("source_seq", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("updated_ts", "TIMESTAMP"),
        # The high-water mark (docs/sinks/bigquery.md, "Fresh inserts"): no event_id above it is in the
        # table, nor any id in `absent_ids` (JSON [[low, high], ...]); NULL: not known yet.
        bigquery.SchemaField("max_event_id", "INT64"),
        bigquery.SchemaField("absent_ids", "STRING"),
        # The load-job budget: jobs that wrote the table on `jobs_day` (UTC), and the pacing
        # clock (`bigquery.cost.pacing`: the next job's theoretical time).
        bigquery.SchemaField("jobs_day", "DATE"),
        bigquery.SchemaField("jobs_today", "INT64"),
        bigquery.SchemaField("jobs_tat", "TIMESTAMP"),
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
    """Arrow rows in `ARROW_SCHEMA` order (the spool files and Storage Write appends).

    When some events carry extra columns or unchanged fields, the table has
    `unchanged` and the extra columns (text, typed by metadata) after them.
    """
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
    table = pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
    if any(e.extra or e.unchanged for e in events):
        table = _with_extras(table, events)
    return table


def _with_extras(table: pa.Table, events: Sequence[EnrichedEvent]) -> pa.Table:
    types: dict[str, str] = {}  # in order of first appearance, with the type first given
    for e in events:
        if e.extra_types:
            for name, pg_type in e.extra_types.items():
                types.setdefault(name, pg_type)
    # A field a change does not carry (not resent, or a column its relation
    # does not have) is listed per row: the MERGE keeps the stored value.
    unchanged = [list(e.unchanged) + [n for n in types if not e.extra or n not in e.extra] for e in events]
    if any(unchanged):
        table = table.append_column(UNCHANGED_FIELD, pa.array(unchanged, UNCHANGED_FIELD.type))
    for name, pg_type in types.items():
        meta = {EXTRA_PG_TYPE: pg_type.encode(), EXTRA_BQ_TYPE: bq_type(pg_type).encode()}
        values = [_text(e.extra.get(name)) if e.extra else None for e in events]
        table = table.append_column(pa.field(name, pa.string(), metadata=meta), pa.array(values, pa.string()))
    return table


# -- SQL -----------------------------------------------------------------------


def ref(project: str, dataset: str, table: str) -> str:
    """A quoted table reference (names were checked by `check_identifier`)."""
    return f"`{project}.{dataset}.{table}`"


_NEWER = "(S.source_lsn > T.source_lsn OR (S.source_lsn = T.source_lsn AND S.source_seq > T.source_seq))"
_BAD_JSON = "(S.raw_payload IS NOT NULL AND SAFE.PARSE_JSON(S.raw_payload) IS NULL)"


def _select_value(name: str) -> str:
    return f"SAFE.PARSE_JSON(S.{name})" if name == "raw_payload" else f"S.{name}"


def _cast(expr: str, table_type: str) -> str:
    """The staging text `expr` as a value of the table's column type (NULL when it does not fit)."""
    if table_type == "JSON":
        return f"SAFE.PARSE_JSON({expr})"
    if table_type == "STRING":
        return expr
    if table_type not in _CASTABLE:
        raise TerminalError(f"the table has a column of type {table_type}, which Pulse cannot fill",
                            hint="change that column to one of " + ", ".join(sorted(_CASTABLE)))
    return f"SAFE_CAST({expr} AS {table_type})"


_SENT_NULL = "'\\x00null'"  # a NUL character: never in a PostgreSQL text value
# Known fields that an UPDATE can leave unresent (TOASTable types): the MERGE keeps their stored value.
KEEPABLE = ("event_type", "device", "raw_payload")


class StateUpdate(NamedTuple):
    """What a state-row write changes besides the position.

    `mark` / `absent`: the new high-water mark and absent ranges, computed by
    the single writer that read them (None: a writer that does not keep them
    raises the mark to the highest id it inserts, in SQL, and forgets the
    absent ranges, which only sends more groups down the checked path).
    `day` / `jobs`: add `jobs` to the count of jobs that wrote the table on
    `day` (None: leave the count).
    """

    mark: int | None = None
    absent: Sequence[tuple[int, int]] | None = None
    day: "date | None" = None
    jobs: int = 0
    now_us: int = 0  # with `day`: the time of the jobs (epoch microseconds) ...
    interval_us: int = 0  # ... and the pacing interval: jobs_tat = max(jobs_tat, now) + jobs * interval


def partition_filter(days: "Iterable[date | None]", alias: str = "T") -> str:
    """A predicate on `alias`.event_ts naming these day partitions (None: the NULL partition); FALSE when none.

    Consecutive days become one range, written on the column itself with
    constant bounds: the form BigQuery prunes partitions with. A run that
    ends on 9999-12-31, the last day a TIMESTAMP (and a Python date) holds,
    has no day after it: it is bounded below only, which names the same
    partitions. (A row's day is always in 0001-01-01 .. 9999-12-31: an
    event_ts outside the range reaches the spool as NULL, flagged
    `event_ts_out_of_range`, and lies in the NULL partition.)
    """
    ds = sorted({d for d in days if d is not None})
    parts: list[str] = []
    i = 0
    while i < len(ds):
        j = i
        while j + 1 < len(ds) and ds[j + 1] == ds[j] + timedelta(days=1):
            j += 1
        low = f"{alias}.event_ts >= TIMESTAMP '{ds[i].isoformat()} 00:00:00+00'"
        if ds[j] == date.max:
            parts.append(f"({low})")
        else:
            parts.append(f"({low} AND {alias}.event_ts < "
                         f"TIMESTAMP '{(ds[j] + timedelta(days=1)).isoformat()} 00:00:00+00')")
        i = j + 1
    if any(d is None for d in days):
        parts.append(f"{alias}.event_ts IS NULL")
    return "(" + " OR ".join(parts) + ")" if parts else "FALSE"


def apply_script(*, final: str, source: str, dead_letter: str, state: str, table_name: str,
                 position: tuple[int, int], extras: Sequence[Extra] = (), unchanged: bool = False,
                 target_filter: str | None = None, state_update: StateUpdate | None = None) -> str:
    """One script that applies the changes in `source` (a table or a subquery) to `final`.

    1. rows whose value BigQuery would reject (raw_payload not JSON, an extra
       column's text that does not fit the table's type) go to the
       dead-letter table with the reason, once (keyed by event id and position);
    2. the newest valid change of each event is MERGEd: delete removes the
       row, insert / update replace it, and only when newer than the row's
       position (so replays and re-runs are no-ops); with `unchanged` a field
       the change did not resend takes the newest value the source's earlier
       changes in `source` sent, else keeps the table's;
    3. the state row records `position`, in the same transaction.

    `extras`: the source's extra columns in `source` (text) with their type
    in `final`; columns of `final` not named are left as they are.
    `target_filter`: a predicate on `T` (the partitions that can hold a row
    of these event ids, `partition_filter`), in the MERGE's ON clause so
    BigQuery reads only those partitions; it must cover every stored row of
    an event id in `source`, or the MERGE would insert a second row.
    `state_update`: the high-water mark and the job count, written with the
    state row in the same transaction.
    """
    lsn, seq = int(position[0]), int(position[1])
    ex = [e._replace(name=check_identifier("column", e.name)) for e in extras]
    conv = {n: _select_value(n) for n in NAMES}
    for e in ex:
        conv[e.name] = _cast(f"S.`{e.name}`", e.table_type)
    names = list(NAMES) + [e.name for e in ex]
    q = {n: (f"`{n}`" if n not in NAMES else n) for n in names}
    cols = ", ".join(q[n] for n in names)
    dl_cols = ", ".join([q[n] for n in names] + ([UNCHANGED] if unchanged else []))
    s_dl_cols = ", ".join([f"S.{q[n]}" for n in names] + ([f"S.{UNCHANGED}"] if unchanged else []))
    bad = [(_BAD_JSON, "raw_payload is not valid JSON")]
    for e in ex:
        if e.table_type != "STRING":
            source_type = re.sub(r"[^A-Za-z0-9_(),:]", "", e.pg_type)
            why = f"column {e.name}: value does not fit the column type {e.table_type}"
            bad.append((f"(S.`{e.name}` IS NOT NULL AND {conv[e.name]} IS NULL)",
                        why + (f" (the source sends {source_type})" if source_type else "")))
    any_bad = "(" + " OR ".join(cond for cond, _ in bad) + ")"
    reason = "CASE " + " ".join(f"WHEN {cond} THEN '{why}'" for cond, why in bad) + " END"
    newest = "QUALIFY ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY source_lsn DESC, source_seq DESC) = 1"
    keep: set[str] = set()
    if unchanged:
        keep = {n for n in KEEPABLE} | {e.name for e in ex}
        window = ("OVER (PARTITION BY event_id ORDER BY source_lsn, source_seq "
                  "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)")
        select = []
        for n in names:
            if n not in keep:
                select.append(f"S.{q[n]}")
                continue
            flag = f"'{n}' IN UNNEST(S.{UNCHANGED})"
            # The newest value an earlier change of the event in `source` sent
            # (a NULL sent stands in as _SENT_NULL, a text PostgreSQL cannot hold).
            sent = f"LAST_VALUE(IF({flag}, NULL, IFNULL(S.{q[n]}, {_SENT_NULL})) IGNORE NULLS) {window}"
            select.append(f"IF({flag}, NULLIF({sent}, {_SENT_NULL}), S.{q[n]}) AS {q[n]}")
            select.append(f"({flag} AND {sent} IS NULL) AS `_keep_{n}`")
        using = f"SELECT {', '.join(select)} FROM {source} S WHERE NOT {any_bad}\n  {newest}"
    else:
        using = f"SELECT * FROM {source} S WHERE NOT {any_bad}\n  {newest}"

    def value(n: str) -> str:
        return f"IF(S.`_keep_{n}`, T.{q[n]}, {conv[n]})" if n in keep else conv[n]

    on_filter = f" AND {target_filter}" if target_filter is not None else ""
    values = ", ".join(conv[n] for n in names)
    updates = ", ".join(f"{q[n]} = {value(n)}" for n in names if n != "event_id")
    name = table_name.replace("'", "")
    return f"""BEGIN TRANSACTION;
INSERT INTO {dead_letter} ({dl_cols}, reason, failed_ts)
SELECT {s_dl_cols}, {reason}, CURRENT_TIMESTAMP()
FROM {source} S
WHERE {any_bad} AND NOT EXISTS (
  SELECT 1 FROM {dead_letter} D
  WHERE D.event_id = S.event_id AND D.source_lsn = S.source_lsn AND D.source_seq = S.source_seq);
MERGE {final} T
USING (
  {using}
) S
ON T.event_id = S.event_id{on_filter}
WHEN MATCHED AND S.op = 'delete' AND {_NEWER} THEN DELETE
WHEN MATCHED AND S.op != 'delete' AND {_NEWER} THEN UPDATE SET {updates}
WHEN NOT MATCHED AND S.op != 'delete' THEN INSERT ({cols}) VALUES ({values});
{_state_merge(state, name, lsn, seq, state_update or StateUpdate(),
              f"(SELECT MAX(X.event_id) FROM {source} X WHERE X.op != 'delete')")}
COMMIT TRANSACTION;"""


def absent_json(ranges: Sequence[tuple[int, int]]) -> str:
    return "[" + ",".join(f"[{int(lo)},{int(hi)}]" for lo, hi in ranges) + "]"


def _state_merge(state: str, name: str, lsn: int, seq: int, update: StateUpdate,
                 source_max: str | None = None) -> str:
    """The state row: the position only forward; the mark, the absent ranges and the job count per `update`."""
    if update.mark is not None:
        mark = str(int(update.mark))
        absent = "'" + absent_json(update.absent or ()) + "'"
        new_mark, new_absent = mark, absent
    elif source_max is not None:  # a writer that does not keep the mark: raise it, forget the absent ranges
        mark = f"IF(T.max_event_id IS NULL, NULL, GREATEST(T.max_event_id, IFNULL({source_max}, T.max_event_id)))"
        absent, new_mark, new_absent = "CAST(NULL AS STRING)", "CAST(NULL AS INT64)", "CAST(NULL AS STRING)"
    else:
        mark, absent = "T.max_event_id", "T.absent_ids"
        new_mark, new_absent = "CAST(NULL AS INT64)", "CAST(NULL AS STRING)"
    if update.day is not None:
        day = f"DATE '{update.day.isoformat()}'"
        k = int(update.jobs)
        jobs_day, jobs = day, f"IF(T.jobs_day = {day}, IFNULL(T.jobs_today, 0) + {k}, {k})"
        now = f"TIMESTAMP_MICROS({int(update.now_us)})"
        step = f"INTERVAL {k * int(update.interval_us)} MICROSECOND"
        tat = f"TIMESTAMP_ADD(GREATEST(IFNULL(T.jobs_tat, {now}), {now}), {step})"
        new_day, new_jobs, new_tat = day, str(k), f"TIMESTAMP_ADD({now}, {step})"
    else:
        jobs_day, jobs, new_day, new_jobs = "T.jobs_day", "T.jobs_today", "CAST(NULL AS DATE)", "CAST(NULL AS INT64)"
        tat, new_tat = "T.jobs_tat", "CAST(NULL AS TIMESTAMP)"
    return f"""MERGE {state} T
USING (SELECT '{name}' AS table_name, {lsn} AS source_lsn, {seq} AS source_seq) S
ON T.table_name = S.table_name
WHEN MATCHED THEN UPDATE SET source_lsn = IF({_NEWER}, S.source_lsn, T.source_lsn),
  source_seq = IF({_NEWER}, S.source_seq, T.source_seq), updated_ts = CURRENT_TIMESTAMP(),
  max_event_id = {mark}, absent_ids = {absent}, jobs_day = {jobs_day}, jobs_today = {jobs}, jobs_tat = {tat}
WHEN NOT MATCHED THEN INSERT (table_name, source_lsn, source_seq, updated_ts, max_event_id, absent_ids, jobs_day,
  jobs_today, jobs_tat)
  VALUES (S.table_name, S.source_lsn, S.source_seq, CURRENT_TIMESTAMP(), {new_mark}, {new_absent}, {new_day},
  {new_jobs}, {new_tat});"""


def state_script(*, state: str, table_name: str, position: tuple[int, int],
                 update: StateUpdate | None = None) -> str:
    """The state row alone (around a direct load): the position moves only forward."""
    return _state_merge(state, table_name.replace("'", ""), int(position[0]), int(position[1]),
                        update or StateUpdate())


def changelog_window(changelog: str, low: tuple[int, int], high: tuple[int, int]) -> str:
    """A subquery of the changelog rows with low < position <= high."""
    (ll, ls), (hl, hs) = (int(low[0]), int(low[1])), (int(high[0]), int(high[1]))
    return (f"(SELECT * FROM {changelog} WHERE (source_lsn > {ll} OR (source_lsn = {ll} AND source_seq > {ls})) "
            f"AND (source_lsn < {hl} OR (source_lsn = {hl} AND source_seq <= {hs})))")
