"""RowChunk: the row path's queue item, enriched once on first use, with views that share the build."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from pulse.model import Change, Position
from pulse.transform.content_cache import ContentCache
from pulse.transform.enrich import enrich_change
from pulse.transform.rows import RowChunk, change_size

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
CID = "11111111-1111-1111-1111-111111111111"


def _insert(event_id: int, seq: int, payload: str | None = None, content_id: str | None = CID) -> Change:
    row = {"id": event_id, "content_id": content_id, "user_id": "u", "event_type": "play", "event_ts": NOW,
           "duration_ms": 30_000, "device": "ios", "raw_payload": payload}
    return Change("engagement_events", "insert", row, None, Position(50, seq), NOW)


def _cache() -> ContentCache:
    cache = ContentCache()
    cache.put_row({"id": CID, "slug": "s", "title": "T", "content_type": "video", "length_seconds": 60})
    return cache


def test_its_events_are_the_row_paths_enrichment_built_once_and_shared():
    changes = [_insert(i, i) for i in range(1, 5)]
    cache = _cache()
    chunk = RowChunk(changes, cache, NOW)
    assert not chunk.built and len(chunk) == 4
    assert (chunk.first, chunk.position) == (Position(50, 1), Position(50, 4))
    events = chunk.events()
    assert chunk.built and chunk.events() is events
    assert events == [enrich_change(c, cache, NOW) for c in changes]


def test_a_view_after_a_position_shares_the_build_and_holds_only_the_later_rows():
    chunk = RowChunk([_insert(i, i) for i in range(1, 6)], _cache(), NOW)
    assert chunk.after(Position(49, 9)) is chunk  # nothing of it held: the chunk itself
    view = chunk.after(Position(50, 2))
    assert (view.first, view.position, len(view)) == (Position(50, 3), Position(50, 5), 3)
    assert view.size_hint() < chunk.size_hint()
    assert [e.event_id for e in view.events()] == [3, 4, 5]
    assert chunk.built  # the view built the whole chunk, once
    assert [e.event_id for e in chunk.events()] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in view.after(Position(50, 4)).events()] == [5]
    with pytest.raises(ValueError):
        chunk.after(Position(50, 5))


def test_settling_enriches_with_the_cache_as_it_is_and_later_changes_do_not_reach_it():
    cache = _cache()
    chunk = RowChunk([_insert(1, 1)], cache, NOW)
    chunk.settle()
    cache.apply("update", {"id": CID, "slug": "later", "title": "T", "content_type": "video",
                           "length_seconds": 60}, None)
    assert chunk.events()[0].content_slug == "s"


def test_problems_are_counted_once_whichever_view_or_sink_takes_them():
    chunk = RowChunk([_insert(1, 1, content_id=None), _insert(2, 2, content_id="nope"), _insert(3, 3)], _cache(),
                     NOW)
    view = chunk.after(Position(50, 1))
    assert view.take_problems() == {}  # before a build: nothing to count yet
    view.events()
    assert view.take_problems() == {"null_content_id": 1, "content_missing": 1}  # the chunk's, once
    assert chunk.take_problems() == {}


def test_two_threads_asking_at_once_get_one_build():
    chunk = RowChunk([_insert(i, i) for i in range(1, 2001)], _cache(), NOW)
    results: list[list] = []
    threads = [threading.Thread(target=lambda: results.append(chunk.events())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r is results[0] for r in results)


def test_size_counts_the_payloads_of_both_images():
    small, large = _insert(1, 1, payload="x"), _insert(2, 2, payload="x" * 10_000)
    assert change_size(large) - change_size(small) == 9_999
    update = Change("engagement_events", "update", large.new, large.new, Position(50, 3), NOW)
    assert change_size(update) > change_size(large) + 9_000
    assert RowChunk([small, large], _cache(), NOW).size_hint() == change_size(small) + change_size(large)
    with pytest.raises(ValueError):
        RowChunk([], _cache(), NOW)
