"""The content cache: `content` rows by id, for enrichment.

Loaded once at start (`pulse.source.content.load_content`), then kept fresh by the content
changes of the same replication stream (`apply`), which arrive in commit
order: an event never sees content older than what was committed before it.

Columns of `content` beyond the known ones (an `ALTER TABLE content ADD
COLUMN`) are kept per row in `ContentInfo.extra`, by their event name
(`content_<name>`, `model.content_extra_columns`), with their PostgreSQL
types in `ContentInfo.extra_types`; the enrichment copies them into each
event's `extra`. A row last written before the column existed has none (its
events do not carry the column). Rows without extras cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from pulse.model import UNCHANGED_TOAST, content_extra_columns


@dataclass(frozen=True, slots=True)
class ContentInfo:
    slug: str | None
    title: str | None
    content_type: str | None
    length_seconds: int | None
    # Columns beyond the known ones, by event name (`content_<name>`), and their types; None without.
    extra: Mapping[str, Any] | None = None
    extra_types: Mapping[str, str] | None = None


_TYPES_CACHE: dict[int, tuple[Mapping[str, str], Mapping[str, str]]] = {}


def _extra_types(types: Mapping[str, str]) -> Mapping[str, str]:
    """{event name: type} of the content relation's extra columns, one shared dict per relation."""
    hit = _TYPES_CACHE.get(id(types))
    if hit is not None and hit[0] is types:
        return hit[1]
    out = {c.name: c.pg_type for c in content_extra_columns(types)}
    if len(_TYPES_CACHE) > 256:
        _TYPES_CACHE.clear()
    _TYPES_CACHE[id(types)] = (types, out)
    return out


class ContentCache:
    """A dict of content id -> ContentInfo with change application."""

    __slots__ = ("_rows", "_snapshot", "_columns", "_extra_rows")

    def __init__(self, rows: dict[str, ContentInfo] | None = None, extra_rows: int | None = None) -> None:
        self._rows: dict[str, ContentInfo] = dict(rows or {})
        self._snapshot: ContentCache | None = None
        self._columns = None
        # How many rows carry extra columns (0 in the common case: the columnar path stays open).
        self._extra_rows = (extra_rows if extra_rows is not None
                            else sum(1 for v in self._rows.values() if v.extra))

    @property
    def has_extra(self) -> bool:
        """True when some content row carries columns beyond the known ones."""
        return self._extra_rows > 0

    def snapshot(self) -> "ContentCache":
        """A copy frozen at this point of the stream, shared until the next change (copy on write).

        Chunks of events enriched later, on other threads, hold one: content
        changes further on in the stream must not reach them.
        """
        snap = self._snapshot
        if snap is None:
            snap = self._snapshot = ContentCache(self._rows, self._extra_rows)
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

    def _store(self, key: str, info: ContentInfo) -> None:
        previous = self._rows.get(key)
        self._extra_rows += (1 if info.extra else 0) - (1 if previous is not None and previous.extra else 0)
        self._rows[key] = info

    def _drop(self, key: str) -> ContentInfo | None:
        previous = self._rows.pop(key, None)
        if previous is not None and previous.extra:
            self._extra_rows -= 1
        return previous

    def put_row(self, row: dict[str, Any], types: Mapping[str, str] | None = None) -> None:
        """Store a `content` row (column name -> value); `types` (the relation's) names its extra columns."""
        self._changed()
        extra = extra_types = None
        if types is not None:
            cols = content_extra_columns(types)  # cached per relation: a dict lookup
            if cols:
                extra = {c.name: row.get(c.source) for c in cols}
                extra_types = _extra_types(types)
        self._store(row["id"], ContentInfo(
            slug=row.get("slug"),
            title=row.get("title"),
            content_type=row.get("content_type"),
            length_seconds=row.get("length_seconds"),
            extra=extra,
            extra_types=extra_types,
        ))

    def apply(self, op: str, new: dict[str, Any] | None, old: dict[str, Any] | None,
              types: Mapping[str, str] | None = None) -> None:
        """Apply one change of the `content` table (`types`: `Change.types`, for its extra columns)."""
        self._changed()
        if op == "delete":
            if old and "id" in old:
                self._drop(old["id"])
            return
        assert new is not None
        current = self._rows.get(new["id"])
        if op == "update" and old and "id" in old and old["id"] != new.get("id"):
            current = self._drop(old["id"])  # the primary key itself changed
        merged = dict(new)
        # Columns the server did not resend (unchanged TOAST) keep their value,
        # or are unknown (None): the marker itself is never stored.
        for key, attr in (("slug", "slug"), ("title", "title"), ("content_type", "content_type"),
                          ("length_seconds", "length_seconds")):
            if merged.get(key) is UNCHANGED_TOAST:
                merged[key] = getattr(current, attr) if current is not None else None
        if types is not None and UNCHANGED_TOAST in merged.values():
            known = current.extra if current is not None and current.extra else {}
            for col in content_extra_columns(types):
                if merged.get(col.source) is UNCHANGED_TOAST:
                    merged[col.source] = known.get(col.name)
        self.put_row(merged, types)

    def clear(self) -> None:
        self._changed()
        self._rows.clear()
        self._extra_rows = 0
