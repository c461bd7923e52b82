"""Unit tests for pulse.source.pgoutput.

Messages are built byte by byte by the small encoder below, which follows
"Logical Replication Message Formats" (PostgreSQL 15/16) independently of
the decoder's own struct layouts.
"""

from __future__ import annotations

import copy
import math
import pickle
import struct
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from pulse.source.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputDecoder,
    PgOutputError,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    lsn_to_str,
    pg_timestamp_to_datetime,
    str_to_lsn,
)

# --- a minimal pgoutput encoder (the sending side of the spec) ---------------

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def i8(v: int) -> bytes:
    return struct.pack(">B", v)


def i16(v: int) -> bytes:
    return struct.pack(">H", v)


def i32(v: int) -> bytes:
    return struct.pack(">I", v)


def s32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">Q", v)


def s64(v: int) -> bytes:
    return struct.pack(">q", v)


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def ts(dt: datetime) -> bytes:
    delta = dt - PG_EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return s64(micros)


def xid_prefix(xid: int | None) -> bytes:
    return b"" if xid is None else i32(xid)


def enc_begin(final_lsn: int, commit_ts: datetime, xid: int) -> bytes:
    return b"B" + i64(final_lsn) + ts(commit_ts) + i32(xid)


def enc_commit(commit_lsn: int, end_lsn: int, commit_ts: datetime, flags: int = 0) -> bytes:
    return b"C" + i8(flags) + i64(commit_lsn) + i64(end_lsn) + ts(commit_ts)


def enc_origin(lsn: int, name: str) -> bytes:
    return b"O" + i64(lsn) + cstr(name)


def enc_relation(oid, namespace, name, replident, columns, xid=None) -> bytes:
    """columns: iterable of (flags, name, type_oid, typmod)."""
    out = b"R" + xid_prefix(xid) + i32(oid) + cstr(namespace) + cstr(name)
    out += replident.encode() + i16(len(columns))
    for flags, colname, type_oid, typmod in columns:
        out += i8(flags) + cstr(colname) + i32(type_oid) + s32(typmod)
    return out


def enc_type(oid, namespace, name, xid=None) -> bytes:
    return b"Y" + xid_prefix(xid) + i32(oid) + cstr(namespace) + cstr(name)


def enc_tuple(values) -> bytes:
    """values: None -> 'n', UNCHANGED_TOAST -> 'u', str -> 't', bytes -> 'b'."""
    out = i16(len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(v, bytes):
            out += b"b" + i32(len(v)) + v
        else:
            raw = v.encode()
            out += b"t" + i32(len(raw)) + raw
    return out


def enc_insert(oid, values, xid=None) -> bytes:
    return b"I" + xid_prefix(xid) + i32(oid) + b"N" + enc_tuple(values)


def enc_update(oid, new, key=None, old=None, xid=None) -> bytes:
    out = b"U" + xid_prefix(xid) + i32(oid)
    if key is not None:
        out += b"K" + enc_tuple(key)
    if old is not None:
        out += b"O" + enc_tuple(old)
    return out + b"N" + enc_tuple(new)


def enc_delete(oid, key=None, old=None, xid=None) -> bytes:
    out = b"D" + xid_prefix(xid) + i32(oid)
    if key is not None:
        return out + b"K" + enc_tuple(key)
    return out + b"O" + enc_tuple(old)


def enc_truncate(oids, options, xid=None) -> bytes:
    return b"T" + xid_prefix(xid) + i32(len(oids)) + i8(options) + b"".join(i32(o) for o in oids)


def enc_message(transactional, lsn, prefix, content, xid=None) -> bytes:
    return (b"M" + xid_prefix(xid) + i8(1 if transactional else 0) + i64(lsn)
            + cstr(prefix) + i32(len(content)) + content)


def enc_stream_start(xid, first_segment) -> bytes:
    return b"S" + i32(xid) + i8(1 if first_segment else 0)


def enc_stream_stop() -> bytes:
    return b"E"


def enc_stream_commit(xid, commit_lsn, end_lsn, commit_ts, flags=0) -> bytes:
    return b"c" + i32(xid) + i8(flags) + i64(commit_lsn) + i64(end_lsn) + ts(commit_ts)


def enc_stream_abort(xid, subxid, abort_lsn=None, abort_ts=None) -> bytes:
    out = b"A" + i32(xid) + i32(subxid)
    if abort_lsn is not None:
        out += i64(abort_lsn) + ts(abort_ts)
    return out


# --- fixtures ----------------------------------------------------------------

ALL_TYPES = [
    # (flags, name, type oid, typmod, text sent, expected python value)
    (1, "id", 20, -1, "9223372036854775807", 9223372036854775807),
    (0, "flag_t", 16, -1, "t", True),
    (0, "flag_f", 16, -1, "f", False),
    (0, "small", 21, -1, "-32768", -32768),
    (0, "num", 23, -1, "42", 42),
    (0, "objid", 26, -1, "4294967295", 4294967295),
    (0, "f4", 700, -1, "1.5", 1.5),
    (0, "f8", 701, -1, "-2.25e-10", -2.25e-10),
    (0, "f8_inf", 701, -1, "Infinity", math.inf),
    (0, "f8_ninf", 701, -1, "-Infinity", -math.inf),
    (0, "price", 1700, 655366, "12345678901234567890.123456789", Decimal("12345678901234567890.123456789")),
    (0, "body", 25, -1, "h\u00e9llo \u2603", "h\u00e9llo \u2603"),
    (0, "vc", 1043, 36, "varchar", "varchar"),
    (0, "bp", 1042, 14, "padded    ", "padded    "),
    (0, "nm", 19, -1, "pg_name", "pg_name"),
    (0, "uid", 2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (0, "at_utc", 1184, -1, "2024-08-01 12:00:00.123456+00",
     datetime(2024, 8, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)),
    (0, "at_ist", 1184, -1, "2024-08-01 17:30:00+05:30",
     datetime(2024, 8, 1, 12, 0, 0, tzinfo=timezone.utc)),
    (0, "at_inf", 1184, -1, "infinity", "infinity"),
    (0, "at_ninf", 1184, -1, "-infinity", "-infinity"),
    (0, "local", 1114, -1, "2024-02-29 23:59:59.5", datetime(2024, 2, 29, 23, 59, 59, 500000)),
    (0, "day", 1082, -1, "1999-12-31", date(1999, 12, 31)),
    (0, "doc", 114, -1, '{"a": [1, 2]}', '{"a": [1, 2]}'),
    (0, "docb", 3802, -1, '{"b": null}', '{"b": null}'),
    (0, "ip", 869, -1, "10.0.0.1/32", "10.0.0.1/32"),  # inet: not in the table -> str
]

T0 = datetime(2024, 8, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def users_relation(oid=16384, xid=None, extra_column=False):
    cols = [(1, "id", 23, -1), (0, "name", 25, -1), (0, "blob", 17, -1)]
    if extra_column:
        cols.append((0, "email", 1043, 259))
    return enc_relation(oid, "public", "users", "d", cols, xid=xid)


@pytest.fixture
def dec() -> PgOutputDecoder:
    d = PgOutputDecoder(protocol_version=2)
    d.decode(users_relation())
    return d


# --- helpers ------------------------------------------------------------------


def test_lsn_helpers_round_trip():
    assert lsn_to_str(0) == "0/0"
    assert lsn_to_str(0x16_B374D848) == "16/B374D848"
    assert str_to_lsn("16/B374D848") == 0x16_B374D848
    assert str_to_lsn("16/b374d848") == 0x16_B374D848
    for lsn in (0, 1, 0xFFFFFFFF, 1 << 32, 0x0123_4567_89AB_CDEF, (1 << 64) - 1):
        assert str_to_lsn(lsn_to_str(lsn)) == lsn
    assert lsn_to_str((1 << 64) - 1) == "FFFFFFFF/FFFFFFFF"


@pytest.mark.parametrize("bad", ["", "16", "/1", "1/", "G/0", "1/2/3", "123456789/0", "0x1/0", "+1/0", "1_0/0"])
def test_str_to_lsn_rejects_garbage(bad):
    with pytest.raises(PgOutputError):
        str_to_lsn(bad)


def test_lsn_to_str_rejects_out_of_range():
    with pytest.raises(PgOutputError):
        lsn_to_str(1 << 64)
    with pytest.raises(PgOutputError):
        lsn_to_str(-1)


def test_pg_timestamp_to_datetime():
    assert pg_timestamp_to_datetime(0) == PG_EPOCH
    assert pg_timestamp_to_datetime(-1) == PG_EPOCH - timedelta(microseconds=1)
    assert pg_timestamp_to_datetime(775_742_400_123_456) == datetime(
        2024, 7, 31, 12, 0, 0, 123456, tzinfo=timezone.utc
    )


def test_unchanged_toast_sentinel_is_a_distinct_singleton():
    assert UNCHANGED_TOAST is not None
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST


def test_protocol_version_validated():
    with pytest.raises(PgOutputError):
        PgOutputDecoder(protocol_version=0)
    with pytest.raises(PgOutputError):
        PgOutputDecoder(protocol_version=5)
    assert issubclass(PgOutputError, ValueError)


# --- transaction control ----------------------------------------------------------


def test_begin_and_commit_values():
    d = PgOutputDecoder()
    begin = d.decode(enc_begin(0x1_0000_00A8, T0, 4_000_000_123))
    assert begin == Begin(final_lsn=0x1_0000_00A8, commit_ts=T0, xid=4_000_000_123)
    assert begin.commit_ts.tzinfo is not None
    assert begin.commit_ts.microsecond == 123456
    assert lsn_to_str(begin.final_lsn) == "1/A8"

    commit = d.decode(enc_commit(0x1_0000_00A8, 0x1_0000_00D8, T0))
    assert isinstance(commit, Commit)
    assert commit.flags == 0
    assert commit.commit_lsn == 0x1_0000_00A8
    assert commit.end_lsn == 0x1_0000_00D8
    assert commit.commit_ts == T0
    assert commit.commit_ts.utcoffset() == timedelta(0)


def test_begin_with_pre_epoch_and_max_lsn():
    d = PgOutputDecoder()
    when = datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
    begin = d.decode(enc_begin((1 << 64) - 1, when, 1))
    assert begin.final_lsn == (1 << 64) - 1
    assert begin.commit_ts == when


def test_origin():
    d = PgOutputDecoder()
    assert d.decode(enc_origin(0xABCDEF, "pg_16500")) == Origin(origin_lsn=0xABCDEF, name="pg_16500")


def test_records_are_immutable():
    d = PgOutputDecoder()
    begin = d.decode(enc_begin(1, T0, 2))
    with pytest.raises(AttributeError):
        begin.xid = 3  # type: ignore[misc]


# --- relation, type and rows ------------------------------------------------------


def test_relation_message_and_helpers():
    d = PgOutputDecoder()
    rel = d.decode(users_relation())
    assert isinstance(rel, Relation)
    assert (rel.oid, rel.namespace, rel.name, rel.replica_identity) == (16384, "public", "users", "d")
    assert rel.columns == (
        Column(1, "id", 23, -1),
        Column(0, "name", 25, -1),
        Column(0, "blob", 17, -1),
    )
    assert rel.xid is None
    assert [c.name for c in rel.key_columns] == ["id"]
    assert rel.columns[0].is_key and not rel.columns[1].is_key
    assert rel.column_names == ("id", "name", "blob")
    assert rel.as_dict((1, "x", None)) == {"id": 1, "name": "x", "blob": None}
    with pytest.raises(PgOutputError):
        rel.as_dict((1, "x"))
    assert d.get_relation(16384) is rel


def test_relation_empty_namespace_means_pg_catalog():
    d = PgOutputDecoder()
    rel = d.decode(enc_relation(1259, "", "pg_class_copy", "n", []))
    assert rel.namespace == "pg_catalog"
    assert rel.columns == ()
    assert rel.key_columns == ()


def test_insert_every_type_and_null_toast_binary():
    d = PgOutputDecoder(protocol_version=1)
    cols = [(f, n, t, m) for f, n, t, m, _, _ in ALL_TYPES]
    cols += [(0, "gone", 25, -1), (0, "big", 25, -1), (0, "raw", 17, -1)]
    d.decode(enc_relation(20000, "shop", "everything", "d", cols))
    sent = [text for *_, text, _ in ALL_TYPES] + [None, UNCHANGED_TOAST, b"\x00\xffbin"]
    ins = d.decode(enc_insert(20000, sent))
    assert isinstance(ins, Insert)
    assert ins.xid is None
    assert ins.relation.name == "everything"
    expected = [value for *_, value in ALL_TYPES] + [None, UNCHANGED_TOAST, b"\x00\xffbin"]
    assert len(ins.new) == len(expected)
    for col, got, want in zip(ins.relation.columns, ins.new, expected):
        assert got == want, col.name
        assert type(got) is type(want), col.name
    row = ins.relation.as_dict(ins.new)
    assert row["at_ist"].utcoffset() == timedelta(hours=5, minutes=30)
    assert row["local"].tzinfo is None
    assert row["big"] is UNCHANGED_TOAST
    assert row["gone"] is None
    assert isinstance(row["raw"], bytes)


def test_float_nan():
    d = PgOutputDecoder()
    d.decode(enc_relation(1, "public", "f", "d", [(0, "x", 701, -1), (0, "y", 700, -1)]))
    ins = d.decode(enc_insert(1, ["NaN", "NaN"]))
    assert all(math.isnan(v) for v in ins.new)


def test_numeric_special_values():
    d = PgOutputDecoder()
    d.decode(enc_relation(1, "public", "n", "d", [(0, "a", 1700, -1), (0, "b", 1700, -1)]))
    a, b = d.decode(enc_insert(1, ["NaN", "-Infinity"])).new
    assert isinstance(a, Decimal) and a.is_nan()
    assert b == Decimal("-Infinity")


def test_dates_python_cannot_represent_stay_text():
    d = PgOutputDecoder()
    d.decode(enc_relation(1, "public", "d", "d", [(0, "a", 1082, -1), (0, "b", 1184, -1),
                                                   (0, "c", 1114, -1), (0, "e", 1082, -1)]))
    ins = d.decode(enc_insert(1, ["0044-03-15 BC", "10000-01-01 00:00:00+00", "infinity", "-infinity"]))
    assert ins.new == ("0044-03-15 BC", "10000-01-01 00:00:00+00", "infinity", "-infinity")


def test_timestamps_that_leave_the_range_in_utc_stay_text():
    d = PgOutputDecoder()
    d.decode(enc_relation(1, "public", "d", "d", [(0, "a", 1184, -1), (0, "b", 1184, -1), (0, "c", 1184, -1),
                                                   (0, "e", 1184, -1)]))
    late, early, last, first = "9999-12-31 23:59:59-01", "0001-01-01 00:00:00+01", "9999-12-31 23:59:59+14", \
        "0001-01-01 00:00:00-01"
    ins = d.decode(enc_insert(1, [late, early, last, first]))
    assert ins.new[:2] == (late, early)  # 10000-01-01 and 1 BC in UTC: not a datetime that overflows later
    assert ins.new[2] == datetime(9999, 12, 31, 9, 59, 59, tzinfo=timezone.utc)
    assert ins.new[3] == datetime(1, 1, 1, 1, tzinfo=timezone.utc)


def test_non_iso_datestyle_is_an_error_not_a_silent_string():
    d = PgOutputDecoder()
    d.decode(enc_relation(1, "public", "d", "d", [(0, "b", 1184, -1)]))
    with pytest.raises(PgOutputError, match="malformed"):
        d.decode(enc_insert(1, ["Thu Aug 01 12:00:00 2024 UTC"]))


def test_bad_value_text_is_pgoutput_error():
    d = PgOutputDecoder()
    d.decode(enc_relation(1, "public", "b", "d", [(0, "ok", 16, -1)]))
    with pytest.raises(PgOutputError):
        d.decode(enc_insert(1, ["yes"]))
    d.decode(enc_relation(2, "public", "i", "d", [(0, "n", 23, -1)]))
    with pytest.raises(PgOutputError):
        d.decode(enc_insert(2, ["12abc"]))


def test_custom_converters_override_defaults():
    d = PgOutputDecoder(converters={3802: lambda raw: ("parsed", raw.decode())})
    d.decode(enc_relation(1, "public", "j", "d", [(0, "doc", 3802, -1), (0, "n", 23, -1)]))
    assert d.decode(enc_insert(1, ['{"a":1}', "5"])).new == (("parsed", '{"a":1}'), 5)


def test_type_message_and_domain_gets_base_converter():
    d = PgOutputDecoder()
    # A domain over int4 is described by its base type (pg_catalog.int4).
    t = d.decode(enc_type(70001, "", "int4"))
    assert t == TypeInfo(oid=70001, namespace="pg_catalog", name="int4")
    enum = d.decode(enc_type(70002, "public", "mood"))
    assert enum.namespace == "public" and enum.name == "mood"
    d.decode(enc_relation(1, "public", "t", "d", [(0, "n", 70001, -1), (0, "m", 70002, -1)]))
    assert d.decode(enc_insert(1, ["17", "happy"])).new == (17, "happy")


def test_update_with_key_tuple(dec):
    upd = dec.decode(enc_update(16384, new=["2", "bob", None], key=["1", None, None]))
    assert isinstance(upd, Update)
    assert upd.key == (1, None, None)
    assert upd.old is None
    assert upd.new == (2, "bob", None)
    assert upd.xid is None


def test_update_with_old_tuple_replica_identity_full():
    d = PgOutputDecoder()
    d.decode(enc_relation(5, "public", "full", "f", [(1, "id", 23, -1), (1, "v", 25, -1)]))
    rel = d.get_relation(5)
    assert rel.replica_identity == "f"
    assert [c.name for c in rel.key_columns] == ["id", "v"]
    upd = d.decode(enc_update(5, new=["1", "new"], old=["1", "old"]))
    assert upd.old == (1, "old")
    assert upd.key is None
    assert upd.new == (1, "new")


def test_update_with_neither_and_unchanged_toast(dec):
    upd = dec.decode(enc_update(16384, new=["1", "carol", UNCHANGED_TOAST]))
    assert upd.old is None and upd.key is None
    assert upd.new == (1, "carol", UNCHANGED_TOAST)
    assert upd.new[2] is UNCHANGED_TOAST


def test_delete_with_key(dec):
    dele = dec.decode(enc_delete(16384, key=["7", None, None]))
    assert isinstance(dele, Delete)
    assert dele.key == (7, None, None)
    assert dele.old is None
    assert dele.relation.name == "users"


def test_delete_with_old():
    d = PgOutputDecoder()
    d.decode(enc_relation(5, "public", "full", "f", [(1, "id", 23, -1), (1, "v", 25, -1)]))
    dele = d.decode(enc_delete(5, old=["3", "x"]))
    assert dele.old == (3, "x")
    assert dele.key is None


def test_truncate_with_options():
    d = PgOutputDecoder()
    d.decode(users_relation(oid=10))
    d.decode(users_relation(oid=11))
    for options, cascade, restart in [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]:
        tr = d.decode(enc_truncate([10, 11], options))
        assert isinstance(tr, Truncate)
        assert tr.relation_oids == (10, 11)
        assert [r.oid for r in tr.relations] == [10, 11]
        assert (tr.cascade, tr.restart_identity) == (cascade, restart)
        assert tr.xid is None


def test_logical_message_transactional_and_not():
    d = PgOutputDecoder()
    m = d.decode(enc_message(True, 0x5_0000_0010, "pulse", b"\x00{\"k\":1}"))
    assert m == LogicalMessage(transactional=True, lsn=0x5_0000_0010, prefix="pulse",
                               content=b"\x00{\"k\":1}", xid=None)
    m2 = d.decode(enc_message(False, 7, "", b""))
    assert m2.transactional is False
    assert (m2.lsn, m2.prefix, m2.content) == (7, "", b"")


# --- streaming ----------------------------------------------------------------------


def test_streamed_transaction_commit():
    d = PgOutputDecoder(protocol_version=2)
    assert not d.in_stream
    start = d.decode(enc_stream_start(900, first_segment=True))
    assert start == StreamStart(xid=900, first_segment=True)
    assert d.in_stream and d.stream_xid == 900

    rel = d.decode(users_relation(xid=900))
    assert rel.xid == 900
    ins = d.decode(enc_insert(16384, ["1", "a", b"\x01"], xid=900))
    assert ins.xid == 900
    assert ins.new == (1, "a", b"\x01")
    # A change from a subtransaction carries the subxact's xid.
    ins_sub = d.decode(enc_insert(16384, ["2", "b", None], xid=901))
    assert ins_sub.xid == 901
    msg = d.decode(enc_message(True, 99, "p", b"c", xid=900))
    assert msg.xid == 900
    assert isinstance(d.decode(enc_stream_stop()), StreamStop)
    assert not d.in_stream

    second = d.decode(enc_stream_start(900, first_segment=False))
    assert second == StreamStart(xid=900, first_segment=False)
    assert d.in_stream
    upd = d.decode(enc_update(16384, new=["1", "z", None], key=["1", None, None], xid=900))
    assert upd.xid == 900 and upd.key == (1, None, None)
    dele = d.decode(enc_delete(16384, key=["2", None, None], xid=901))
    assert dele.xid == 901
    tr = d.decode(enc_truncate([16384], 1, xid=900))
    assert tr.xid == 900 and tr.cascade
    stop = d.decode(enc_stream_stop())
    assert isinstance(stop, StreamStop)
    assert not d.in_stream

    when = T0 + timedelta(seconds=1)
    sc = d.decode(enc_stream_commit(900, 0x2_0000_0100, 0x2_0000_0130, when))
    assert sc == StreamCommit(xid=900, flags=0, commit_lsn=0x2_0000_0100,
                              end_lsn=0x2_0000_0130, commit_ts=when)
    # After the commit the streamed schema is the main one; rows have no xid again.
    ins_after = d.decode(enc_insert(16384, ["5", "e", None]))
    assert ins_after.xid is None and ins_after.new == (5, "e", None)


def test_second_segment_flag_and_origin_inside_stream():
    d = PgOutputDecoder(protocol_version=2)
    assert d.decode(enc_stream_start(7, True)).first_segment is True
    # Origin is sent right after Stream Start and never carries an xid.
    assert d.decode(enc_origin(0, "node_a")) == Origin(0, "node_a")
    d.decode(enc_stream_stop())
    again = d.decode(enc_stream_start(7, False))
    assert again == StreamStart(xid=7, first_segment=False)


def test_stream_abort_top_level_and_subtransaction():
    d = PgOutputDecoder(protocol_version=2)
    d.decode(enc_stream_start(50, True))
    d.decode(enc_stream_stop())
    ab = d.decode(enc_stream_abort(50, 51))
    assert ab == StreamAbort(xid=50, subxid=51, abort_lsn=None, abort_ts=None)
    ab2 = d.decode(enc_stream_abort(50, 50))
    assert (ab2.xid, ab2.subxid) == (50, 50)
    assert not d.in_stream


def test_stream_abort_parallel_fields_protocol_4():
    d = PgOutputDecoder(protocol_version=4)
    ab = d.decode(enc_stream_abort(50, 50, abort_lsn=0x3_0000_0001, abort_ts=T0))
    assert ab.abort_lsn == 0x3_0000_0001
    assert ab.abort_ts == T0
    # Protocol 4 without streaming=parallel sends the short form.
    short = d.decode(enc_stream_abort(60, 61))
    assert short.abort_lsn is None and short.abort_ts is None


def test_xid_absent_outside_streams(dec):
    # Outside a stream the first Int32 after the type byte is the relation oid.
    ins = dec.decode(enc_insert(16384, ["1", "a", None]))
    assert ins.xid is None
    assert ins.relation.oid == 16384
    # The same bytes with an xid prefix would be misread: the decoder catches it
    # (the "oid" would be the xid, an unknown relation).
    with pytest.raises(PgOutputError, match="unknown relation oid 900"):
        dec.decode(enc_insert(16384, ["1", "a", None], xid=900))


def test_streamed_schema_is_scoped_until_commit():
    d = PgOutputDecoder(protocol_version=2)
    d.decode(users_relation())  # 3 columns, committed schema
    d.decode(enc_stream_start(900, True))
    wide = d.decode(users_relation(xid=900, extra_column=True))  # uncommitted ALTER TABLE
    assert len(wide.columns) == 4
    assert len(d.decode(enc_insert(16384, ["1", "a", None, "a@x"], xid=900)).new) == 4
    d.decode(enc_stream_stop())
    # An ordinary transaction interleaved between segments still uses 3 columns.
    assert len(d.get_relation(16384).columns) == 3
    d.decode(enc_begin(10, T0, 901))
    assert d.decode(enc_insert(16384, ["2", "b", None])).new == (2, "b", None)
    d.decode(enc_commit(10, 11, T0))
    # A later segment of xid 900 still sees its own schema without a resend.
    d.decode(enc_stream_start(900, False))
    assert len(d.decode(enc_insert(16384, ["3", "c", None, "c@x"], xid=900)).new) == 4
    d.decode(enc_stream_stop())
    d.decode(enc_stream_commit(900, 20, 21, T0))
    assert len(d.get_relation(16384).columns) == 4


def test_streamed_schema_dropped_on_abort():
    d = PgOutputDecoder(protocol_version=2)
    d.decode(users_relation())
    d.decode(enc_stream_start(900, True))
    d.decode(users_relation(xid=900, extra_column=True))
    d.decode(enc_stream_stop())
    d.decode(enc_stream_abort(900, 902))  # subtransaction only: schema stays for 900
    d.decode(enc_stream_start(900, False))
    assert len(d.get_relation(16384).columns) == 4
    d.decode(enc_stream_stop())
    d.decode(enc_stream_abort(900, 900))
    assert len(d.get_relation(16384).columns) == 3
    d.decode(enc_stream_start(900, False))
    assert len(d.get_relation(16384).columns) == 3


def test_stream_state_violations():
    d = PgOutputDecoder(protocol_version=2)
    with pytest.raises(PgOutputError, match="Stream Stop outside"):
        d.decode(enc_stream_stop())
    d.decode(enc_stream_start(1, True))
    for payload in (enc_stream_start(2, True), enc_begin(1, T0, 3), enc_commit(1, 2, T0),
                    enc_stream_commit(1, 1, 2, T0), enc_stream_abort(1, 1)):
        with pytest.raises(PgOutputError, match="inside stream"):
            d.decode(payload)
    assert d.stream_xid == 1  # a rejected message leaves the state alone


def test_stream_messages_rejected_with_protocol_1():
    d = PgOutputDecoder(protocol_version=1)
    with pytest.raises(PgOutputError, match="protocol_version >= 2"):
        d.decode(enc_stream_start(1, True))


# --- schema change, errors ---------------------------------------------------------


def test_relation_replacement_on_schema_change(dec):
    old = dec.get_relation(16384)
    new = dec.decode(users_relation(extra_column=True))
    assert dec.get_relation(16384) is new
    assert new != old
    ins = dec.decode(enc_insert(16384, ["1", "a", None, "a@example.com"]))
    assert ins.relation is new
    assert ins.relation.as_dict(ins.new)["email"] == "a@example.com"
    # Rows shaped for the old schema no longer fit.
    with pytest.raises(PgOutputError, match="has 4"):
        dec.decode(enc_insert(16384, ["1", "a", None]))


def test_relation_equality_ignores_stream_xid():
    d = PgOutputDecoder()
    a = d.decode(users_relation())
    d.decode(enc_stream_start(3, True))
    b = d.decode(users_relation(xid=3))
    assert a == b and a.xid is None and b.xid == 3


def test_unknown_relation_oid(dec):
    for payload in (enc_insert(424242, ["1"]), enc_update(424242, new=["1"]),
                    enc_delete(424242, key=["1"]), enc_truncate([424242], 0)):
        with pytest.raises(PgOutputError, match="unknown relation oid 424242"):
            dec.decode(payload)


def test_unknown_message_type():
    d = PgOutputDecoder()
    with pytest.raises(PgOutputError, match=r"b'Z'.*0x5a"):
        d.decode(b"Z\x00\x00")
    with pytest.raises(PgOutputError, match="empty"):
        d.decode(b"")


def test_unknown_tuple_kind_and_action(dec):
    bad_kind = b"I" + i32(16384) + b"N" + i16(3) + b"x"
    with pytest.raises(PgOutputError, match="column kind"):
        dec.decode(bad_kind)
    with pytest.raises(PgOutputError, match="expected 'N'"):
        dec.decode(b"I" + i32(16384) + b"K" + enc_tuple(["1", None, None]))
    with pytest.raises(PgOutputError, match="expected 'K' or 'O'"):
        dec.decode(b"D" + i32(16384) + b"N" + enc_tuple(["1", None, None]))


def test_trailing_bytes_on_row_messages_rejected(dec):
    with pytest.raises(PgOutputError, match="trailing"):
        dec.decode(enc_insert(16384, ["1", "a", None]) + b"\x00")


@pytest.mark.parametrize(
    "payload",
    [
        enc_begin(1, T0, 2),
        enc_commit(1, 2, T0),
        enc_origin(1, "x"),
        users_relation(),
        enc_type(1, "public", "t"),
        enc_insert(16384, ["1", "h\u00e9llo", b"bin"]),
        enc_update(16384, new=["1", "a", None], key=["1", None, None]),
        enc_delete(16384, old=["1", "a", None]),
        enc_truncate([16384], 3),
        enc_message(True, 1, "p", b"content"),
    ],
    ids=lambda p: chr(p[0]),
)
def test_every_truncation_is_a_pgoutput_error(dec, payload):
    # The full message decodes; every proper prefix must fail cleanly.
    dec.decode(payload)
    for cut in range(1, len(payload)):
        with pytest.raises(PgOutputError, match="truncated"):
            dec.decode(payload[:cut])


@pytest.mark.parametrize(
    "payload",
    [enc_stream_start(1, True), enc_stream_commit(1, 2, 3, T0), enc_stream_abort(1, 2)],
    ids=lambda p: chr(p[0]),
)
def test_stream_message_truncation(payload):
    for cut in range(1, len(payload)):
        d = PgOutputDecoder(protocol_version=2)
        with pytest.raises(PgOutputError, match="truncated"):
            d.decode(payload[:cut])
        assert not d.in_stream


def test_memoryview_and_bytearray_payloads(dec):
    payload = enc_insert(16384, ["9", "mv", b"\x02"])
    assert dec.decode(memoryview(payload)).new == (9, "mv", b"\x02")
    assert dec.decode(bytearray(payload)).new == (9, "mv", b"\x02")
    # A memoryview slice (as a reader with a 25-byte XLogData header would have).
    framed = b"w" + bytes(24) + payload
    assert dec.decode(memoryview(framed)[25:]).new == (9, "mv", b"\x02")
