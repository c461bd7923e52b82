"""Table routing: each captured table's changes reach their own handler, and nothing else passes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pulse.model import Change, Position
from pulse.runtime.routing import TableRouter
from pulse.source.changes import CAPTURED, WATERMARKS

NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)


def _change(table: str) -> Change:
    return Change(table, "insert", {"id": 1}, None, Position(1, 1), NOW)


def test_each_table_the_assembler_captures_has_its_handler():
    seen: list[tuple[str, str]] = []
    router = TableRouter(events=lambda c: seen.append(("events", c.table)),
                         content=lambda c: seen.append(("content", c.table)),
                         watermarks=lambda c: seen.append(("watermarks", c.table)))
    for table in sorted(CAPTURED | {WATERMARKS}):  # every table the assembler can yield
        router.route(_change(table))
    assert sorted(seen) == [("content", "content"), ("events", "engagement_events"),
                            ("watermarks", "backfill_watermarks")]


def test_a_table_without_a_route_is_an_error_naming_it():
    router = TableRouter(events=lambda c: None, content=lambda c: None, watermarks=lambda c: None)
    with pytest.raises(ValueError, match="'users'"):
        router.route(_change("users"))
