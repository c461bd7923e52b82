"""The native reader against the pure-Python one, on the same real stream.

Two slots capture one workload; a pipeline with the native reader (into a
sink taking events and one taking columns) and one with the Python reader
must deliver the same events at the same positions, value for value: long
runs of inserts (decoded in C, enriched on columns), odd rows in the
middle of them (handed to the Python decoder), a content change in the
middle of a transaction, a schema change, small transactions, updates and
deletes.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from pulse.config import DatabaseConfig, Settings
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.schema import to_arrow
from pulse.sinks.memory import MemorySink
from pulse.source import native
from pulse.source.slot import ensure_slot
from tests.integration.pipeline_helpers import Running, insert_content, insert_events, insert_events_bulk, wait_for

ODD = [  # (event_ts, content, duration): rows the native decoder must leave to Python, or odd for enrichment
    ("infinity", True, 10), ("-infinity", True, 10), ("10000-01-01 00:00:00+00", True, 10),
    ("2026-01-01 00:00:00+00", False, 10), ("2026-01-01 00:00:00+00", True, -5), ("2026-01-01 00:00:00+00", True, None),
]


def _workload(cur, content: list[str]) -> int:
    """Writes the workload; returns the number of engagement_events changes it makes."""
    changes = 0
    cur.execute("BEGIN")
    insert_events_bulk(cur, content, 1, 400)
    for ts, with_content, duration in ODD:
        cur.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
            "VALUES (%s, gen_random_uuid(), 'play', %s, %s, NULL, NULL)",
            (content[0] if with_content else None, ts, duration),
        )
    insert_events_bulk(cur, content, 401, 300)
    # The content changes halfway through a transaction: later rows see the new title.
    cur.execute("UPDATE content SET title = 'Retitled', length_seconds = 7 WHERE id = %s", (content[0],))
    insert_events_bulk(cur, content, 701, 300)
    cur.execute("COMMIT")
    changes += 1000 + len(ODD)
    cur.execute("ALTER TABLE engagement_events ADD COLUMN note text")  # a new Relation message
    cur.execute("BEGIN")
    insert_events_bulk(cur, content, 2001, 250)
    cur.execute("UPDATE engagement_events SET note = 'n', duration_ms = 1 WHERE id % 97 = 0")
    cur.execute("SELECT count(*) FROM engagement_events WHERE id % 97 = 0")
    changes += 250 + cur.fetchone()[0]
    cur.execute("COMMIT")
    ids = insert_events(cur, content, 20)  # small transactions: the row path
    cur.execute("DELETE FROM engagement_events WHERE id = ANY(%s)", (ids[:5],))
    changes += 25
    # Not the expected shape any more: the native reader leaves the relation to Python.
    cur.execute("ALTER TABLE engagement_events ALTER COLUMN device TYPE varchar(40)")  # still accepted
    cur.execute("CREATE DOMAIN device_name AS text")
    cur.execute("ALTER TABLE engagement_events ALTER COLUMN device TYPE device_name")  # a domain: not accepted
    cur.execute("BEGIN")
    insert_events_bulk(cur, content, 5001, 200)
    cur.execute("COMMIT")
    changes += 200
    return changes


def _rows(table: pa.Table) -> dict:
    out = {}
    # `unchanged` lists the columns a row's relation lacked (`note` before it was added): not a value.
    drop = ["processed_ts"] + (["unchanged"] if "unchanged" in table.column_names else [])
    for row in table.drop_columns(drop).to_pylist():
        out[(row["source_lsn"], row["source_seq"])] = row
    return out


@pytest.mark.parametrize("merged", [False, True], ids=["as-read", "merged"])
def test_native_and_python_readers_deliver_the_same_events(scratch_db, merged) -> None:
    """`merged`: the columnar sink's first write stalls, so the runs behind it queue up and reach it as one
    table (`_merge_columns`), each run enriched with its own content snapshot."""
    assert native.available(), "pulse.source._wire was not built"
    db = scratch_db
    cfg_native = db.config(heartbeat_interval_s=1.0, status_interval_s=1.0)
    cfg_python = DatabaseConfig(url=db.url, slot=db.slot + "_py", publication=db.publication,
                                heartbeat_interval_s=1.0, status_interval_s=1.0, native_reader=False)
    ensure_slot(cfg_native)
    ensure_slot(cfg_python)
    conn = db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 3, length=100)
    expected = _workload(cur, content)

    rows, cols, reference = MemorySink("rows"), MemorySink("cols", columns=True), MemorySink("reference")
    if merged:
        write_columns = cols.write_columns

        def stall_first(table, first, last):
            if not cols.tables:
                time.sleep(1.0)
            return write_columns(table, first, last)

        cols.write_columns = stall_first  # type: ignore[method-assign]
    with Running(Pipeline(Settings(database=cfg_native), [rows, cols])), \
            Running(Pipeline(Settings(database=cfg_python), [reference])):
        wait_for(lambda: rows.count >= expected and cols.count >= expected and reference.count >= expected,
                 90, "all three sinks to hold the workload")

    assert rows.count == cols.count == reference.count == expected
    # (the runs after `ADD COLUMN note` take the row path: `note` rides in the events' `extra`)
    # Long runs reach the columnar sink as tables (several runs in one table when they queued up
    # behind a write); a read boundary may leave the tail of a run to the row path.
    assert sum(t.num_rows for t in cols.tables) >= 800, "long runs should have reached the columnar sink as chunks"
    if merged:
        assert max(t.num_rows for t in cols.tables) > 400, "the runs behind the stalled write came as one table"
    want = _rows(to_arrow(reference.snapshot()))
    assert _rows(to_arrow(rows.snapshot())) == want
    got_cols = _rows(pa.concat_tables([to_arrow(cols.snapshot()), *cols.tables], promote_options="default"))
    assert got_cols == want
    retitled = [r for r in want.values() if r["content_title"] == "Retitled"]
    assert len(retitled) > 250  # the mid-transaction content change reached the later rows
    conn.close()
