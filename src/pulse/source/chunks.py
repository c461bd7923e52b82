"""Reading `engagement_events` in keyset chunks with COPY, for the initial snapshot and backfills.

A chunk is read with `COPY (SELECT ... ORDER BY id LIMIT n) TO STDOUT`:
binary, parsed by the native extension (`parse_binary_chunk`), or, without
it, CSV parsed by Arrow's CSV reader (`parse_chunk`). Either way the result
is a table of `model_arrow.RAW_SCHEMA`, which `transform.columnar` enriches.

An `event_ts` Python cannot hold (infinity, BC, year > 9999) is flagged
where the value still exists: in SQL (`_TS_OK`) for CSV, in the binary
parser for binary. Extra source columns (beyond the known ones) are read by
`read_extra` as text and ride in the raw table as `extra:<name>` columns.
"""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import psycopg2.errors
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql

from pulse.model import EVENT_COLUMNS
from pulse.model_arrow import EXTRA_PREFIX, RAW_SCHEMA
from pulse.source import catalog, native

_TS_OK = ("(isfinite(event_ts) AND event_ts >= '0001-01-01 00:00:00+00' "
          "AND event_ts < '10000-01-01 00:00:00+00')")


class ChunkQuery(NamedTuple):
    """The SELECT of one keyset chunk and the COPY format it is read in."""

    sql: sql.Composed
    binary: bool


def chunk_query(schema: str, where: sql.Composable, *, binary: bool | None = None) -> ChunkQuery:
    """The SELECT of one keyset chunk (`where` ends before ORDER BY; LIMIT is the last parameter).

    Binary COPY (the default when the native extension is built) hands out
    values as PostgreSQL stores them: no text formatting of timestamps,
    integers and uuids on the server, no CSV parse here (about 40% less
    server time per chunk). The CSV form is the fallback without it.
    """
    if binary is None:
        binary = native.available()
    if binary:
        return ChunkQuery(sql.SQL(
            "SELECT id::int8, content_id::uuid, user_id::uuid, event_type::text, event_ts::timestamptz, "
            "duration_ms::int8, device::text, raw_payload::jsonb FROM {}.engagement_events WHERE "
        ).format(sql.Identifier(schema)) + where + sql.SQL(" ORDER BY id LIMIT %s"), True)
    return ChunkQuery(sql.SQL(
        "SELECT id, content_id::text, user_id::text, event_type, "
        "CASE WHEN " + _TS_OK + " THEN (extract(epoch FROM event_ts) * 1000000)::bigint END, "
        "NOT " + _TS_OK + ", duration_ms, device, raw_payload::text "
        "FROM {}.engagement_events WHERE "
    ).format(sql.Identifier(schema)) + where + sql.SQL(" ORDER BY id LIMIT %s"), False)


def read_chunk(cur, query: ChunkQuery, params: list[Any]) -> pa.Table:
    """Run `query` as a COPY on `cur` and parse it (parameters bound by psycopg2)."""
    buf = io.BytesIO()
    select = cur.mogrify(query.sql, params).decode()
    fmt = "binary" if query.binary else "csv"
    cur.copy_expert(f"COPY ({select}) TO STDOUT WITH (FORMAT {fmt})", buf)
    return parse_binary_chunk(buf.getbuffer()) if query.binary else parse_chunk(buf.getvalue())


class ChunkExtras(NamedTuple):
    """The extra columns a chunk carries: catalog columns and the relation's types (all columns)."""

    columns: tuple[catalog.CatalogColumn, ...]
    types: dict[str, str]

    def values(self, raw: pa.Table, column: catalog.CatalogColumn) -> list[Any]:
        """`column`'s values in `raw` (read as text), converted as the stream's decoder converts them."""
        return [catalog.from_text(column.type_oid, v) for v in raw.column(EXTRA_PREFIX + column.name).to_pylist()]


def read_extra(cur, schema: str, raw: pa.Table, previous: ChunkExtras | None = None
               ) -> tuple[pa.Table, ChunkExtras | None]:
    """`raw` with the table's extra columns for its ids (`extra:<name>`, text), or as it is without any.

    The catalog is read after the chunk's COPY: a column added before the
    COPY is seen. Both reads sit in the chunk's watermark window, so a row
    changed between them is dropped from the chunk by the window (DBLog) as
    any row changed during the read is. `previous` is reused when the
    columns did not change (one types mapping per relation shape).
    Without extra columns this costs one catalog query per chunk. A column
    dropped between the catalog read and the query: read again (autocommit
    cursor), at most twice.
    """
    for attempt in range(3):
        try:
            return _read_extra(cur, schema, raw, previous)
        except psycopg2.errors.UndefinedColumn:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _read_extra(cur, schema: str, raw: pa.Table, previous: ChunkExtras | None) -> tuple[pa.Table, ChunkExtras | None]:
    columns = catalog.table_columns(cur, schema, "engagement_events")
    extras = tuple(c for c in columns if c.name not in EVENT_COLUMNS)
    if not extras:
        return raw, None
    types = {c.name: c.type_name for c in columns}
    found = previous if previous is not None and previous.types == types else ChunkExtras(extras, types)
    if raw.num_rows == 0:
        return raw, found
    ids = raw.column("id").to_pylist()
    # The ids as one int8[] literal (a parameter list of 10,000 would be parsed as 10,000 expressions).
    cur.execute(sql.SQL("SELECT id::int8, {} FROM {}.engagement_events WHERE id = ANY(%s::int8[])").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in extras),
        sql.Identifier(schema)), ("{" + ",".join(map(str, ids)) + "}",))
    by_id = {row[0]: row[1:] for row in cur.fetchall()}
    missing = (None,) * len(extras)
    values = [by_id.get(i, missing) for i in ids]  # a row gone since: dropped by the window
    for k, col in enumerate(extras):
        raw = raw.append_column(EXTRA_PREFIX + col.name, pa.array([v[k] for v in values], pa.string()))
    return raw, found


# Binary COPY fields of the binary chunk query, as `_wire.parse_copy_binary` kinds.
_BINARY_KINDS = b"iuustisj"


def parse_binary_chunk(data) -> pa.Table:
    """Binary COPY of the binary `chunk_query` -> a table of RAW_SCHEMA."""
    n, cols = native.load().parse_copy_binary(data, _BINARY_KINDS)
    bad = pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(cols[4][2])])
    ident, cid, uid, etype, event_us, duration, device, payload = native.arrays(n, _BINARY_KINDS.decode(), cols)
    return pa.Table.from_arrays([ident, cid, uid, etype, event_us, bad, duration, device, payload],
                                schema=RAW_SCHEMA)


def parse_chunk(data: bytes) -> pa.Table:
    """CSV of `chunk_query` -> a table of RAW_SCHEMA (unquoted empty is NULL, "" an empty string)."""
    if not data:
        return RAW_SCHEMA.empty_table()
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=RAW_SCHEMA.names, block_size=8 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=RAW_SCHEMA, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"],
        ),
    ).cast(RAW_SCHEMA)


__all__ = ["ChunkExtras", "ChunkQuery", "chunk_query", "parse_binary_chunk", "parse_chunk", "read_chunk",
           "read_extra"]
