"""The streaming core against real PostgreSQL: capture, enrichment, order, positions."""

from __future__ import annotations

import uuid

import pytest

from pulse.runtime.pipeline import Pipeline
from pulse.sinks.memory import FaultySink, MemorySink

from .pipeline_helpers import Running, insert_content, insert_events, settings_for, wait_for


def test_inserts_updates_deletes_and_content_changes_arrive_enriched_in_commit_order(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    sink = MemorySink()
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [c1] = insert_content(cur, 1, length=200, ctype="video")
        ids = insert_events(cur, [c1], 3, duration_ms=1010)  # 1.01 s of 200 s
        cur.execute("UPDATE engagement_events SET duration_ms = 50000 WHERE id = %s", (ids[0],))
        cur.execute("DELETE FROM engagement_events WHERE id = %s", (ids[1],))
        # A content change is seen by the events committed after it.
        cur.execute("UPDATE content SET length_seconds = 10, title = 'Renamed' WHERE id = %s", (c1,))
        [late] = insert_events(cur, [c1], 1, duration_ms=1000)
        events = wait_for(lambda: len(sink.events) >= 6 and sink.snapshot(), 30, "6 events")

    assert [(e.event_id, e.op) for e in events] == [
        (ids[0], "insert"), (ids[1], "insert"), (ids[2], "insert"),
        (ids[0], "update"), (ids[1], "delete"), (late, "insert"),
    ]
    first = events[0]
    assert first.content_type == "video" and first.length_seconds == 200
    assert first.engagement_seconds == 1.01 and first.engagement_pct == 0.01
    assert first.raw_payload == '{"k": 1}'
    assert events[3].duration_ms == 50000 and events[3].engagement_pct == 0.25
    # DEFAULT replica identity: a delete carries only the key.
    assert events[4].problems == ("old_values_unknown",)
    assert events[5].content_title == "Renamed" and events[5].engagement_pct == 0.1
    positions = [e.position for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(e.commit_ts is not None for e in events)


def test_replica_identity_full_gives_before_values(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("ALTER TABLE engagement_events REPLICA IDENTITY FULL")
    sink = MemorySink()
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [c1] = insert_content(cur, 1, length=100)
        [eid] = insert_events(cur, [c1], 1, duration_ms=2000)
        cur.execute("UPDATE engagement_events SET duration_ms = 4000 WHERE id = %s", (eid,))
        cur.execute("DELETE FROM engagement_events WHERE id = %s", (eid,))
        events = wait_for(lambda: len(sink.events) >= 3 and sink.snapshot(), 30, "3 events")
    update, delete = events[1], events[2]
    assert update.before is not None and update.before.duration_ms == 2000 and update.duration_ms == 4000
    assert delete.before is not None and delete.duration_ms == 4000 and delete.problems == ()


def test_odd_rows_are_delivered_with_their_problems(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    sink = MemorySink()
    with Running(Pipeline(settings_for(scratch_db), [sink])):
        [zero] = insert_content(cur, 1, length=0)
        [nolen] = insert_content(cur, 1, length=None, ctype="newsletter")
        a = insert_events(cur, [None], 1, duration_ms=1000)
        b = insert_events(cur, [zero], 1, duration_ms=1000)
        c = insert_events(cur, [nolen], 1, duration_ms=None)
        d = insert_events(cur, [nolen], 1, duration_ms=-5)
        events = wait_for(lambda: len(sink.events) >= 4 and sink.snapshot(), 30, "4 events")
    by_id = {e.event_id: e for e in events}
    assert by_id[a[0]].problems == ("null_content_id",) and by_id[a[0]].engagement_seconds == 1.0
    assert by_id[b[0]].problems == ("zero_length",) and by_id[b[0]].engagement_pct is None
    assert by_id[c[0]].engagement_seconds is None and by_id[c[0]].content_type == "newsletter"
    assert by_id[d[0]].problems == ("negative_duration",) and by_id[d[0]].engagement_seconds is None


def test_transient_sink_failures_are_retried_without_loss_or_repeat(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    inner = MemorySink()
    faulty = FaultySink(inner, fail_rate=0.5, seed=7)
    with Running(Pipeline(settings_for(scratch_db), [faulty])):
        [c1] = insert_content(cur, 1)
        ids = insert_events(cur, [c1], 50)
        wait_for(lambda: len(inner.events) >= 50, 60, "50 events")
    assert faulty.failures > 0
    assert [e.event_id for e in inner.events] == ids


def test_restart_resumes_after_each_sinks_own_position(scratch_db):
    conn = scratch_db.connect()
    cur = conn.cursor()
    fast = MemorySink("fast")
    with Running(Pipeline(settings_for(scratch_db), [fast])):
        [c1] = insert_content(cur, 1)
        first = insert_events(cur, [c1], 10)
        wait_for(lambda: len(fast.events) >= 10, 30, "10 events")
    # The same sink resumes after its stored position; a new sink joins from the slot.
    fast2 = MemorySink("fast", start=fast.position)
    fresh = MemorySink("fresh")
    with Running(Pipeline(settings_for(scratch_db), [fast2, fresh])):
        second = insert_events(cur, [c1], 5)
        wait_for(lambda: len(fast2.events) >= 5 and len(fresh.events) >= 5, 30, "5 more events")
    assert [e.event_id for e in fast2.events] == second
    assert [e.event_id for e in fresh.events] == second
    assert not set(first) & {e.event_id for e in fast2.events}


def test_terminal_sink_error_stops_the_pipeline_with_that_error(scratch_db):
    from pulse.errors import TerminalError

    conn = scratch_db.connect()
    cur = conn.cursor()
    faulty = FaultySink(MemorySink(), terminal_after=0)
    running = Running(Pipeline(settings_for(scratch_db), [faulty]))
    running.__enter__()
    [c1] = insert_content(cur, 1)
    insert_events(cur, [c1], 1)
    wait_for(lambda: running.error is not None, 30, "the terminal error")
    running.stop()
    assert isinstance(running.error, TerminalError)
