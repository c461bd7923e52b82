"""The external sink's columnar encoder: a chunk's CloudEvent texts built from its Arrow columns.

A live run or a backfill chunk reaches the external sink as the enriched
table of `transform.columnar.enrich_table` (`model_arrow.ENRICHED_SCHEMA`,
inserts only). `encode_table` turns it into what `encode_event` makes of
each event, byte for byte (the same event may be encoded by either path
after a restart, and the receiver must see one body under one CloudEvent
id), with Arrow compute kernels and numpy instead of a Python object per
event:

- JSON strings: `"` and `\\` escaped with `replace_substring`, nulls as `null`;
- timestamps: Python's `isoformat()` of an aware UTC datetime, digits put in
  a byte matrix (no fraction when the microsecond is 0, as Python omits it);
- `engagement_seconds` / `engagement_pct`: recomputed from the integers as
  `enrich.engagement` does (`duration_ms / 1000`, hundredths / 100) and
  written as their exact decimals, which are the floats' shortest repr (what
  orjson prints) while they have at most 15 significant digits;
- the insert id's digest (`external.outbox._state_digest`): the payload
  canonicalised as orjson re-serialises it (members sorted by key, compact)
  by splitting and sorting columns, then SHA-256 of every row in one call
  to the C extension with the GIL released (`_wire.sha256_many`; hashlib row
  by row without the extension);
- the lane key: `external.outbox.lane_key` of each distinct content id, taken per row.

Rows whose exact text the kernels cannot promise take the per-event encoder
(`encode_event`, on an `EnrichedEvent` rebuilt from the row), so the output
is right first and fast on the common rows. `fallback_mask` says which:
a control character in a string (orjson's `\\n` / `\\u00XX` escapes), a
payload that is not a flat JSON object of strings, integers, booleans and
nulls in PostgreSQL's jsonb text form (or names a key twice), a duration
of 10^15 ms or more (float reprs with 16+ digits), an op other than
insert, a timestamp outside years 1..9999.

The table keeps instants, not offsets: `commit_ts` and `processed_ts` are
written as the per-event path writes aware UTC datetimes (`+00:00`), which
is what the decoder (pgoutput) and the runtime clock (`utcnow`) make.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pulse.arrays import string_bytes
from pulse.model import EnrichedEvent, Position
from pulse.sinks.external.local import Encoded
from pulse.sinks.external.outbox import TYPE_PREFIX, lane_key
from pulse.source import native
from pulse.transform.enrich import engagement

_L = pa.large_string()
_DAY_US = 86_400_000_000
_TS_MIN_US, _TS_END_US = -62135596800000000, 253402300800000000  # 0001-01-01, 10000-01-01 UTC
_FLOAT_MAX = 10**15  # integers below this as /1000 or /100 have <= 15 significant digits: repr is exact
# A flat JSON object as PostgreSQL's jsonb prints it: keys and string values without escapes (no `"`
# inside, so `, "` only separates members and `": ` only ends a key), integers orjson keeps as they are.
_STR = r'"[^"\\\x00-\x1f]*"'
_MEMBER = _STR + r": (?:" + _STR + r"|0|-?[1-9][0-9]{0,17}|true|false|null)"
_FLAT_OBJECT = r"^\{" + _MEMBER + r"(?:, " + _MEMBER + r")*\}$"
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_STRINGS = ("content_id", "user_id", "event_type", "device", "raw_payload", "content_slug", "content_title",
            "content_type")


class EncodedColumns(NamedTuple):
    """`Encoded` for a run of rows, one array per field (what `build_frame_columns` takes)."""

    lsn: np.ndarray  # int64
    seq: np.ndarray  # int64
    event_id: np.ndarray  # int64
    lane_key: np.ndarray  # int64
    content_id: pa.Array  # large_string, null for None
    ce_id: pa.Array  # large_string
    part_sep: pa.Array  # large_string: the structured CloudEvent JSON followed by "," (a frame joins them so)
    attrs_len: np.ndarray  # int64, len() of the attrs text in characters, as `len(OutboxRow.attrs)`

    def __len__(self) -> int:
        return len(self.lsn)

    def slice(self, i: int, j: int) -> "EncodedColumns":
        return EncodedColumns(self.lsn[i:j], self.seq[i:j], self.event_id[i:j], self.lane_key[i:j],
                              self.content_id.slice(i, j - i), self.ce_id.slice(i, j - i),
                              self.part_sep.slice(i, j - i), self.attrs_len[i:j])

    def position(self, k: int) -> Position:
        return Position(int(self.lsn[k]), int(self.seq[k]))

    def parts(self) -> list[bytes]:
        """Each row's CloudEvent text (what `Encoded.part` holds)."""
        return [p[:-1].encode() for p in self.part_sep.to_pylist()]

    def events(self) -> list[Encoded]:
        """Row by row (the rare paths: an overflowing outbox's dead letters)."""
        return [Encoded(int(a), int(b), int(c), int(d), e, f, g, int(h)) for a, b, c, d, e, f, g, h in zip(
            self.lsn, self.seq, self.event_id, self.lane_key, self.content_id.to_pylist(), self.ce_id.to_pylist(),
            self.parts(), self.attrs_len)]


# -- small kernels -----------------------------------------------------------------


def _arr(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _join(*pieces: object) -> pa.Array:
    """Element-wise concatenation; str pieces are literals, arrays must hold no nulls.

    In the C extension (`_wire.join_rows`: each row's bytes copied once, the
    GIL released), else, or when an array holds nulls, Arrow's
    `binary_join_element_wise` (a third of the encoder's time in a profile).
    """
    wire = native.module()
    arrays = [p for p in pieces if not isinstance(p, str)]
    if (wire is not None and hasattr(wire, "join_rows") and arrays
            and all(isinstance(a, pa.Array) and a.null_count == 0 for a in arrays)):
        n = len(arrays[0])
        parts = [p.encode() if isinstance(p, str) else string_bytes(p if p.type == _L else p.cast(_L))
                 for p in pieces]
        data, offsets = wire.join_rows(parts, n)
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    args = [pa.scalar(p, _L) if isinstance(p, str) else p for p in pieces]
    return pc.binary_join_element_wise(*args, pa.scalar("", _L))


def _valid(col: pa.Array) -> np.ndarray:
    return col.is_valid().to_numpy(zero_copy_only=False)


def _ints(col: pa.Array) -> np.ndarray:
    return pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _rows_with(col: pa.Array, hit) -> np.ndarray:
    """Rows of a string column holding a byte for which `hit(bytes)` is True (UTF-8: bytes < 0x80 are ASCII)."""
    data, offsets = string_bytes(col)
    rows = np.zeros(len(col), bool)
    at = np.flatnonzero(hit(data))
    if len(at):
        rows[np.searchsorted(offsets, at, side="right") - 1] = True
    return rows & _valid(col)


def _json_string(col: pa.Array) -> pa.Array:
    """orjson's text of each value (no control characters: `fallback_mask` sent those rows away)."""
    text = col.cast(_L)
    data, _ = string_bytes(text)
    if ((data == 0x5C) | (data == 0x22)).any():  # a backslash or a quote somewhere: escape them
        text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
    return pc.fill_null(_join('"', text, '"'), "null")


def _lengths(col: pa.Array) -> np.ndarray:
    return pc.binary_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def _json_int(col: pa.Array) -> pa.Array:
    return pc.fill_null(col.cast(pa.int64()).cast(_L), "null")


def _from_bytes_matrix(matrix: np.ndarray, keep: np.ndarray | None = None) -> pa.Array:
    """Rows of a uint8 matrix as strings (`keep`: which bytes of each row to keep)."""
    n, width = matrix.shape
    if keep is None:
        data = matrix.tobytes()
        offsets = np.arange(n + 1, dtype=np.int64) * width
    else:
        data = matrix[keep].tobytes()
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def _digits(matrix: np.ndarray, col: int, value: np.ndarray, width: int) -> None:
    for k in range(width):
        matrix[:, col + width - 1 - k] = 48 + (value // 10**k) % 10


def _iso(us: np.ndarray) -> pa.Array:
    """`datetime.isoformat()` of aware UTC datetimes at `us` microseconds since the epoch (years 1..9999)."""
    n = len(us)
    days, rem = np.divmod(us, _DAY_US)
    # days -> civil date (H. Hinnant's algorithm; floor divisions keep it right before 1970)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    secs, micro = np.divmod(rem, 1_000_000)
    m = np.empty((n, 32), np.uint8)
    m[:] = np.frombuffer(b"0000-00-00T00:00:00.000000+00:00", np.uint8)
    _digits(m, 0, year, 4)
    _digits(m, 5, month, 2)
    _digits(m, 8, day, 2)
    _digits(m, 11, secs // 3600, 2)
    _digits(m, 14, secs // 60 % 60, 2)
    _digits(m, 17, secs % 60, 2)
    _digits(m, 20, micro, 6)
    keep = np.ones((n, 32), bool)
    keep[micro == 0, 19:26] = False  # Python prints no fraction for a whole second
    return _from_bytes_matrix(m, keep)


def _json_ts(col: pa.Array, us: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(the quoted ISO text or null, the bare ISO text or "") of a timestamp[us, UTC] column (`us`: its values)."""
    iso = _iso(us)
    valid = col.is_valid()
    return pc.if_else(valid, _join('"', iso, '"'), pa.scalar("null", _L)), iso


def _fractions(digits: int) -> pa.Array:
    return pa.array([f"{r:0{digits}d}".rstrip("0") or "0" for r in range(10**digits)], _L)


_FRAC3 = _fractions(3)
_FRAC2 = _fractions(2)


def _json_decimal(value: np.ndarray, valid: np.ndarray, fractions: pa.Array) -> pa.Array:
    """value / 10**digits as orjson prints the float (exact decimal, at least one fraction digit)."""
    scale = len(fractions)
    whole, frac = np.divmod(value, scale)
    text = _join(pa.array(whole).cast(_L), ".", pc.take(fractions, pa.array(frac)))
    return pc.if_else(pa.array(valid), text, pa.scalar("null", _L))


def _lane_keys(cid: pa.Array) -> np.ndarray:
    """`external.outbox.lane_key` of each row, computed once per distinct content id and taken per row."""
    coded = pc.dictionary_encode(cid)
    keys = np.array([lane_key(v) for v in coded.dictionary.to_pylist()] + [lane_key(None)], np.int64)
    idx = pc.fill_null(coded.indices, len(coded.dictionary)).to_numpy(zero_copy_only=False)
    return keys[idx]


def _canonical_payloads(raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Flat jsonb objects as `orjson.dumps(orjson.loads(text), option=OPT_SORT_KEYS)` prints them.

    Every value must match `_FLAT_OBJECT`. Members are split on `, "`, their
    keys sorted per row (bytewise, as orjson sorts), joined compactly. Also
    returns the rows that name a key twice (orjson keeps the last value: their
    text would differ; jsonb never has them, json text could).
    """
    inner = pc.utf8_slice_codeunits(raw.cast(_L), 1, -1)  # without { }
    tokens = pc.split_pattern(_join(", ", inner), ', "')  # '', 'key": value', ...
    flat = pc.list_flatten(tokens)
    keep = pc.not_equal(pc.binary_length(flat), 0)  # the empty token before the first member
    flat, parent = flat.filter(keep), pc.list_parent_indices(tokens).filter(keep)
    pair = pc.split_pattern(flat, '": ', max_splits=1)
    key, value = pc.list_element(pair, 0), pc.list_element(pair, 1)
    order = pc.sort_indices(pa.table({"p": parent, "k": key}), sort_keys=[("p", "ascending"), ("k", "ascending")])
    members = pc.take(_join('"', key, '":', value), order)
    counts = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64) - 1
    offsets = np.zeros(len(raw) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    rows = pa.LargeListArray.from_arrays(pa.array(offsets), members)
    sorted_keys = pc.take(key, order)
    sorted_parent = pc.take(parent, order).to_numpy(zero_copy_only=False)
    same = pc.equal(sorted_keys.slice(1), sorted_keys.slice(0, max(len(key) - 1, 0))).to_numpy(zero_copy_only=False)
    twice = np.zeros(len(raw), bool)
    twice[sorted_parent[1:][same & (sorted_parent[1:] == sorted_parent[:-1])]] = True
    return _join("{", pc.binary_join(rows, pa.scalar(",", _L)), "}"), twice


def _sha256_rows(states: pa.Array) -> bytes:
    """The 32-byte SHA-256 of each row, end to end: in C without the GIL, else hashlib row by row."""
    data, offsets = string_bytes(states)
    wire = native.module()
    if wire is not None and hasattr(wire, "sha256_many"):
        return wire.sha256_many(data, np.ascontiguousarray(offsets))
    sha = hashlib.sha256
    bounds = offsets.tolist()
    return b"".join([sha(data[a:b]).digest() for a, b in zip(bounds, bounds[1:])])


def _digests(states: pa.Array) -> pa.Array:
    """sha256(state).hexdigest()[:20] of each row, as a string column."""
    d = np.frombuffer(_sha256_rows(states), np.uint8).reshape(-1, 32)[:, :10]
    m = np.empty((len(states), 20), np.uint8)
    m[:, 0::2] = _HEX[d >> 4]
    m[:, 1::2] = _HEX[d & 15]
    return _from_bytes_matrix(m)


# -- the encoder --------------------------------------------------------------------


_TIMES = ("event_ts", "commit_ts", "processed_ts")


class _Plan(NamedTuple):
    bad: np.ndarray  # rows that take the per-event encoder
    canon: pa.Array  # each row's canonical payload text, or "null"
    micros: dict[str, np.ndarray]  # each timestamp column as int64 microseconds (0 where null)

    def take(self, rows: np.ndarray) -> "_Plan":
        return _Plan(self.bad[rows], pc.take(self.canon, pa.array(rows)), {k: v[rows] for k, v in self.micros.items()})


def _plan(table: pa.Table) -> _Plan:
    """Which rows take the per-event encoder, the others' canonical payloads, the times as integers (once)."""
    n = table.num_rows
    bad = np.zeros(n, bool)
    canon = pa.repeat(pa.scalar("null", _L), n)
    micros = {name: _ints(_arr(table.column(name)).cast(pa.int64())) for name in _TIMES}
    if n == 0:
        return _Plan(bad, canon, micros)
    for name in _STRINGS:  # a control character: orjson writes \n, \u001f, ...
        bad |= _rows_with(_arr(table.column(name)).cast(_L), lambda b: b < 0x20)
    duration = _arr(table.column("duration_ms"))
    bad |= _valid(duration) & (_ints(duration) >= _FLOAT_MAX)
    bad |= ~pc.fill_null(pc.equal(_arr(table.column("op")), "insert"), False).to_numpy(zero_copy_only=False)
    for name in _TIMES:
        us = micros[name]
        bad |= _valid(_arr(table.column(name))) & ((us < _TS_MIN_US) | (us >= _TS_END_US))
    raw = _arr(table.column("raw_payload"))
    flat = pc.fill_null(pc.match_substring_regex(raw, _FLAT_OBJECT), False).to_numpy(zero_copy_only=False)
    bad |= _valid(raw) & ~flat
    todo = flat & ~bad
    if todo.any():
        text, twice = _canonical_payloads(raw.filter(pa.array(todo)))
        canon = pc.replace_with_mask(canon, pa.array(todo), text)
        bad[np.flatnonzero(todo)[twice]] = True
    return _Plan(bad, canon, micros)


def fallback_mask(table: pa.Table) -> np.ndarray:
    """Rows the kernels cannot promise byte for byte: they take the per-event encoder."""
    return _plan(table).bad


def _encode_common(t: pa.Table, plan: _Plan, source: str) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """(ce ids, CloudEvent texts, attrs lengths) of rows that passed `fallback_mask` (`plan`: theirs)."""
    canon, us = plan.canon, plan.micros
    col = {name: _arr(t.column(name)) for name in t.column_names}
    eid = col["event_id"].cast(_L)
    cid = _json_string(col["content_id"])
    uid = _json_string(col["user_id"])
    etype = _json_string(col["event_type"])
    device = _json_string(col["device"])
    ts, ts_iso = _json_ts(col["event_ts"], us["event_ts"])
    duration = _json_int(col["duration_ms"])

    raw = col["raw_payload"]
    state = _join("[", cid, ",", uid, ",", etype, ",", ts, ",", duration, ",", device, ",", canon, "]")
    ce_id = _join("pulse-", eid, "-insert-", _digests(state))

    d, d_ok = _ints(col["duration_ms"]), _valid(col["duration_ms"])
    length, len_ok = _ints(col["length_seconds"]), _valid(col["length_seconds"])
    seconds_ok = d_ok & (d >= 0)
    pct_ok = seconds_ok & len_ok & (length > 0)
    den = np.where(pct_ok, 10 * length, 1)
    q, r = np.divmod(np.where(pct_ok, d, 0), den)
    hundredths = q + (2 * r >= den)
    problems = col["problems"]
    names = pc.binary_join(problems.cast(pa.large_list(_L)), pa.scalar('","', _L))
    problems_json = pc.if_else(pc.equal(pc.list_value_length(problems), 0), pa.scalar("[]", _L),
                               _join('["', pc.fill_null(names, ""), '"]'))

    data = (
        '{"event_id":', eid, ',"content_id":', cid, ',"user_id":', uid, ',"event_type":', etype,
        ',"event_ts":', ts, ',"duration_ms":', duration, ',"device":', device,
        ',"raw_payload":', _json_string(raw), ',"content_slug":', _json_string(col["content_slug"]),
        ',"content_title":', _json_string(col["content_title"]), ',"content_type":', _json_string(col["content_type"]),
        ',"length_seconds":', _json_int(col["length_seconds"]),
        ',"engagement_seconds":', _json_decimal(np.where(seconds_ok, d, 0), seconds_ok, _FRAC3),
        ',"engagement_pct":', _json_decimal(hundredths, pct_ok, _FRAC2),
        ',"op":"insert","source_lsn":', _json_int(col["source_lsn"]), ',"source_seq":', _json_int(col["source_seq"]),
        ',"commit_ts":', _json_ts(col["commit_ts"], us["commit_ts"])[0],
        ',"processed_ts":', _json_ts(col["processed_ts"], us["processed_ts"])[0],
        ',"backfill":', pc.if_else(col["backfill"], pa.scalar("true", _L), pa.scalar("false", _L)),
        ',"problems":', problems_json, "}",
    )
    empty = pa.scalar("", _L)
    time_attr = pc.if_else(col["event_ts"].is_valid(), _join(',"time":"', ts_iso, '"'), empty)
    key_attr = pc.if_else(col["content_id"].is_valid(), _join(',"partitionkey":', cid), empty)
    lead = '{"specversion":"1.0","id":"'
    middle = '","source":' + orjson.dumps(source).decode() + ',"type":"' + TYPE_PREFIX + 'insert","subject":"'
    tail = ',"datacontenttype":"application/json"'
    part_sep = _join(lead, ce_id, middle, eid, '"', time_attr, tail, key_attr, ',"data":', *data, "},")
    # len(attrs) in characters: the ids, numbers and times are ASCII, the content id may not be; + the closing }
    attrs_len = (len(lead) + len(middle) + 1 + len(tail) + 1 + _lengths(ce_id) + _lengths(eid)
                 + _lengths(time_attr) + pc.utf8_length(key_attr).to_numpy(zero_copy_only=False).astype(np.int64))
    return ce_id, part_sep, attrs_len


def table_events(table: pa.Table) -> list[EnrichedEvent]:
    """The rows as the events `EventChunk.events()` builds for them (metrics recomputed as `enrich` does)."""
    c = {name: table.column(name).to_pylist() for name in table.column_names}
    out = []
    for k in range(table.num_rows):
        seconds, pct, _ = engagement(c["duration_ms"][k], c["length_seconds"][k])
        out.append(EnrichedEvent(
            c["event_id"][k], c["content_id"][k], c["user_id"][k], c["event_type"][k], c["event_ts"][k],
            c["duration_ms"][k], c["device"][k], c["raw_payload"][k], c["content_slug"][k], c["content_title"][k],
            c["content_type"][k], c["length_seconds"][k], seconds, pct, c["op"][k],
            Position(c["source_lsn"][k], c["source_seq"][k]), c["commit_ts"][k], c["processed_ts"][k],
            c["backfill"][k], tuple(c["problems"][k])))
    return out


def encode_table(table: pa.Table, source: str) -> EncodedColumns:
    """What `encode_event(e, source)` makes of each row's event, as columns, in row order."""
    from pulse.sinks.external.sink import encode_event

    n = table.num_rows
    plan = _plan(table)
    bad = plan.bad
    common = np.flatnonzero(~bad)
    rare = np.flatnonzero(bad)
    ce_parts: list[pa.Array] = []
    text_parts: list[pa.Array] = []
    attrs_len = np.zeros(n, np.int64)
    if len(common):
        if len(rare):
            table_common, plan = table.take(pa.array(common)), plan.take(common)
        else:
            table_common = table
        ce, text, alen = _encode_common(table_common, plan, source)
        ce_parts.append(ce)
        text_parts.append(text)
        attrs_len[common] = alen
    if len(rare):
        encoded = [encode_event(e, source) for e in table_events(table.take(pa.array(rare)))]
        ce_parts.append(pa.array([e.ce_id for e in encoded], _L))
        text_parts.append(pa.array([e.part.decode() + "," for e in encoded], _L))
        attrs_len[rare] = [e.attrs_len for e in encoded]
    if n == 0:
        ce_id = part_sep = pa.array([], _L)
    elif len(ce_parts) == 1:  # one path took every row, in row order
        ce_id, part_sep = ce_parts[0], text_parts[0]
    else:  # back to row order: the concatenation holds the common rows, then the rare ones
        where = np.empty(n, np.int64)
        where[common] = np.arange(len(common))
        where[rare] = len(common) + np.arange(len(rare))
        take = pa.array(where)
        ce_id = pc.take(pa.concat_arrays(ce_parts), take)
        part_sep = pc.take(pa.concat_arrays(text_parts), take)
    cid = _arr(table.column("content_id")).cast(_L)
    return EncodedColumns(_ints(_arr(table.column("source_lsn"))), _ints(_arr(table.column("source_seq"))),
                          _ints(_arr(table.column("event_id"))), _lane_keys(cid), cid, ce_id, part_sep, attrs_len)


__all__ = ["EncodedColumns", "encode_table", "fallback_mask", "table_events"]
