"""A source table's columns from the catalog, typed as the replication stream types them.

Reads that do not come through the stream (the content cache's first load,
snapshot and backfill chunks) use these so that a column beyond the known
ones carries the same type name (`pgoutput.type_name`) and the same Python
value (`pgoutput.DEFAULT_CONVERTERS` on its text form) as a streamed change.
"""

from __future__ import annotations

from typing import NamedTuple

from pulse.source import pgoutput as pg


class CatalogColumn(NamedTuple):
    name: str
    type_oid: int
    type_name: str  # as `pgoutput.type_name` names it


def table_columns(cur, schema: str, table: str) -> list[CatalogColumn]:
    """The live columns of `schema.table` in column order (empty when the table does not exist)."""
    cur.execute(
        "SELECT a.attname::text, a.atttypid::int8, a.atttypmod FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table),
    )
    return [CatalogColumn(name, oid, pg.type_name(oid, mod)) for name, oid, mod in cur.fetchall()]


def from_text(type_oid: int, text: str | None) -> object:
    """A value read as `::text`, converted as the stream's decoder converts it (str for other types)."""
    if text is None:
        return None
    convert = pg.DEFAULT_CONVERTERS.get(type_oid)
    return text if convert is None else convert(text.encode())
