"""Reading the `content` table into the content cache, once at start (then the stream keeps it fresh)."""

from __future__ import annotations

from psycopg2 import sql

from pulse.model import CONTENT_COLUMNS
from pulse.source import catalog
from pulse.transform.content_cache import ContentCache, ContentInfo


def load_content(cur, schema: str) -> ContentCache:
    """Read the whole `content` table (it is a catalogue: thousands of rows, not millions).

    Columns beyond the known ones (found in the catalog) are read as text
    and converted as the stream converts them, typed as its Relation
    message types them.
    """
    columns = catalog.table_columns(cur, schema, "content")
    extras = [c for c in columns if c.name not in CONTENT_COLUMNS]
    query = sql.SQL("SELECT id::text, slug, title, content_type, length_seconds{} FROM {}.content").format(
        sql.SQL("").join(sql.SQL(", {}::text").format(sql.Identifier(c.name)) for c in extras),
        sql.Identifier(schema),
    )
    cur.execute(query)
    if not extras:
        return ContentCache({cid: ContentInfo(slug, title, ctype, length)
                             for cid, slug, title, ctype, length in cur.fetchall()}, 0)
    types = {c.name: c.type_name for c in columns}
    cache = ContentCache()
    for cid, slug, title, ctype, length, *values in cur.fetchall():
        row = {"id": cid, "slug": slug, "title": title, "content_type": ctype, "length_seconds": length}
        row.update((c.name, catalog.from_text(c.type_oid, v)) for c, v in zip(extras, values))
        cache.put_row(row, types)
    return cache


__all__ = ["load_content"]
