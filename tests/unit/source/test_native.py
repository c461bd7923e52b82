"""The native decoder (`pulse.source._wire`) against the Python decoder, value for value.

`decode_payloads` runs the reader's decoding on captured payloads: every
Insert it decodes must give the row the Python decoder gives, every message
it does not take must come out untouched, and the stream order must hold.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta, timezone

import pytest

from pulse.source import native
from pulse.source import pgoutput as pg
from pulse.transform.columnar import raw_rows
from tests.conftest import need
from tests.unit.source.test_pgoutput import (
    enc_begin,
    enc_commit,
    enc_insert,
    enc_relation,
    enc_stream_start,
    enc_stream_stop,
    enc_tuple,
)

wire = native.load()


@pytest.fixture(autouse=True)
def _extension_built() -> None:
    """Skipped locally without the extension; failed under CI=true (tests/conftest.py's `need`)."""
    need(native.available(), "pulse.source._wire was not built: a C compiler is needed (see setup.py)")


OID = 16400
COLUMNS = [  # engagement_events as pgoutput describes it, plus a column Pulse does not read
    (1, "id", 20, -1), (0, "content_id", 2950, -1), (0, "user_id", 2950, -1), (0, "event_type", 25, -1),
    (0, "event_ts", 1184, -1), (0, "extra", 1700, -1), (0, "duration_ms", 23, -1), (0, "device", 25, -1),
    (0, "raw_payload", 3802, -1),
]
REL = enc_relation(OID, "public", "engagement_events", "d", COLUMNS)
WANTED = ("id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")


def _layout() -> native.FastLayout:
    layout = native.FastLayout("public", 2)
    assert layout.observe(REL)
    return layout


def _ts_text(rng: random.Random) -> str:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=rng.randrange(-10**16, 10**16))
    text = base.strftime("%Y-%m-%d %H:%M:%S")
    frac = base.microsecond
    if frac and rng.random() < 0.8:
        text += "." + f"{frac:06d}".rstrip("0")
    return text + rng.choice(["+00", "+00", "+05:30", "-03", "+01:00:30"]) if rng.random() < 0.3 else text + "+00"


# What PostgreSQL can send that a Python datetime (or the UTC range) cannot hold ...
SENDABLE_ODD_TS = ["infinity", "-infinity", "2026-01-01 00:00:00+00 BC", "10000-01-01 00:00:00+00",
                   "0001-01-01 00:00:00+01", "9999-12-31 23:59:59.999999-01"]
# ... and text it never sends.
ODD_TS = SENDABLE_ODD_TS + ["2026-13-01 00:00:00+00", "2026-02-30 00:00:00+00", "2026-01-01T00:00:00+00",
                            "2026-01-01 00:00:00", "2026-01-01 00:00:00.1234567+00"]


def _row(rng: random.Random, i: int) -> list:
    ts = rng.choice(SENDABLE_ODD_TS) if rng.random() < 0.05 else _ts_text(rng)
    cid = None if rng.random() < 0.1 else f"00000000-0000-0000-0000-{rng.randrange(50):012d}"
    duration = rng.choice([None, "0", "-5", str(rng.randrange(1, 10**7)), "2147483647", "-2147483648"])
    device = rng.choice([None, "", "ios", "web-safari", "üñíçødé ✓", "emoji 🎉"])
    payload = rng.choice([None, "{}", '{"a": 1, "b": "é"}', '{"k": "' + "x" * rng.randrange(0, 5000) + '"}'])
    ident = str(rng.choice([i, -i, 2**63 - 1, -2**63]))
    return [ident, cid, "11111111-2222-3333-4444-555555555555", rng.choice(["play", "click", None]), ts,
            rng.choice([None, "1.50"]), duration, device, payload]


def _python_row(decoder: pg.PgOutputDecoder, payload: bytes) -> dict:
    rec = decoder.decode(payload)
    assert type(rec) is pg.Insert
    row = rec.relation.as_dict(rec.new)
    return {k: row[k] for k in WANTED}


@pytest.mark.parametrize("seed", range(5))
def test_runs_match_the_python_decoder_and_keep_the_stream_order(seed: int) -> None:
    rng = random.Random(seed)
    layout = _layout()
    payloads: list[bytes] = [REL]
    for t in range(20):
        payloads.append(enc_begin(1000 + t, datetime(2026, 1, 1, tzinfo=timezone.utc), 500 + t))
        payloads += [enc_insert(OID, _row(rng, t * 1000 + i)) for i in range(rng.randrange(0, 60))]
        payloads.append(enc_commit(1000 + t, 1001 + t, datetime(2026, 1, 1, tzinfo=timezone.utc)))
    items = wire.decode_payloads(payloads, layout.oid, layout.kinds, run_max=25)

    decoder = pg.PgOutputDecoder(2)
    flattened: list[bytes] = []
    decoded = raw = 0
    for item in items:
        if type(item) is bytes:
            flattened.append(item)
            decoder.decode(item)
            raw += item[0] == ord("I")
            continue
        expected = [_python_row(decoder, p) for p in native.run_payloads(item)]
        got = raw_rows(native.run_table(item, layout.columns, layout.kinds))
        for want in expected:
            if want["event_ts"] is not None:
                want["event_ts"] = want["event_ts"].astimezone(timezone.utc)
        assert got == expected
        assert len(expected) <= 25
        flattened += native.run_payloads(item)
        decoded += item[0]
    assert flattened == payloads
    assert decoded > 0 and raw > 0  # both paths were taken


def test_values_it_does_not_accept_go_to_python_untouched() -> None:
    layout = _layout()
    good = ["1", None, None, "play", "2026-01-01 00:00:00+00", None, "5", "ios", "{}"]
    odd = []
    for ts in ODD_TS:
        odd.append(good[:4] + [ts] + good[5:])
    odd.append(["9223372036854775808"] + good[1:])  # does not fit an int64
    odd.append(good[:6] + ["12a"] + good[7:])
    bad_utf8 = enc_insert(OID, good).replace(b"ios", b"i\xffs")
    binary = enc_insert(OID, good[:7] + [b"ios"] + good[8:])
    short = b"I" + OID.to_bytes(4, "big") + b"N" + enc_tuple(good[:-1])
    payloads = [enc_insert(OID, v) for v in odd] + [bad_utf8, binary, short]
    items = wire.decode_payloads(payloads, layout.oid, layout.kinds)
    assert items == payloads


def test_inside_a_stream_and_for_other_relations_nothing_is_decoded() -> None:
    layout = _layout()
    good = ["1", None, None, "play", "2026-01-01 00:00:00+00", None, "5", "ios", "{}"]
    other = enc_insert(OID + 1, good)
    streamed = b"I" + (77).to_bytes(4, "big") + enc_insert(OID, good)[1:]
    payloads = [other, enc_stream_start(77, True), streamed, enc_stream_stop(), enc_insert(OID, good)]
    items = wire.decode_payloads(payloads, layout.oid, layout.kinds)
    assert items[:4] == payloads[:4]
    assert type(items[4]) is tuple and items[4][0] == 1


def test_timestamps_parse_like_python() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        text = _ts_text(rng)
        us = wire.parse_timestamptz(text.encode())
        want = datetime.fromisoformat(text).astimezone(timezone.utc)
        assert us is not None, text
        assert datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us) == want
    for text in ODD_TS:
        assert wire.parse_timestamptz(text.encode()) is None, text


def test_layout_needs_every_expected_column_with_its_type() -> None:
    layout = native.FastLayout("public", 2)
    assert layout.observe(REL) and layout.kinds == b"issstxiss"
    retyped = [c if c[1] != "event_ts" else (0, "event_ts", 1114, -1) for c in COLUMNS]  # timestamp
    assert layout.observe(enc_relation(OID, "public", "engagement_events", "d", retyped))
    assert layout.oid == 0
    assert not native.FastLayout("public", 2).observe(enc_relation(OID, "other", "engagement_events", "d", COLUMNS))
    missing = [c for c in COLUMNS if c[1] != "device"]
    fresh = native.FastLayout("public", 2)
    assert not fresh.observe(enc_relation(OID, "public", "engagement_events", "d", missing))
    assert fresh.oid == 0


def _copy_binary(rows: list[list[bytes | None]]) -> bytes:
    out = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    for row in rows:
        out += len(row).to_bytes(2, "big")
        for v in row:
            out += b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v
    return out + b"\xff\xff"


def test_binary_copy_parse_and_its_errors() -> None:
    import uuid

    u = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    pg_2000 = (0).to_bytes(8, "big", signed=True)  # 2000-01-01 00:00:00 UTC
    row = [(7).to_bytes(8, "big"), u.bytes, None, b"play", pg_2000, (-5).to_bytes(4, "big", signed=True), "é".encode(),
           b"\x01{}"]
    n, cols = wire.parse_copy_binary(_copy_binary([row, row]), b"iuustisj")
    assert n == 2
    assert cols[1][2] == str(u).encode() * 2
    assert int.from_bytes(cols[4][1][:8], "little", signed=True) == 946684800000000
    assert int.from_bytes(cols[5][1][:8], "little", signed=True) == -5
    assert cols[7][2] == b"{}{}"
    infinity = row[:4] + [(2**63 - 1).to_bytes(8, "big")] + row[5:]
    _, cols = wire.parse_copy_binary(_copy_binary([infinity]), b"iuustisj")
    assert cols[4][0] == b"\x00" and cols[4][2] == b"\x01"  # NULL, flagged
    bad = {
        "not a binary COPY": b"COPY" + bytes(20),
        "field count": _copy_binary([row[:7]]),
        "truncated": _copy_binary([row])[:-10],
        "uuid": _copy_binary([row[:1] + [b"short"] + row[2:]]),
        "jsonb version": _copy_binary([row[:7] + [b"\x02{}"]]),
        "UTF-8": _copy_binary([row[:6] + [b"\xff"] + row[7:]]),
    }
    for what, data in bad.items():
        with pytest.raises(ValueError):
            wire.parse_copy_binary(data, b"iuustisj")


# -- Reader.read's loop, on a fake libpq --------------------------------------------------------------
#
# `bind_libpq` takes the addresses of PQgetCopyData & co: a child process binds
# ctypes stand-ins that hand out canned CopyData messages and record every
# PQfreemem, so the read loop runs without a server (and under `make
# sanitize`). A child: the binding is global to the process.

_FAKE_LIBPQ = r'''
import ctypes, json, os, pickle, resource, sys

from pulse.source import _wire

messages, oid, kinds, limit_mb = pickle.load(open(sys.argv[1], "rb"))
arena = ctypes.create_string_buffer(sum(len(m) for m in messages) or 1)
spans, off = [], 0
for m in messages:
    ctypes.memmove(ctypes.addressof(arena) + off, m, len(m))
    spans.append((ctypes.addressof(arena) + off, len(m)))
    off += len(m)
handed, freed = [], []

@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int)
def getcopydata(conn, buffer, is_async):
    if len(handed) == len(spans):
        return -1  # the copy is done
    ptr, n = spans[len(handed)]
    handed.append(ptr)
    buffer[0] = ptr
    return n

@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
def consumeinput(conn):
    return 1

@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
def socket(conn):
    return -1

@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def freemem(ptr):
    freed.append(ptr)  # the arena is Python's: recorded, not freed

_wire.bind_libpq(*(ctypes.cast(f, ctypes.c_void_p).value for f in (getcopydata, consumeinput, socket, freemem)))
reader = _wire.Reader(1)
reader.set_fast(oid, kinds)
if limit_mb and "libasan" not in os.environ.get("LD_PRELOAD", ""):  # (ASAN: allocator_may_return_null instead)
    vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:")))
    resource.setrlimit(resource.RLIMIT_AS, ((vm >> 10) + limit_mb << 20,) * 2)
out = {}
try:
    items, flags = reader.read(0, 1000, 1 << 40)
    out["items"] = [it.hex() if type(it) is bytes else [it[0], it[1].hex()] for it in items]
    out["flags"] = flags
except MemoryError:
    out["error"] = "MemoryError"
out.update(handed=len(handed), freed=len(freed), distinct_freed=len(set(freed)), unfreed=len(set(handed) - set(freed)),
           wal_end=reader.wal_end)
print(json.dumps(out))
'''


def _run_fake_reader(tmp_path, messages: list[bytes], kinds: bytes, limit_mb: int = 0) -> dict:
    import json
    import pickle
    import subprocess
    import sys

    data = tmp_path / "messages.pickle"
    data.write_bytes(pickle.dumps((messages, OID, kinds, limit_mb)))
    env = dict(os.environ)
    if limit_mb:  # under ASAN (make sanitize): one allocation of more than 2 * limit_mb returns NULL instead
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "")
                               + f":allocator_may_return_null=1:max_allocation_size_mb={2 * limit_mb}")
    proc = subprocess.run([sys.executable, "-c", _FAKE_LIBPQ, str(data)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _xlog(payload: bytes, end: int) -> bytes:
    return b"w" + (end - 1).to_bytes(8, "big") + end.to_bytes(8, "big") + bytes(8) + payload


def test_the_read_loop_keeps_order_and_frees_each_libpq_buffer_once(tmp_path) -> None:
    good = ["1", None, None, "play", "2026-01-01 00:00:00+00", None, "5", "ios", "{}"]
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    begin, commit = enc_begin(900, when, 7), enc_commit(800, 900, when)
    inserts = [enc_insert(OID, [str(i)] + good[1:]) for i in range(3)]
    odd = enc_insert(OID, good[:4] + ["infinity"] + good[5:])  # closes the run, goes on raw
    keepalive = b"k" + (1000).to_bytes(8, "big") + bytes(8) + b"\x01"
    payloads = [begin, *inserts, odd, inserts[0], commit]
    out = _run_fake_reader(tmp_path, [_xlog(p, 100 + i) for i, p in enumerate(payloads)] + [keepalive], b"issstxiss")
    assert out["items"] == [begin.hex(), [3, b"".join(inserts).hex()], odd.hex(), [1, inserts[0].hex()], commit.hex()]
    assert out["flags"] == 1  # FLAG_REPLY: the keepalive asked for an answer
    assert out["wal_end"] == 1000
    assert out["handed"] == out["freed"] == out["distinct_freed"] == len(payloads) + 1 and out["unfreed"] == 0


def test_an_allocation_that_fails_mid_read_frees_each_libpq_buffer_once(tmp_path) -> None:
    good = ["1", None, None, "play", "2026-01-01 00:00:00+00", None, "5", "ios"]
    big = enc_insert(OID, good + ["x" * (64 << 20)])  # the run's copy of it (128 MiB) cannot be allocated
    begin = enc_begin(900, datetime(2026, 1, 1, tzinfo=timezone.utc), 7)
    out = _run_fake_reader(tmp_path, [_xlog(begin, 100), _xlog(big, 101)], b"issstxiss", limit_mb=48)
    assert out["error"] == "MemoryError"
    assert out["handed"] == 2
    assert out["freed"] == out["distinct_freed"] == 2 and out["unfreed"] == 0  # before the fix: freed twice
