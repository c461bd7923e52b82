"""Extra source columns and unchanged fields: type names, BigQuery types, the event's shape (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from pulse.bus import codec
from pulse.model import Change, Position, content_extra_columns, extra_columns
from pulse.sinks.bigquery import schema as S
from pulse.source.pgoutput import UNCHANGED_TOAST, type_name
from pulse.source.content import load_content
from pulse.transform.content_cache import ContentCache
from pulse.transform.enrich import enrich_change

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(("oid", "typmod", "pg", "bq"), [
    (25, -1, "text", "STRING"), (1043, 68, "varchar", "STRING"), (21, -1, "int2", "INT64"),
    (23, -1, "int4", "INT64"), (20, -1, "int8", "INT64"), (1700, -1, "numeric", "STRING"),
    (1700, ((10 << 16) | 2) + 4, "numeric(10,2)", "STRING"), (16, -1, "bool", "BOOL"),
    (1184, -1, "timestamptz", "TIMESTAMP"), (3802, -1, "jsonb", "JSON"), (114, -1, "json", "JSON"),
    (700, -1, "float4", "FLOAT64"), (701, -1, "float8", "FLOAT64"), (2950, -1, "uuid", "STRING"),
    (1082, -1, "date", "STRING"), (17, -1, "bytea", "STRING"), (98765, -1, "oid:98765", "STRING"),
])
def test_a_relation_column_type_maps_to_a_bigquery_type(oid, typmod, pg, bq):
    assert type_name(oid, typmod) == pg
    assert S.bq_type(pg) == bq


def test_extra_names_keep_the_source_name_unless_it_collides():
    cols = extra_columns({"id": "int8", "session_id": "text", "op": "text", "Problems": "text", "a b": "int4",
                          "_PARTITIONTIME": "text"})
    assert [(c.source, c.name) for c in cols] == [
        ("session_id", "session_id"), ("op", "col_op"), ("Problems", "col_Problems"), ("a b", "a_b"),
        ("_PARTITIONTIME", "col__PARTITIONTIME")]


def _change(op, new, types, old=None):
    return Change("engagement_events", op, new, old, Position(5, 1), NOW, types)


BASE = {"id": 7, "content_id": None, "user_id": None, "event_type": "play", "event_ts": NOW, "duration_ms": 1000,
        "device": "ios", "raw_payload": '{"k": 1}'}
TYPES = {"id": "int8", "content_id": "uuid", "user_id": "uuid", "event_type": "text", "event_ts": "timestamptz",
         "duration_ms": "int4", "device": "text", "raw_payload": "jsonb"}


def test_extra_columns_ride_in_the_event_and_its_json_form():
    types = {**TYPES, "session_id": "text", "price": "numeric", "op": "int4", "seen": "timestamptz"}
    row = {**BASE, "session_id": "s", "price": Decimal("1.50"), "op": 3, "seen": NOW}
    ev = enrich_change(_change("insert", row, types), ContentCache(), NOW)
    assert ev.extra == {"session_id": "s", "price": Decimal("1.50"), "col_op": 3, "seen": NOW}
    assert ev.extra_types == {"session_id": "text", "price": "numeric", "col_op": "int4", "seen": "timestamptz"}
    doc = ev.to_dict()
    assert doc["op"] == "insert" and doc["col_op"] == 3  # a collision never overwrites a Pulse field
    assert doc["price"] == "1.50" and doc["seen"] == NOW.isoformat() and doc["session_id"] == "s"
    back = codec.decode(codec.encode(ev)[1])
    assert back.extra == {"session_id": "s", "price": "1.50", "col_op": 3, "seen": NOW.isoformat()}
    assert back.extra_types == ev.extra_types
    # The BigQuery rows carry them as text, tagged with both types.
    t = S.to_arrow([ev, back])
    assert t.column("price").to_pylist() == ["1.50", "1.50"]
    assert t.column("seen").to_pylist() == [NOW.isoformat()] * 2
    assert t.schema.field("seen").metadata[S.EXTRA_BQ_TYPE] == b"TIMESTAMP"
    assert [e.name for e in S.extra_fields(t.schema)] == ["session_id", "price", "col_op", "seen"]


def test_a_row_of_a_relation_without_extra_columns_has_none():
    ev = enrich_change(_change("insert", dict(BASE), TYPES), ContentCache(), NOW)
    assert ev.extra is None and "extra_types" not in ev.to_dict()
    assert S.to_arrow([ev]).schema == S.ARROW_SCHEMA


def test_unchanged_extra_and_payload_are_named_not_null():
    types = {**TYPES, "notes": "text"}
    row = {**BASE, "raw_payload": UNCHANGED_TOAST, "notes": UNCHANGED_TOAST}
    ev = enrich_change(_change("update", row, types), ContentCache(), NOW)
    assert set(ev.unchanged) == {"raw_payload", "notes"} and ev.raw_payload is None
    doc = ev.to_dict()
    assert "raw_payload" not in doc and "notes" not in doc and set(doc["unchanged"]) == {"raw_payload", "notes"}
    back = codec.decode(codec.encode(ev)[1])
    assert set(back.unchanged) == {"raw_payload", "notes"}
    t = S.to_arrow([back])
    assert set(t.column(S.UNCHANGED).to_pylist()[0]) == {"raw_payload", "notes"}


def test_the_merge_keeps_unchanged_fields_and_dead_letters_misfits():
    script = S.apply_script(final="F", source="X", dead_letter="D", state="ST", table_name="t", position=(1, 2),
                            extras=[S.Extra("score", "INT64", "text")], unchanged=True)
    assert "raw_payload = IF(S.`_keep_raw_payload`, T.raw_payload" in script
    assert "SAFE_CAST(S.`score` AS INT64) IS NULL" in script
    assert "column score: value does not fit the column type INT64 (the source sends text)" in script
    plain = S.apply_script(final="F", source="X", dead_letter="D", state="ST", table_name="t", position=(1, 2))
    assert "_keep_" not in plain and "`score`" not in plain


def test_a_change_without_a_column_lists_it_as_unchanged_in_the_rows():
    """Rows of a relation without the column (before the ADD, after the DROP, a backfill read) never write it."""
    import pyarrow as pa

    from pulse.sinks.bigquery.load import _conform, _group_schema

    with_col = enrich_change(_change("insert", {**BASE, "sid": "s"}, {**TYPES, "sid": "text"}), ContentCache(), NOW)
    without = enrich_change(_change("update", dict(BASE, id=8), TYPES), ContentCache(), NOW)
    t = S.to_arrow([with_col, without])
    assert t.column(S.UNCHANGED).to_pylist() == [[], ["sid"]]
    assert t.column("sid").to_pylist() == ["s", None]
    # Files of one load with and without the column: the same rule when they are combined.
    plain = S.to_arrow([without])
    schema = _group_schema([S.to_arrow([with_col]).schema, plain.schema])
    combined = pa.concat_tables([_conform(S.to_arrow([with_col]), schema), _conform(plain, schema)])
    assert combined.column(S.UNCHANGED).to_pylist() == [[], ["sid"]]


# -- columns added to `content` ------------------------------------------------------------

CID = "6f1c7c9e-0000-4000-8000-000000000001"
CONTENT_TYPES = {"id": "uuid", "slug": "text", "title": "text", "content_type": "text", "length_seconds": "int4",
                 "publish_ts": "timestamptz"}
CONTENT_ROW = {"id": CID, "slug": "ep", "title": "Ep", "content_type": "podcast", "length_seconds": 10,
               "publish_ts": NOW}


def test_content_extra_names_are_prefixed_and_never_take_a_pulse_field():
    cols = content_extra_columns({**CONTENT_TYPES, "author": "text", "type": "text", "a b": "int4"})
    assert [(c.source, c.name, c.pg_type) for c in cols] == [
        ("author", "content_author", "text"), ("type", "col_content_type", "text"), ("a b", "content_a_b", "int4")]


def test_a_content_extra_column_reaches_the_event_and_the_kafka_value():
    cache = ContentCache()
    cache.put_row(CONTENT_ROW, CONTENT_TYPES)
    assert not cache.has_extra
    plain = enrich_change(_change("insert", {**BASE, "content_id": CID}, TYPES), cache, NOW)
    assert plain.extra is None and plain.content_slug == "ep"
    cache.apply("update", {**CONTENT_ROW, "author": "Ann", "rating": 4}, None,
                {**CONTENT_TYPES, "author": "text", "rating": "int4"})
    assert cache.has_extra
    ev = enrich_change(_change("insert", {**BASE, "content_id": CID}, TYPES), cache, NOW)
    assert ev.extra == {"content_author": "Ann", "content_rating": 4}
    assert ev.extra_types == {"content_author": "text", "content_rating": "int4"}
    back = codec.decode(codec.encode(ev)[1])
    assert back.extra == {"content_author": "Ann", "content_rating": 4} and back.extra_types == ev.extra_types


def test_content_and_event_extras_merge_without_overwriting_each_other():
    cache = ContentCache()
    cache.put_row({**CONTENT_ROW, "author": "Ann"}, {**CONTENT_TYPES, "author": "text"})
    types = {**TYPES, "content_author": "text", "session_id": "text"}
    ev = enrich_change(_change("insert", {**BASE, "content_id": CID, "content_author": "own", "session_id": "s"},
                               types), cache, NOW)
    assert ev.extra == {"content_author": "own", "session_id": "s", "col_content_author": "Ann"}
    assert ev.extra_types == {"content_author": "text", "session_id": "text", "col_content_author": "text"}


def test_an_unchanged_toasted_content_extra_keeps_its_value_and_deletes_count_down():
    types = {**CONTENT_TYPES, "bio": "text"}
    cache = ContentCache()
    cache.apply("insert", {**CONTENT_ROW, "bio": "long"}, None, types)
    snap = cache.snapshot()
    cache.apply("update", {**CONTENT_ROW, "title": "New", "bio": UNCHANGED_TOAST}, None, types)
    info = cache.get(CID)
    assert info.title == "New" and info.extra == {"content_bio": "long"}
    assert snap.has_extra and snap.get(CID).title == "Ep"
    cache.apply("delete", None, {"id": CID}, types)
    assert not cache.has_extra and snap.has_extra


class _CatalogCursor:
    def __init__(self, catalog, rows):
        self.catalog, self.rows, self.queries = catalog, rows, []

    def execute(self, query, params=None):
        self.queries.append(query)

    def fetchall(self):
        return self.catalog if len(self.queries) == 1 else self.rows


def test_load_content_reads_extra_columns_typed_and_converted_as_the_stream():
    catalog = [("id", 2950, -1), ("slug", 25, -1), ("title", 25, -1), ("content_type", 25, -1),
               ("length_seconds", 23, -1), ("publish_ts", 1184, -1), ("author", 25, -1), ("rating", 1700, 393222)]
    cur = _CatalogCursor(catalog, [(CID, "ep", "Ep", "podcast", 10, "Ann", "4.50"), ("x", "s", "T", None, None,
                                                                                       None, None)])
    cache = load_content(cur, "public")
    assert cache.has_extra
    assert cache.get(CID).extra == {"content_author": "Ann", "content_rating": Decimal("4.50")}
    assert cache.get(CID).extra_types == {"content_author": "text", "content_rating": "numeric(6,2)"}
    assert cache.get("x").extra == {"content_author": None, "content_rating": None}


def test_a_chunk_with_extra_columns_gives_the_events_enrich_row_gives():
    """Snapshot/backfill chunks with extra source columns (columnar.read_extra's shape): both branches."""
    import pyarrow as pa

    from pulse.source.catalog import CatalogColumn
    from pulse.model_arrow import EXTRA_PREFIX, RAW_SCHEMA
    from pulse.source.chunks import ChunkExtras
    from pulse.transform.columnar import EventChunk
    from pulse.transform.enrich import enrich_row

    us = int(NOW.timestamp() * 1_000_000)
    raw = pa.Table.from_pylist([
        {"id": 1, "content_id": CID, "user_id": None, "event_type": "play", "event_us": us, "event_ts_bad": False,
         "duration_ms": 5000, "device": "ios", "raw_payload": "{}"},
        {"id": 2, "content_id": None, "user_id": None, "event_type": "play", "event_us": us, "event_ts_bad": False,
         "duration_ms": None, "device": None, "raw_payload": None},
    ], schema=RAW_SCHEMA)
    raw = raw.append_column(EXTRA_PREFIX + "score", pa.array(["7", None], pa.string()))
    raw = raw.append_column(EXTRA_PREFIX + "op", pa.array(["x", "y"], pa.string()))
    types = {**TYPES, "score": "int4", "op": "text"}
    extras = ChunkExtras((CatalogColumn("score", 23, "int4"), CatalogColumn("op", 25, "text")), types)
    rows = [{**BASE, "id": 1, "content_id": CID, "duration_ms": 5000, "device": "ios", "raw_payload": "{}",
             "user_id": None, "score": 7, "op": "x"},
            {**BASE, "id": 2, "duration_ms": None, "device": None, "raw_payload": None, "score": None, "op": "y"}]
    for cache_types in (CONTENT_TYPES, {**CONTENT_TYPES, "author": "text"}):  # without, with content extras
        cache = ContentCache()
        cache.put_row({**CONTENT_ROW, "author": "Ann"}, cache_types)
        chunk = EventChunk(raw, lsn=9, first_seq=3, commit_ts=NOW, now=NOW, cache=cache, extras=extras)
        assert chunk.row_only and chunk.after(Position(9, 3)).extras is extras
        want = [enrich_row({**r, "event_ts": NOW}, op="insert", position=Position(9, 3 + k), commit_ts=NOW,
                           cache=cache, now=NOW, backfill=True, types=types) for k, r in enumerate(rows)]
        got = chunk.events()
        assert got == want
        assert got[0].extra["score"] == 7 and got[0].extra["col_op"] == "x"
        assert ("content_author" in got[0].extra) == ("author" in cache_types)


def test_a_column_dropped_between_the_catalog_and_the_extras_query_is_read_again():
    import psycopg2.errors
    import pyarrow as pa

    from pulse.model_arrow import RAW_SCHEMA
    from pulse.source.chunks import read_extra

    known = [(name, 25, -1) for name in ("id", "content_id", "user_id", "event_type", "event_ts", "duration_ms",
                                         "device", "raw_payload")]

    class Cursor:
        def __init__(self):
            self.catalogs = [known + [("gone", 25, -1), ("kept", 23, -1)], known + [("kept", 23, -1)]]
            self.selects = 0
            self.result = None

        def execute(self, query, params=None):
            if isinstance(query, str):  # the catalog query
                self.result = self.catalogs.pop(0)
                return
            self.selects += 1
            if self.selects == 1:
                raise psycopg2.errors.UndefinedColumn("column gone does not exist")
            self.result = [(5, "42")]

        def fetchall(self):
            return self.result

    raw = pa.Table.from_pylist([{"id": 5}], schema=RAW_SCHEMA)
    cur = Cursor()
    out, extras = read_extra(cur, "public", raw)
    assert [c.name for c in extras.columns] == ["kept"] and out.column("extra:kept").to_pylist() == ["42"]
    assert cur.selects == 2 and not cur.catalogs
