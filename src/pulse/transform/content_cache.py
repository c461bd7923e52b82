"""The content cache: `content` rows by id, for enrichment.

Loaded once at start (`load_content`), then kept fresh by the content
changes of the same replication stream (`apply`), which arrive in commit
order: an event never sees content older than what was committed before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from pulse.source.pgoutput import UNCHANGED_TOAST


@dataclass(frozen=True, slots=True)
class ContentInfo:
    slug: str | None
    title: str | None
    content_type: str | None
    length_seconds: int | None


class ContentCache:
    """A dict of content id -> ContentInfo with change application."""

    __slots__ = ("_rows", "_snapshot", "_columns")

    def __init__(self, rows: dict[str, ContentInfo] | None = None) -> None:
        self._rows: dict[str, ContentInfo] = dict(rows or {})
        self._snapshot: ContentCache | None = None
        self._columns = None

    def snapshot(self) -> "ContentCache":
        """A copy frozen at this point of the stream, shared until the next change (copy on write).

        Chunks of events enriched later, on other threads, hold one: content
        changes further on in the stream must not reach them.
        """
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = ContentCache(self._rows)
            snap._snapshot = snap  # a snapshot never changes: it is its own snapshot
        return snap

    def columns(self):
        """The rows as `columnar.ContentColumns` (built once per snapshot)."""
        if self._columns is None:
            from pulse.transform.columnar import ContentColumns  # pyarrow only where columns are used
            self._columns = ContentColumns(self)
        return self._columns

    def _changed(self) -> None:
        self._snapshot = None
        self._columns = None

    def get(self, content_id: str) -> ContentInfo | None:
        return self._rows.get(content_id)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, content_id: object) -> bool:
        return content_id in self._rows

    def items(self):
        """(content id, ContentInfo) pairs, for the columnar enrichment's lookup table."""
        return self._rows.items()

    def put_row(self, row: dict[str, Any]) -> None:
        self._changed()
        self._rows[row["id"]] = ContentInfo(
            slug=row.get("slug"),
            title=row.get("title"),
            content_type=row.get("content_type"),
            length_seconds=row.get("length_seconds"),
        )

    def apply(self, op: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        """Apply one change of the `content` table."""
        self._changed()
        if op == "delete":
            if old and "id" in old:
                self._rows.pop(old["id"], None)
            return
        assert new is not None
        current = self._rows.get(new["id"])
        if op == "update" and old and "id" in old and old["id"] != new.get("id"):
            current = self._rows.pop(old["id"], None)  # the primary key itself changed
        merged = dict(new)
        # Columns the server did not resend (unchanged TOAST) keep their value,
        # or are unknown (None): the marker itself is never stored.
        for key, attr in (("slug", "slug"), ("title", "title"), ("content_type", "content_type"),
                          ("length_seconds", "length_seconds")):
            if merged.get(key) is UNCHANGED_TOAST:
                merged[key] = getattr(current, attr) if current is not None else None
        self.put_row(merged)

    def clear(self) -> None:
        self._changed()
        self._rows.clear()


def load_content(cur, schema: str) -> ContentCache:
    """Read the whole `content` table (it is a catalogue: thousands of rows, not millions)."""
    cur.execute(
        sql.SQL("SELECT id::text, slug, title, content_type, length_seconds FROM {}.content").format(
            sql.Identifier(schema)
        )
    )
    cache = ContentCache()
    for cid, slug, title, ctype, length in cur.fetchall():
        cache._rows[cid] = ContentInfo(slug, title, ctype, length)
    return cache
