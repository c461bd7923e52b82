"""The external sink's columnar encoder on real PostgreSQL data: the same bytes as the per-event encoder.

The unit tests (tests/unit/sinks/test_external_columns.py) emulate jsonb's
text form; here the payloads, timestamps and odd rows are what PostgreSQL
hands out: backfill chunks read by binary and CSV COPY, and the live stream
(native runs of inserts) delivered to a receiver by a sink that takes columns
next to one that takes events, under the same CloudEvent ids.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone

import pytest
from psycopg2 import sql

from pulse.model import Position
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.external.sink import ExternalSink, encode_event
from pulse.sinks.external.columns import encode_table, fallback_mask
from pulse.sinks.external.local import build_frame, build_frame_columns
from pulse.source.chunks import chunk_query, read_chunk
from pulse.transform.columnar import EventChunk
from pulse.source.content import load_content

from .pipeline_helpers import Running, wait_for
from .external_helpers import received_by_event, settings, source_ids
from .pipeline_helpers import pulse_cmd, pulse_env

NOW = datetime(2024, 8, 2, 12, 0, 0, 123000, tzinfo=timezone.utc)


def _generate(db, count: int) -> None:
    gen = subprocess.run(pulse_cmd("generate", "--count", str(count), "--since", "2024-08-01T00:00:00",
                                   "--until", "2024-08-02T00:00:00", "--seed", "18", "--content", "40",
                                   "--chunk-rows", "500", "--anomalies", "0.4"),
                         env=pulse_env(db), capture_output=True, text=True, timeout=180)
    assert gen.returncode == 0, gen.stderr[-2000:]


@pytest.mark.parametrize("binary", [True, False])
def test_backfill_chunks_encode_as_their_events_do(scratch_db, binary):
    _generate(scratch_db, 3000)
    conn = scratch_db.connect()
    cur = conn.cursor()
    cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, "
                "raw_payload) VALUES (NULL, NULL, 'play', '0001-01-01 00:00:00+00', 0, 'a\"b\\c', "
                "'{\"b\": \"x, y\", \"a\": 1, \"ab\": [1, 2], \"é\": null}'), "
                "(NULL, NULL, 'play', 'infinity', 1, NULL, '{\"z\": 1.50, \"y\": \"\\u0001\"}')")
    cache = load_content(cur, "public")
    raw = read_chunk(cur, chunk_query("public", sql.SQL("id > %s"), binary=binary), [0, 100_000])
    cur.execute("SELECT count(*) FROM engagement_events")
    assert raw.num_rows == cur.fetchone()[0] > 2900  # (the anomalies delete a few)
    chunk = EventChunk(raw, lsn=0x16B3748, first_seq=1, commit_ts=NOW, now=NOW, cache=cache)
    by_rows = [encode_event(e, "pulse/it") for e in chunk.events()]
    cols = encode_table(chunk.table(), "pulse/it")
    assert cols.parts() == [e.part for e in by_rows]
    assert cols.ce_id.to_pylist() == [e.ce_id for e in by_rows]
    assert build_frame_columns(cols, chunk.position, 1.0, 4) == build_frame(by_rows, chunk.position, 1.0, 4)
    bad = fallback_mask(chunk.table())
    assert bad.sum() < 0.2 * len(bad), bad.sum()  # anomalies at 40%: most rows still take the kernels
    conn.close()


def test_live_runs_reach_the_endpoint_as_the_row_path_sends_them(scratch_db, receiver):  # noqa: F811
    """A sink on columns and one on events deliver every event under the same id with the same body."""
    conn = scratch_db.connect()
    cur = conn.cursor()
    cfg = settings(scratch_db, receiver, concurrency=3)
    columns = ExternalSink(cfg.external, cfg.database, name="external")
    rows = ExternalSink(cfg.external, cfg.database, name="external_rows")
    rows.accepts_columns = False  # the per-event path, as a restarted or Kafka-fed sink would take
    written: list[int] = []
    write_columns = columns.write_columns

    def counted(table, first, last):
        written.append(table.num_rows)
        return write_columns(table, first, last)

    columns.write_columns = counted  # type: ignore[method-assign]
    with Running(Pipeline(cfg, [columns, rows])):
        _generate(scratch_db, 3000)
        expected = source_ids(cur)
        # Each CloudEvent (inserts, and the generator's updates and deletes) comes once from each sink.
        wait_for(lambda: expected <= set(received_by_event(receiver))
                 and receiver.stats()["duplicates"] >= len(receiver.events()), 90, "every event from both sinks",
                 interval=0.25)
    stats = receiver.stats()
    assert stats["conflicts"] == 0, stats["conflict_samples"][:3]
    inserts = [item for item in receiver.events() if item["event"]["type"].endswith(".insert")]
    assert {item["event"]["data"]["event_id"] for item in inserts} >= expected
    assert len({item["event"]["data"]["event_id"] for item in inserts}) == len(inserts)  # one id per insert
    assert sum(written) > 2000, written  # the generator's transactions came as native runs, as columns
    conn.close()
