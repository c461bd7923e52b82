"""Mutation fuzz of the two decoders: the C one (`_wire`) against a Python reference.

Bounded and seeded (fixed seeds, a few thousand cases, a few seconds), so a
failure repeats: the assertion message carries the seed, the case number and
the mutated input.

- pgoutput Insert payloads: `_wire.decode_payloads` against
  `pgoutput.PgOutputDecoder`. The C decoder never rejects: it either takes
  an Insert into a run or hands the payload on untouched to the Python
  decoder. So for every mutated payload: when C took it, Python must decode
  the same row, value for value; when Python rejects it, C must have handed
  it on; Python raises nothing but `PgOutputError`, and what it decodes
  enriches without an exception (no `OverflowError` on a timestamp).
- binary COPY streams (the backfill's chunks): `_wire.parse_copy_binary`
  against `_reference_copy` below, written from PostgreSQL's documentation
  of the format ("COPY", binary format) and the kinds `_wire` documents.
  Both accept with the same values, or both raise `ValueError`.

`make sanitize` runs this file under ASAN and UBSan.
"""

from __future__ import annotations

import random
import struct
import uuid
from datetime import datetime, timezone

import pytest

from pulse.source import native
from pulse.source import pgoutput as pg
from pulse.transform.columnar import raw_rows
from pulse.transform.content_cache import ContentCache
from pulse.transform.enrich import enrich_row
from pulse.model import Position
from tests.conftest import need
from tests.unit.source.test_native import COLUMNS, OID, REL, WANTED, _row, _ts_text
from tests.unit.source.test_pgoutput import enc_insert


@pytest.fixture(scope="module")
def wire():
    need(native.available(), "pulse.source._wire was not built: a C compiler is needed (see setup.py)")
    return native.load()


# -- mutations ------------------------------------------------------------------------------------------

INTERESTING_BYTES = b"\x00\x01\x7f\x80\xff-+:. 09TZBnut"
EDGE_TS = ["infinity", "-infinity", "0001-01-01 00:00:00+00", "0001-01-01 00:00:00+01", "0001-01-01 00:00:00-01",
           "4713-01-01 00:00:00+00 BC", "9999-12-31 23:59:59+00", "9999-12-31 23:59:59.999999+00",
           "9999-12-31 23:59:59-01", "9999-12-31 23:59:59+14", "10000-01-01 00:00:00+00", "294276-12-31 23:59:59+00",
           "2026-02-29 00:00:00+00", "2024-02-29 00:00:00+00", "2026-01-01 24:00:00+00", "2026-01-01 00:00:60+00",
           "2026-01-01 00:00:00+15:59:59", "2026-01-01 00:00:00+16", "2026-01-01 00:00:00.+00", "2026-01-01 00:00:00+0",
           "2026-01-01 00:00:00+00:", "2026-01-01 00:00:00+00:00:00", "0000-01-01 00:00:00+00", ""]
EDGE_INT = ["0", "-0", "9223372036854775807", "-9223372036854775808", "9223372036854775808", "-", "+1", " 1", "1e3",
            "00000000000000000000001", "-9223372036854775809", "١٢"]
EDGE_TEXT = ["", "\x00", "é", "\ud7ff", "\U0010ffff", "a" * 300]


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip bits
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # an interesting byte
            b[min(pos, len(b) - 1)] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # delete a slice
            del b[pos:pos + rng.randrange(1, 9)]
        elif op == 3:  # insert bytes
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
        elif op == 4:  # truncate
            del b[pos:]
        elif op == 5 and len(b) >= 4:  # a 32-bit length field, wrong
            at = rng.randrange(len(b) - 3)
            value = rng.choice([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE,
                                int.from_bytes(b[at:at + 4], "big") + rng.choice([-1, 1, 4096])]) & 0xFFFFFFFF
            b[at:at + 4] = value.to_bytes(4, "big")
        elif op == 6 and len(b) >= 2:  # a 16-bit count, wrong
            at = rng.randrange(len(b) - 1)
            b[at:at + 2] = (rng.choice([0, 1, 0x7FFF, 0x8000, 0xFFFF]) & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


# -- pgoutput Inserts ---------------------------------------------------------------------------------

_KINDS = b"issstxiss"
_COL_OF = {name: i for i, (_f, name, _t, _m) in enumerate(COLUMNS)}


def _odd_row(rng: random.Random, i: int) -> list:
    row = _row(rng, i)
    for _ in range(rng.randrange(1, 3)):
        name = rng.choice(["id", "event_ts", "duration_ms", "device", "event_ts", "event_ts"])
        j = _COL_OF[name]
        if name == "event_ts":
            row[j] = rng.choice(EDGE_TS) if rng.random() < 0.6 else _mutate_text(rng, _ts_text(rng))
        elif name in ("id", "duration_ms"):
            row[j] = rng.choice(EDGE_INT)
        else:
            row[j] = rng.choice(EDGE_TEXT)
    return row


def _mutate_text(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randrange(1, 3)):
        at = rng.randrange(len(chars))
        chars[at] = rng.choice("0123456789-+:. TBC")
    return "".join(chars)


def _python(payload: bytes):
    """The reference decoder's record, or None when it rejects the payload.

    The column Pulse does not read (`extra`, numeric) is kept as bytes: `_wire`
    checks only the framing of a column it skips, so a malformed numeric
    there is the Python decoder's business alone.
    """
    decoder = pg.PgOutputDecoder(2, converters={1700: bytes})
    decoder.decode(REL)
    try:
        rec = decoder.decode(payload)
    except pg.PgOutputError:
        return None
    return rec


_NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(3))
def test_mutated_inserts_decode_alike_or_go_to_python(wire, seed: int) -> None:
    rng = random.Random(1000 + seed)
    layout = native.FastLayout("public", 2)
    layout.observe(REL)
    assert layout.kinds == _KINDS
    taken = deferred = rejected = 0
    for case in range(1200):
        base = enc_insert(OID, _odd_row(rng, case) if rng.random() < 0.5 else _row(rng, case))
        payload = _mutate_bytes(rng, base) if rng.random() < 0.7 else base
        where = f"seed {seed} case {case}: {payload!r}"
        items = wire.decode_payloads([payload], layout.oid, layout.kinds)
        assert len(items) == 1, where
        rec = _python(payload)
        if rec is None:
            rejected += 1
        elif type(rec) is pg.Insert:
            row = rec.relation.as_dict(rec.new)  # what the pipeline does with it: it must not raise
            if rec.relation.oid == OID:
                enrich_row(row, op="insert", position=Position(1, 0), commit_ts=_NOW, cache=ContentCache(), now=_NOW)
        if type(items[0]) is bytes:
            assert items[0] == payload, where  # handed on untouched
            deferred += 1
            continue
        taken += 1
        assert rec is not None and type(rec) is pg.Insert and rec.relation.oid == OID, where
        want = {k: row[k] for k in WANTED}
        if isinstance(want["event_ts"], datetime):
            want["event_ts"] = want["event_ts"].astimezone(timezone.utc)
        else:
            assert want["event_ts"] is None, where  # C took a timestamp Python cannot hold
        n, raw, _offsets, _cols = items[0]
        assert n == 1 and raw == payload, where
        assert raw_rows(native.run_table(items[0], layout.columns, layout.kinds)) == [want], where
    assert taken > 100 and deferred > 100 and rejected > 100, (taken, deferred, rejected)


# -- binary COPY ---------------------------------------------------------------------------------------

_COPY_KINDS = "iuustisj"
_SIG = b"PGCOPY\n\xff\r\n\x00"
_TS_MIN = -62135596800000000  # 0001-01-01 UTC, microseconds since 1970
_TS_END = 253402300800000000  # 10000-01-01 UTC
_PG_EPOCH = 946684800000000  # 2000-01-01 UTC


class Rejected(Exception):
    pass


def _reference_copy(data: bytes, kinds: str) -> tuple[int, list[list], list[list[bool]]]:
    """(rows, values per column, bad-timestamp flags per column), or Rejected.

    The format: an 11-byte signature, a 32-bit flags field, a 32-bit header
    extension length and that many bytes; then tuples: a 16-bit field count
    (-1 ends the data), and per field a 32-bit length (-1: NULL) and the
    value in the type's binary send format, all big-endian.
    """
    values: list[list] = [[] for _ in kinds]
    bad: list[list[bool]] = [[] for _ in kinds]
    if not data:
        return 0, values, bad
    if len(data) < 19 or data[:11] != _SIG:
        raise Rejected("signature")
    (ext,) = struct.unpack_from(">I", data, 15)
    pos = 19 + ext
    if pos > len(data):
        raise Rejected("header extension")
    n = 0
    while True:
        if pos + 2 > len(data):
            raise Rejected("no trailer")
        (count,) = struct.unpack_from(">h", data, pos)
        pos += 2
        if count == -1:
            return n, values, bad
        if count != len(kinds):
            raise Rejected("field count")
        for j, kind in enumerate(kinds):
            if pos + 4 > len(data):
                raise Rejected("field length")
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4
            flag = False
            if size == -1:
                value = None
            else:
                if size < 0 or pos + size > len(data):
                    raise Rejected("value length")
                raw = data[pos:pos + size]
                pos += size
                if kind == "i":
                    if size not in (2, 4, 8):
                        raise Rejected("integer size")
                    value = int.from_bytes(raw, "big", signed=True)
                elif kind == "t":
                    if size != 8:
                        raise Rejected("timestamp size")
                    us = int.from_bytes(raw, "big", signed=True) + _PG_EPOCH
                    flag = not _TS_MIN <= us < _TS_END  # +-infinity are int64 max / min: outside too
                    value = None if flag else us
                elif kind == "u":
                    if size != 16:
                        raise Rejected("uuid size")
                    value = str(uuid.UUID(bytes=raw))
                else:
                    if kind == "j":
                        if size < 1 or raw[0] != 1:
                            raise Rejected("jsonb version")
                        raw = raw[1:]
                    try:
                        value = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise Rejected("utf-8") from None
            values[j].append(value)
            bad[j].append(flag)
        n += 1


def _copy_value(rng: random.Random, kind: str) -> bytes | None:
    if rng.random() < 0.1:
        return None
    if kind == "i":
        size = rng.choice([2, 4, 8])
        return rng.randrange(-(1 << (8 * size - 1)), 1 << (8 * size - 1)).to_bytes(size, "big", signed=True)
    if kind == "u":
        return rng.randbytes(16)
    if kind == "t":
        us = rng.choice([rng.randrange(-10**16, 10**16), (1 << 63) - 1, -(1 << 63), _TS_MIN - _PG_EPOCH,
                         _TS_MIN - _PG_EPOCH - 1, _TS_END - _PG_EPOCH - 1, _TS_END - _PG_EPOCH])
        return us.to_bytes(8, "big", signed=True)
    text = rng.choice(["", "play", "é✓🎉", '{"k": 1}', "x" * rng.randrange(100)]).encode()
    return b"\x01" + text if kind == "j" else text


def _copy_stream(rng: random.Random, rows: int) -> bytes:
    ext = rng.randbytes(rng.choice([0, 0, 3]))
    out = bytearray(_SIG + bytes(4) + len(ext).to_bytes(4, "big") + ext)
    for _ in range(rows):
        out += len(_COPY_KINDS).to_bytes(2, "big")
        for kind in _COPY_KINDS:
            v = _copy_value(rng, kind)
            out += b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v
    return bytes(out + b"\xff\xff")


def _bits(buf: bytes, n: int) -> list[bool]:
    return [bool(buf[i >> 3] >> (i & 7) & 1) for i in range(n)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(3))
def test_mutated_binary_copy_parses_alike_or_both_reject(wire, seed: int) -> None:
    rng = random.Random(2000 + seed)
    accepted = rejected = 0
    for case in range(800):
        base = _copy_stream(rng, rng.randrange(0, 6))
        data = _mutate_bytes(rng, base) if rng.random() < 0.8 else base
        where = f"seed {seed} case {case}: {data!r}"
        try:
            want = _reference_copy(data, _COPY_KINDS)
        except Rejected:
            want = None
        try:
            n, cols = wire.parse_copy_binary(data, _COPY_KINDS.encode())
        except ValueError:
            assert want is None, where
            rejected += 1
            continue
        assert want is not None, where
        accepted += 1
        assert n == want[0], where
        got = [a.to_pylist() for a in native.arrays(n, _COPY_KINDS, cols)]
        assert got == want[1], where
        t = _COPY_KINDS.index("t")
        assert _bits(cols[t][2], n) == want[2][t], where
    assert accepted > 100 and rejected > 100, (accepted, rejected)
