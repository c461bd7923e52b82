"""Unit tests for pulse.transform.content_cache: loading and applying `content` changes."""

from __future__ import annotations

import pytest
from psycopg2 import sql

from pulse.source.pgoutput import UNCHANGED_TOAST
from pulse.source.content import load_content
from pulse.transform.content_cache import ContentCache, ContentInfo

A = "11111111-1111-1111-1111-111111111111"
B = "22222222-2222-2222-2222-222222222222"


def content(cid: str = A, **changes) -> dict:
    base = {"id": cid, "slug": "ep-1", "title": "Episode 1", "content_type": "podcast", "length_seconds": 120,
            "publish_ts": None}
    base.update(changes)
    return base


def test_empty_cache() -> None:
    cache = ContentCache()
    assert len(cache) == 0
    assert cache.get(A) is None
    assert A not in cache


def test_constructor_copies_its_rows() -> None:
    rows = {A: ContentInfo("s", "t", "video", 1)}
    cache = ContentCache(rows)
    rows.clear()
    assert cache.get(A) == ContentInfo("s", "t", "video", 1)


def test_insert() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    assert A in cache
    assert len(cache) == 1
    assert cache.get(A) == ContentInfo("ep-1", "Episode 1", "podcast", 120)


def test_insert_with_null_length() -> None:
    cache = ContentCache()
    cache.apply("insert", content(content_type="newsletter", length_seconds=None), None)
    assert cache.get(A) == ContentInfo("ep-1", "Episode 1", "newsletter", None)


def test_update_replaces_the_row() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("update", content(title="Renamed", length_seconds=0), None)
    assert cache.get(A) == ContentInfo("ep-1", "Renamed", "podcast", 0)
    assert len(cache) == 1


def test_update_with_key_only_old_and_same_key() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("update", content(slug="ep-1b"), {"id": A})
    assert cache.get(A) == ContentInfo("ep-1b", "Episode 1", "podcast", 120)
    assert len(cache) == 1


def test_update_that_changes_the_key_moves_the_row() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("update", content(B, slug="moved"), {"id": A})
    assert A not in cache
    assert cache.get(B) == ContentInfo("moved", "Episode 1", "podcast", 120)
    assert len(cache) == 1


def test_update_of_an_unknown_row_adds_it() -> None:
    cache = ContentCache()
    cache.apply("update", content(), None)
    assert cache.get(A) == ContentInfo("ep-1", "Episode 1", "podcast", 120)


def test_update_keeps_unchanged_toast_slug_and_title() -> None:
    cache = ContentCache()
    cache.apply("insert", content(slug="long-slug", title="A very long title"), None)
    cache.apply("update", content(slug=UNCHANGED_TOAST, title=UNCHANGED_TOAST, length_seconds=300), None)
    info = cache.get(A)
    assert info == ContentInfo("long-slug", "A very long title", "podcast", 300)
    assert info.slug is not UNCHANGED_TOAST and info.title is not UNCHANGED_TOAST


def test_update_keeps_only_the_unchanged_toast_column() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("update", content(slug=UNCHANGED_TOAST, title="New title"), None)
    assert cache.get(A) == ContentInfo("ep-1", "New title", "podcast", 120)


def test_key_change_keeps_unchanged_toast_values_of_the_old_key() -> None:
    cache = ContentCache()
    cache.apply("insert", content(slug="long-slug", title="Long title"), None)
    cache.apply("update", content(B, slug=UNCHANGED_TOAST, title=UNCHANGED_TOAST), {"id": A})
    assert cache.get(B) == ContentInfo("long-slug", "Long title", "podcast", 120)


def test_delete_with_key() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("insert", content(B), None)
    cache.apply("delete", None, {"id": A})
    assert A not in cache
    assert B in cache
    assert len(cache) == 1


def test_delete_with_full_old_row() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("delete", None, content())
    assert len(cache) == 0


def test_delete_of_an_unknown_row_or_without_old_is_a_no_op() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.apply("delete", None, {"id": B})
    cache.apply("delete", None, None)
    assert len(cache) == 1 and A in cache


def test_clear() -> None:
    cache = ContentCache()
    cache.apply("insert", content(), None)
    cache.clear()
    assert len(cache) == 0


def test_put_row_tolerates_missing_optional_columns() -> None:
    cache = ContentCache()
    cache.put_row({"id": A})
    assert cache.get(A) == ContentInfo(None, None, None, None)


_CONTENT_CATALOG = [("id", 2950, -1), ("slug", 25, -1), ("title", 25, -1), ("content_type", 25, -1),
                    ("length_seconds", 23, -1), ("publish_ts", 1184, -1)]


class FakeCursor:
    """The catalog query answers `catalog` (content's columns), the SELECT `rows`."""

    def __init__(self, rows, catalog=_CONTENT_CATALOG):
        self.rows = rows
        self.catalog = catalog
        self.queries = []

    def execute(self, query, params=None):
        self.queries.append(query)

    def fetchall(self):
        return self.catalog if len(self.queries) == 1 else self.rows


def test_load_content_reads_every_row() -> None:
    cur = FakeCursor([(A, "ep-1", "Episode 1", "podcast", 120), (B, "weekly", "Weekly", "newsletter", None)])
    cache = load_content(cur, "public")
    assert len(cache) == 2
    assert cache.get(A) == ContentInfo("ep-1", "Episode 1", "podcast", 120)
    assert cache.get(B) == ContentInfo("weekly", "Weekly", "newsletter", None)
    _catalog, query = cur.queries
    # Composed SQL with the schema as an Identifier, never an f-string.
    assert isinstance(query, sql.Composed)
    assert sql.Identifier("public") in query.seq
