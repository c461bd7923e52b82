"""The native reader (`pulse.source._wire`): binding, layout, and runs as Arrow.

`_wire` reads the replication COPY through psycopg2's own libpq with the
GIL released and decodes runs of `engagement_events` Inserts into column
buffers (see the C file's header for why and for the exact split of work).
This module is its Python side:

- `load()` binds the extension to the libpq that psycopg2 itself is linked
  with (the PGconn pointer is only meaningful to that copy of libpq);
- `FastLayout` follows the Relation messages of the stream and tells the
  reader which relation is decoded natively and how each of its columns
  is read (`'i'` integer, `'t'` timestamptz, `'s'` text, `'x'` skipped); a
  relation whose columns are not the expected ones is not decoded natively
  at all, so the Python decoder stays the reference for anything unusual;
- `run_table` turns a decoded run into a table of `model_arrow.RAW_SCHEMA`,
  the shape the columnar enrichment takes; `run_payloads` gives back the
  original payloads, for the row path.

Without the extension (no C compiler at install time) Pulse runs the
pure-Python reader; `available()` says which.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import pyarrow as pa

from pulse.log import get_logger
from pulse.source import pgoutput as pg

log = get_logger(__name__)

try:  # built by setup.py; optional so that an install without a compiler still works
    from pulse.source import _wire
except ImportError:  # pragma: no cover - depends on the build
    _wire = None  # type: ignore[assignment]

_bound = False

# Column of engagement_events -> (kind, accepted type OIDs). Any other type
# (a domain, a changed column) leaves the relation to the Python decoder.
_INT = frozenset({20, 21, 23})  # int8, int2, int4
_TEXT = frozenset({25, 1043, 1042})  # text, varchar, bpchar
WANTED: dict[str, tuple[str, frozenset[int]]] = {
    "id": ("i", _INT),
    "content_id": ("s", frozenset({2950}) | _TEXT),
    "user_id": ("s", frozenset({2950}) | _TEXT),
    "event_type": ("s", _TEXT),
    "event_ts": ("t", frozenset({1184})),  # timestamptz only: timestamp text carries no offset
    "duration_ms": ("i", _INT),
    "device": ("s", _TEXT),
    "raw_payload": ("s", frozenset({3802, 114}) | _TEXT),  # jsonb, json: their text, as the Python decoder
}

# Server settings of the replication connection, whichever the reader: the
# text of values is what `_wire` and the Python decoder parse (ISO timestamps,
# in UTC, so that no value leaves Python's range on its way to UTC), whatever
# the database's or role's own DateStyle and TimeZone.
SERVER_SETTINGS = {"DateStyle": "ISO", "TimeZone": "UTC"}


def available() -> bool:
    return _wire is not None


def module():
    """The extension without binding libpq (its helpers that need no connection), or None without it."""
    return _wire


def load():
    """The extension, bound to psycopg2's libpq; None when it was not built."""
    global _bound
    if _wire is None:
        return None
    if not _bound:
        import psycopg2._psycopg as _psycopg

        lib = ctypes.CDLL(_psycopg.__file__)  # dlsym on it also searches its libpq
        addr = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                for name in ("PQgetCopyData", "PQconsumeInput", "PQsocket", "PQfreemem")]
        _wire.bind_libpq(*addr)
        _bound = True
    return _wire


def kinds_for(rel: pg.Relation) -> bytes | None:
    """The per-column kinds for `_wire`, or None when the relation is not the expected shape."""
    kinds = []
    seen = set()
    for col in rel.columns:
        want = WANTED.get(col.name)
        if want is None:
            kinds.append("x")
            continue
        kind, oids = want
        if col.type_oid not in oids:
            return None
        kinds.append(kind)
        seen.add(col.name)
    if seen != WANTED.keys():
        return None
    return "".join(kinds).encode()


class FastLayout:
    """Follows the stream's schema messages; says when the reader's fast relation changes.

    Fed only the messages that define schema and stream state (Relation,
    Type, Stream Start / Stop / Commit / Abort), through a decoder of its
    own, so a Relation inside a streamed transaction applies only once that
    transaction commits, exactly as in the dispatcher's decoder.
    """

    OBSERVED = frozenset(b"RYSEcA")

    def __init__(self, schema: str, protocol_version: int) -> None:
        self.schema = schema
        self.decoder = pg.PgOutputDecoder(protocol_version)
        self.oid = 0
        self.kinds = b""
        self.columns: tuple[str, ...] = ()
        self._target_oid: int | None = None
        self.broken = False

    def observe(self, payload: bytes) -> bool:
        """Feed one message; True when (oid, kinds) changed."""
        try:
            rec = self.decoder.decode(payload)
        except pg.PgOutputError:
            # The dispatcher's decoder will report it; decode nothing natively from here on.
            self.broken = True
            return self._set(0, b"", ())
        if type(rec) is pg.Relation and rec.namespace == self.schema and rec.name == "engagement_events":
            self._target_oid = rec.oid
        if self._target_oid is None or self.broken or self.decoder.in_stream:
            return False
        rel = self.decoder.get_relation(self._target_oid)
        kinds = kinds_for(rel) if rel is not None else None
        if kinds is None:
            if rel is not None and self.oid:
                log.info("native.relation_not_fast", relation=f"{rel.namespace}.{rel.name}",
                         note="its columns are not the expected ones: decoded in Python")
            return self._set(0, b"", ())
        names = tuple(c.name for c, k in zip(rel.columns, kinds.decode()) if k != "x")
        return self._set(rel.oid, kinds, names)

    def _set(self, oid: int, kinds: bytes, columns: tuple[str, ...]) -> bool:
        if (oid, kinds) == (self.oid, self.kinds):
            return False
        self.oid, self.kinds, self.columns = oid, kinds, columns
        return True


def arrays(n: int, kinds: str, cols: tuple) -> list[pa.Array]:
    """Arrow arrays over `_wire`'s column buffers, one per kind ('x' columns are not among `cols`).

    'i' and 't' are int64 (validity, values); 's', 'u' and 'j' are strings
    (validity, offsets, data). A 't' column of a binary COPY carries a third
    buffer, its bad-value bitmap, which the caller reads itself.
    """
    out = []
    for kind, buffers in zip((k for k in kinds if k != "x"), cols):
        bufs = [pa.py_buffer(b) for b in buffers]
        if kind in "it":
            out.append(pa.Array.from_buffers(pa.int64(), n, bufs[:2]))
        else:
            out.append(pa.Array.from_buffers(pa.string(), n, bufs))
    return out


def run_table(run: tuple, columns: tuple[str, ...], kinds: bytes) -> pa.Table:
    """A decoded run as a table of `model_arrow.RAW_SCHEMA` (`event_ts` as `event_us`)."""
    from pulse.model_arrow import RAW_SCHEMA

    n, _raw, _offsets, cols = run
    named: dict[str, Any] = dict(zip(columns, arrays(n, kinds.decode(), cols)))
    named["event_us"] = named.pop("event_ts")
    named["event_ts_bad"] = pa.repeat(pa.scalar(False), n)  # the reader hands bad timestamps to Python
    return pa.Table.from_arrays([named[f.name] for f in RAW_SCHEMA], schema=RAW_SCHEMA)


def run_payloads(run: tuple) -> list[bytes]:
    """The original Insert payloads of a run, in order."""
    n, raw, offsets, _cols = run
    ends = memoryview(offsets).cast("q")
    return [raw[ends[i]:ends[i + 1]] for i in range(n)]


class Items(NamedTuple):
    """One native read, as a queue item: raw payloads and runs, with the layout the runs were decoded with."""

    items: list
    columns: tuple[str, ...]
    kinds: bytes
