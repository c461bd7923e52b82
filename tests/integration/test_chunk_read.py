"""A backfill chunk read by binary COPY equals the same chunk read by CSV COPY, odd rows included."""

from __future__ import annotations

import pytest
from psycopg2 import sql

from pulse.source import native
from pulse.source.chunks import chunk_query, read_chunk
from tests.integration.pipeline_helpers import insert_content

ODD_TS = ["infinity", "-infinity", "2026-01-01 00:00:00+00 BC", "10000-01-01 00:00:00+00",
          "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00", "1969-12-31 23:59:59.999999+00",
          "2026-06-30 12:34:56.000001+05:30", "0001-01-01 00:00:00+01", "9999-12-31 23:59:59-01",
          "4713-01-01 00:00:00+00 BC", "294276-12-31 23:59:59+00"]


def test_binary_and_csv_chunks_are_equal(scratch_db) -> None:
    assert native.available(), "pulse.source._wire was not built"
    conn = scratch_db.connect()
    cur = conn.cursor()
    content = insert_content(cur, 2)
    cur.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload) "
        "SELECT CASE WHEN g %% 7 = 0 THEN NULL ELSE (%s::uuid[])[1 + g %% 2] END, "
        "CASE WHEN g %% 5 = 0 THEN NULL ELSE gen_random_uuid() END, "
        "(ARRAY['play', 'pause', 'finish', 'click', NULL])[1 + g %% 5], "
        "now() - g * interval '1 second', CASE WHEN g %% 3 = 0 THEN NULL ELSE g - 500 END, "
        "(ARRAY['ios', '', 'wéb ✓', NULL])[1 + g %% 4], "
        "CASE WHEN g %% 11 = 0 THEN NULL ELSE jsonb_build_object('g', g, 's', repeat('é', g %% 50)) END "
        "FROM generate_series(1, 3000) g",
        ("{" + ",".join(content) + "}",),
    )
    for ts in ODD_TS:
        cur.execute("INSERT INTO engagement_events (content_id, user_id, event_type, event_ts) "
                    "VALUES (NULL, NULL, 'play', %s)", (ts,))
    where, params = sql.SQL("id > %s"), [0, 100_000]
    csv = read_chunk(cur, chunk_query("public", where, binary=False), params)
    binary = read_chunk(cur, chunk_query("public", where, binary=True), params)
    assert csv.num_rows == 3000 + len(ODD_TS)
    assert binary.schema == csv.schema
    for name in csv.column_names:
        assert binary.column(name).to_pylist() == csv.column(name).to_pylist(), name
    # infinity, -infinity, BC (twice), years 10000 and 294276, and two that are outside the range in UTC only
    assert sum(binary.column("event_ts_bad").to_pylist()) == 8
    conn.close()


def test_an_empty_chunk_reads_as_an_empty_table(scratch_db) -> None:
    cur = scratch_db.connect().cursor()
    table = read_chunk(cur, chunk_query("public", sql.SQL("id > %s"), binary=True), [0, 10])
    assert table.num_rows == 0


@pytest.mark.parametrize("data", [b"", b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\xff\xff"])
def test_parse_of_no_rows(data: bytes) -> None:
    from pulse.source.chunks import parse_binary_chunk

    assert parse_binary_chunk(data).num_rows == 0
