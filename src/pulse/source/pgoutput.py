"""Decoder for PostgreSQL's ``pgoutput`` logical replication messages.

This is the only module in Pulse that knows the wire format. It turns one
pgoutput message (the body of an XLogData ``'w'`` frame, i.e. what
``pg_recvlogical`` or psycopg's ``ReplicationMessage.payload`` hands over,
without the 25-byte XLogData header) into a typed, immutable record.

Layouts follow "Logical Replication Message Formats" of the PostgreSQL
15/16 documentation and ``src/backend/replication/logical/proto.c``:

* protocol 1: Begin, Commit, Origin, Relation, Type, Insert, Update,
  Delete, Truncate, Message;
* protocol 2+ (``streaming=on``): Stream Start/Stop/Commit/Abort, and while
  inside a stream segment every Relation, Type, Insert, Update, Delete,
  Truncate and Message carries an Int32 xid right after the type byte
  (Origin never does);
* protocol 4 (``streaming=parallel``): Stream Abort may carry abort LSN and
  timestamp; they are read when present.

Two-phase messages (``two_phase=on``) are not supported and are reported as
unknown message types.

Text column values are converted by type OID through a lookup table
(``DEFAULT_CONVERTERS``); binary (``binary=on``) values stay ``bytes``; a
TOASTed value the server did not resend is the sentinel ``UNCHANGED_TOAST``.
Text conversion assumes UTF-8 and ``DateStyle=ISO``, which Pulse's replication
connection sets itself (with ``TimeZone=UTC``). A timestamp Python's datetime
cannot hold (``infinity``, BC, a year beyond 9999, or one that leaves the
range once converted to UTC) stays its text; enrichment flags it.

``PgOutputDecoder`` is stateful: it caches Relation messages by OID and
tracks stream segments, so callers just feed payloads in order. Relation
messages received inside a stream are scoped to that streamed transaction
until its Stream Commit, because that is how pgoutput tracks what it has
sent (see ``PgOutputDecoder``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Final, Union

from pulse.model import UNCHANGED_TOAST  # noqa: F401  (re-exported: what the decoder puts for an unsent value)

__all__ = [
    "DEFAULT_CONVERTERS",
    "Converter",
    "UNCHANGED_TOAST",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Origin",
    "PgOutputDecoder",
    "PgOutputError",
    "Record",
    "Relation",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TypeInfo",
    "Update",
    "lsn_to_str",
    "pg_timestamp_to_datetime",
    "str_to_lsn",
    "type_name",
]


class PgOutputError(ValueError):
    """A payload that is not a valid pgoutput message for the decoder's state."""


# --- LSN and timestamp helpers -------------------------------------------------

_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)
_MAX_LSN: Final = (1 << 64) - 1


def lsn_to_str(lsn: int) -> str:
    """Format a 64-bit LSN the way PostgreSQL does: ``'16/B374D848'``."""
    if not 0 <= lsn <= _MAX_LSN:
        raise PgOutputError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


_LSN_RE: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def str_to_lsn(text: str) -> int:
    """Parse ``'X/Y'`` (hex halves, as shown by ``pg_current_wal_lsn()``)."""
    match = _LSN_RE.fullmatch(text.strip())
    if match is None:
        raise PgOutputError(f"not an LSN: {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def pg_timestamp_to_datetime(micros: int) -> datetime:
    """Convert an Int64 of microseconds since 2000-01-01 UTC to an aware datetime."""
    return _PG_EPOCH + timedelta(microseconds=micros)


# --- text value converters ----------------------------------------------------
# Each converter takes the raw bytes of a text-format value. int() and float()
# accept ASCII bytes directly, so the common numeric types skip a decode step.

_decode = bytes.decode  # UTF-8, strict: a bad byte is an error, not mojibake


def _numeric(raw: bytes) -> Decimal:
    # Decimal() accepts 'NaN', 'Infinity', '-Infinity' like PostgreSQL sends.
    return Decimal(raw.decode("ascii"))


def _unrepresentable(text: str) -> bool:
    # Valid PostgreSQL values that Python's datetime types cannot hold:
    # +/-infinity, BC dates, and years beyond 9999.
    return text in ("infinity", "-infinity") or text.endswith(" BC") or text.find("-") > 4


def _datetime(raw: bytes) -> datetime | str:
    # timestamptz text has an offset ('+00', '+05:30') and becomes aware;
    # timestamp text has none and stays naive: one parser serves both.
    text = raw.decode("ascii")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        if _unrepresentable(text):
            return text
        raise
    if (value.year == 1 or value.year == 9999) and value.utcoffset():
        # '9999-12-31 23:59:59-01' is 10000-01-01 in UTC: a datetime until the
        # first conversion to UTC raises OverflowError. Pulse's replication
        # connection asks for UTC, so only another session time zone sends it.
        try:
            value.astimezone(timezone.utc)
        except OverflowError:
            return text
    return value


def _date(raw: bytes) -> date | str:
    text = raw.decode("ascii")
    try:
        return date.fromisoformat(text)
    except ValueError:
        if _unrepresentable(text):
            return text
        raise


Converter = Callable[[bytes], object]

DEFAULT_CONVERTERS: Final[Mapping[int, Converter]] = MappingProxyType({
    16: {b"t": True, b"f": False}.__getitem__,  # bool
    19: _decode,  # name
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
    25: _decode,  # text
    26: int,  # oid
    114: _decode,  # json: raw text, parsed lazily downstream
    700: float,  # float4
    701: float,  # float8
    1042: _decode,  # bpchar
    1043: _decode,  # varchar
    1082: _date,  # date
    1114: _datetime,  # timestamp
    1184: _datetime,  # timestamptz
    1700: _numeric,  # numeric
    2950: _decode,  # uuid
    3802: _decode,  # jsonb: raw text, parsed lazily downstream
})
"""Type OID -> converter for text-format values; unlisted OIDs decode to str."""

# Builtin type names, so a Type message for a domain (which pgoutput describes
# by its base type's namespace and name) can reuse the base type's converter.
_BUILTIN_TYPE_NAMES: Final[Mapping[str, int]] = {
    "bool": 16, "name": 19, "int8": 20, "int2": 21, "int4": 23, "text": 25,
    "oid": 26, "json": 114, "float4": 700, "float8": 701, "bpchar": 1042,
    "varchar": 1043, "date": 1082, "timestamp": 1114, "timestamptz": 1184,
    "numeric": 1700, "uuid": 2950, "jsonb": 3802,
}


_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType({
    **{oid: name for name, oid in _BUILTIN_TYPE_NAMES.items()},
    17: "bytea", 18: "char", 142: "xml", 650: "cidr", 790: "money", 869: "inet", 1083: "time",
    1186: "interval", 1266: "timetz", 1560: "bit", 1562: "varbit",
})


def type_name(type_oid: int, type_modifier: int = -1) -> str:
    """A column's PostgreSQL type as a name: ``'text'``, ``'int4'``, ``'numeric(10,2)'``.

    The name travels with an extra column to the sinks (who map it to their
    own types); an OID that is not a builtin (an enum, a domain, an array)
    is ``'oid:<n>'``. The modifier only matters for ``numeric`` (precision
    and scale packed as PostgreSQL does: ``((p << 16) | s) + 4``).
    """
    name = _TYPE_NAMES.get(type_oid)
    if name is None:
        return f"oid:{type_oid}"
    if type_oid == 1700 and type_modifier >= 4:
        mod = type_modifier - 4
        return f"numeric({(mod >> 16) & 0xFFFF},{mod & 0xFFFF})"
    return name


# --- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """'B': start of a (non-streamed) transaction."""

    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """'C': end of a (non-streamed) transaction."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """'O': the transaction was replayed here from another node."""

    origin_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation message."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """True if the column is part of the replica identity."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """'R': a table's published shape; tuples are aligned with ``columns``.

    ``namespace`` is ``'pg_catalog'`` where the wire has the empty string.
    ``replica_identity`` is ``relreplident``: 'd' default, 'n' nothing,
    'f' full, 'i' index. ``xid`` is that of the stream segment the message
    arrived in (None outside streams); it is ignored by equality so two
    messages describing the same schema compare equal.
    """

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]
    xid: int | None = field(default=None, compare=False)
    column_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _key_columns: tuple[Column, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Precomputed once per schema: as_dict() and key_columns are per-row paths.
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))
        object.__setattr__(self, "_key_columns", tuple(c for c in self.columns if c.flags & 1))

    @property
    def key_columns(self) -> tuple[Column, ...]:
        """Columns flagged as part of the replica identity (all of them for FULL)."""
        return self._key_columns

    def as_dict(self, values: tuple[object, ...]) -> dict[str, object]:
        """Map column names to the values of a tuple decoded for this relation."""
        if len(values) != len(self.column_names):
            raise PgOutputError(
                f"{len(values)} values for {len(self.column_names)} columns of {self.namespace}.{self.name}"
            )
        return dict(zip(self.column_names, values))


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """'Y': a non-builtin type used by a following Relation.

    For a domain pgoutput sends the domain's OID with the *base* type's
    namespace and name.
    """

    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    """'I': a new row."""

    relation: Relation
    new: tuple[object, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """'U': a changed row.

    ``key`` is set when the key changed (replica identity DEFAULT/INDEX;
    non-key columns are None), ``old`` with REPLICA IDENTITY FULL, neither
    otherwise. In ``new`` unchanged TOASTed columns are ``UNCHANGED_TOAST``.
    """

    relation: Relation
    new: tuple[object, ...]
    old: tuple[object, ...] | None = None
    key: tuple[object, ...] | None = None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """'D': a removed row; exactly one of ``key`` / ``old`` is set."""

    relation: Relation
    old: tuple[object, ...] | None = None
    key: tuple[object, ...] | None = None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """'T': TRUNCATE of one or more relations."""

    relations: tuple[Relation, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None

    @property
    def relation_oids(self) -> tuple[int, ...]:
        return tuple(r.oid for r in self.relations)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """'M': a ``pg_logical_emit_message()`` payload (needs ``messages=on``)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """'S': a segment of an in-progress transaction begins."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """'E': the current stream segment ends."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """'c': a streamed transaction committed (sent outside any segment)."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """'A': a streamed (sub)transaction aborted (sent outside any segment).

    ``subxid == xid`` aborts the whole transaction; otherwise only the changes
    whose record ``xid`` is ``subxid`` are discarded. ``abort_lsn`` and
    ``abort_ts`` are only sent with protocol 4 and ``streaming=parallel``.
    """

    xid: int
    subxid: int
    abort_lsn: int | None = None
    abort_ts: datetime | None = None


Record = Union[
    Begin, Commit, Origin, Relation, TypeInfo, Insert, Update, Delete, Truncate,
    LogicalMessage, StreamStart, StreamStop, StreamCommit, StreamAbort,
]

_STREAM_STOP: Final = StreamStop()


# --- the decoder ----------------------------------------------------------------

_U16: Final = struct.Struct(">H").unpack_from
_U32: Final = struct.Struct(">I").unpack_from
_U32_X2: Final = struct.Struct(">II").unpack_from
_U64: Final = struct.Struct(">Q").unpack_from
_BEGIN: Final = struct.Struct(">QqI").unpack_from
_COMMIT: Final = struct.Struct(">BQQq").unpack_from
_STREAM_START: Final = struct.Struct(">IB").unpack_from
_STREAM_COMMIT: Final = struct.Struct(">IBQQq").unpack_from
_STREAM_ABORT_EXTRA: Final = struct.Struct(">Qq").unpack_from
_MESSAGE_HEAD: Final = struct.Struct(">BQ").unpack_from
_COLUMN_TAIL: Final = struct.Struct(">Ii").unpack_from
_OID_AND_KIND: Final = struct.Struct(">IB").unpack_from

_K: Final = ord("K")
_N: Final = ord("N")
_O: Final = ord("O")

_NAMES: Final[Mapping[int, str]] = {
    ord("B"): "Begin", ord("C"): "Commit", ord("O"): "Origin", ord("R"): "Relation",
    ord("Y"): "Type", ord("I"): "Insert", ord("U"): "Update", ord("D"): "Delete",
    ord("T"): "Truncate", ord("M"): "Message", ord("S"): "Stream Start",
    ord("E"): "Stream Stop", ord("c"): "Stream Commit", ord("A"): "Stream Abort",
}

# A cached relation together with one converter per column, resolved once per
# Relation message so the tuple loop does no per-column type lookups.
_Entry = tuple[Relation, tuple[Converter, ...]]


def _truncated(what: str) -> PgOutputError:
    return PgOutputError(f"truncated {what}")


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string; return it and the position after the NUL."""
    end = buf.find(0, pos)
    if end < 0:
        raise _truncated("string (no NUL terminator)")
    return buf[pos:end].decode(), end + 1


class PgOutputDecoder:
    """Stateful decoder: feed it every pgoutput payload of one replication connection.

    ``protocol_version`` is the ``proto_version`` given to START_REPLICATION
    (1 to 4). Use one decoder per connection; after a reconnect start a new
    one, since the server resends Relation messages to a new walsender.

    Schema cache semantics mirror pgoutput's ``RelationSyncCache``: a
    Relation message outside streams replaces the cached entry for its OID
    (schema change). Inside a stream segment it applies only to that
    streamed transaction, whose changes may be committed or discarded later;
    it is merged into the main cache on Stream Commit and dropped on a
    top-level Stream Abort. Otherwise an interleaved ordinary transaction
    would be decoded with a schema from an uncommitted (maybe aborted) DDL.

    Note that inside streams the ``xid`` of data records is the
    *subtransaction's* xid when the change came from a subtransaction, which
    is what a Stream Abort's ``subxid`` refers to.
    """

    __slots__ = ("protocol_version", "_converters", "_relations", "_stream_relations",
                 "_stream_xid", "_handlers")

    def __init__(
        self,
        protocol_version: int = 2,
        converters: Mapping[int, Converter] | None = None,
    ) -> None:
        if type(protocol_version) is not int or not 1 <= protocol_version <= 4:
            raise PgOutputError(f"unsupported pgoutput protocol version: {protocol_version!r}")
        self.protocol_version = protocol_version
        # Per-decoder copy: Type messages for domains add entries to it.
        self._converters: dict[int, Converter] = dict(DEFAULT_CONVERTERS)
        if converters:
            self._converters.update(converters)
        self._relations: dict[int, _Entry] = {}
        self._stream_relations: dict[int, dict[int, _Entry]] = {}
        self._stream_xid: int | None = None
        self._handlers: dict[int, Callable[[bytes], Record]] = {
            ord("B"): self._begin,
            ord("C"): self._commit,
            ord("O"): self._origin,
            ord("R"): self._relation,
            ord("Y"): self._type,
            ord("I"): self._insert,
            ord("U"): self._update,
            ord("D"): self._delete,
            ord("T"): self._truncate,
            ord("M"): self._message,
        }
        if protocol_version >= 2:
            self._handlers.update({
                ord("S"): self._stream_start,
                ord("E"): self._stream_stop,
                ord("c"): self._stream_commit,
                ord("A"): self._stream_abort,
            })

    # -- public API --

    @property
    def in_stream(self) -> bool:
        """True between a Stream Start and its Stream Stop."""
        return self._stream_xid is not None

    @property
    def stream_xid(self) -> int | None:
        """Top-level xid of the current stream segment, or None."""
        return self._stream_xid

    def get_relation(self, oid: int) -> Relation | None:
        """The relation a data message with this OID would resolve to now."""
        entry = self._lookup(oid)
        return None if entry is None else entry[0]

    def decode(self, payload: bytes | bytearray | memoryview) -> Record:
        """Decode one pgoutput message into its record.

        Raises PgOutputError for unknown message types, truncated or
        malformed payloads, unknown relation OIDs and messages that are
        impossible in the current stream state.
        """
        # One memcpy of the payload is cheaper than per-field memoryview
        # objects, and bytes gives find() for C strings and lets int()/float()
        # parse slices directly.
        buf = payload if type(payload) is bytes else bytes(payload)
        if not buf:
            raise PgOutputError("empty pgoutput payload")
        handler = self._handlers.get(buf[0])
        if handler is None:
            byte = buf[0]
            hint = " (streaming needs protocol_version >= 2)" if byte in _NAMES else ""
            raise PgOutputError(
                f"unknown pgoutput message type {bytes([byte])!r} (0x{byte:02x}){hint}"
            )
        try:
            return handler(buf)
        except PgOutputError:
            raise
        except (struct.error, IndexError) as exc:
            raise PgOutputError(
                f"truncated {_NAMES[buf[0]]} message ({len(buf)} bytes): {exc}"
            ) from exc
        except (ValueError, LookupError, ArithmeticError) as exc:
            # Bad value text for its type (e.g. 'x' for a bool), invalid UTF-8.
            raise PgOutputError(f"malformed {_NAMES[buf[0]]} message: {exc}") from exc

    # -- helpers --

    def _lookup(self, oid: int) -> _Entry | None:
        if self._stream_xid is not None:
            scoped = self._stream_relations.get(self._stream_xid)
            if scoped is not None:
                entry = scoped.get(oid)
                if entry is not None:
                    return entry
        return self._relations.get(oid)

    def _entry(self, oid: int, what: str) -> _Entry:
        entry = self._lookup(oid)
        if entry is None:
            raise self._unknown(oid, what)
        return entry

    @staticmethod
    def _unknown(oid: int, what: str) -> PgOutputError:
        return PgOutputError(
            f"{what} for unknown relation oid {oid}: no Relation message seen for it"
        )

    def _not_in_stream(self, what: str) -> None:
        if self._stream_xid is not None:
            raise PgOutputError(
                f"{what} inside stream segment of xid {self._stream_xid}: stream state out of sync"
            )

    def _read_tuple(
        self, buf: bytes, pos: int, convs: tuple[Converter, ...], rel: Relation
    ) -> tuple[tuple[object, ...], int]:
        """Read TupleData at ``pos``; return the values and the position after them."""
        natts = (buf[pos] << 8) | buf[pos + 1]
        if natts != len(convs):
            raise PgOutputError(
                f"tuple has {natts} columns but relation {rel.namespace}.{rel.name} "
                f"(oid {rel.oid}) has {len(convs)}"
            )
        pos += 2
        size = len(buf)
        values: list[object] = []
        append = values.append
        # Hot loop: locals only, one branch per column kind, no helper calls.
        # Slicing never raises, so each length is checked before converting.
        for conv in convs:
            kind = buf[pos]
            if kind == 116:  # 't' text: Int32 length + bytes
                start = pos + 5
                pos = start + _U32(buf, pos + 1)[0]
                if pos > size:
                    raise _truncated(f"tuple value ({size} bytes, needed {pos})")
                append(conv(buf[start:pos]))
            elif kind == 110:  # 'n' NULL
                append(None)
                pos += 1
            elif kind == 117:  # 'u' unchanged TOAST, value not sent
                append(UNCHANGED_TOAST)
                pos += 1
            elif kind == 98:  # 'b' binary: Int32 length + bytes, kept raw
                start = pos + 5
                pos = start + _U32(buf, pos + 1)[0]
                if pos > size:
                    raise _truncated(f"tuple value ({size} bytes, needed {pos})")
                append(buf[start:pos])
            else:
                raise PgOutputError(f"unknown tuple column kind {bytes([kind])!r}")
        return tuple(values), pos

    def _data_head(self, buf: bytes) -> tuple[int | None, int]:
        """Return (xid, position after it) for messages that carry it in streams."""
        if self._stream_xid is not None:
            return _U32(buf, 1)[0], 5
        return None, 1

    @staticmethod
    def _expect_end(buf: bytes, pos: int, what: str) -> None:
        # Exact length on row messages catches a wrong stream flag or protocol
        # version, which would otherwise shift every field by four bytes.
        if pos != len(buf):
            raise PgOutputError(f"{len(buf) - pos} unexpected trailing bytes after {what} message")

    # -- transaction control --

    def _begin(self, buf: bytes) -> Begin:
        self._not_in_stream("Begin")
        final_lsn, ts, xid = _BEGIN(buf, 1)
        return Begin(final_lsn, _PG_EPOCH + timedelta(microseconds=ts), xid)

    def _commit(self, buf: bytes) -> Commit:
        self._not_in_stream("Commit")
        flags, commit_lsn, end_lsn, ts = _COMMIT(buf, 1)
        return Commit(flags, commit_lsn, end_lsn, _PG_EPOCH + timedelta(microseconds=ts))

    def _origin(self, buf: bytes) -> Origin:
        # No xid even inside streams: proto.c writes Origin without one.
        (lsn,) = _U64(buf, 1)
        name, _ = _cstring(buf, 9)
        return Origin(lsn, name)

    # -- schema --

    def _relation(self, buf: bytes) -> Relation:
        xid, pos = self._data_head(buf)
        (oid,) = _U32(buf, pos)
        namespace, pos = _cstring(buf, pos + 4)
        name, pos = _cstring(buf, pos)
        replident = chr(buf[pos])
        (ncols,) = _U16(buf, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = buf[pos]
            colname, pos = _cstring(buf, pos + 1)
            type_oid, typmod = _COLUMN_TAIL(buf, pos)
            pos += 8
            columns.append(Column(flags, colname, type_oid, typmod))
        rel = Relation(oid, namespace or "pg_catalog", name, replident, tuple(columns), xid)
        get = self._converters.get
        entry = (rel, tuple(get(c.type_oid, _decode) for c in columns))
        if self._stream_xid is not None:
            self._stream_relations.setdefault(self._stream_xid, {})[oid] = entry
        else:
            self._relations[oid] = entry
        return rel

    def _type(self, buf: bytes) -> TypeInfo:
        xid, pos = self._data_head(buf)
        (oid,) = _U32(buf, pos)
        namespace, pos = _cstring(buf, pos + 4)
        name, pos = _cstring(buf, pos)
        namespace = namespace or "pg_catalog"
        # A domain arrives described as its builtin base type: give it the
        # base type's converter so its values are not left as plain strings.
        if namespace == "pg_catalog" and oid not in self._converters:
            base = _BUILTIN_TYPE_NAMES.get(name)
            if base is not None:
                self._converters[oid] = self._converters[base]
        return TypeInfo(oid, namespace, name, xid)

    # -- row changes --

    def _insert(self, buf: bytes) -> Insert:
        # The hottest path: stream check, cache lookup and end check inlined.
        if self._stream_xid is None:
            xid = None
            oid, kind = _OID_AND_KIND(buf, 1)
            entry = self._relations.get(oid)
            pos = 6
        else:
            xid = _U32(buf, 1)[0]
            oid, kind = _OID_AND_KIND(buf, 5)
            entry = self._lookup(oid)
            pos = 10
        if entry is None:
            raise self._unknown(oid, "Insert")
        rel, convs = entry
        if kind != _N:
            raise PgOutputError(f"Insert: expected 'N' tuple, got {bytes([kind])!r}")
        new, pos = self._read_tuple(buf, pos, convs, rel)
        if pos != len(buf):
            self._expect_end(buf, pos, "Insert")
        return Insert(rel, new, xid)

    def _update(self, buf: bytes) -> Update:
        xid, pos = self._data_head(buf)
        oid, kind = _OID_AND_KIND(buf, pos)
        rel, convs = self._entry(oid, "Update")
        pos += 5
        old = key = None
        if kind == _K:
            key, pos = self._read_tuple(buf, pos, convs, rel)
            kind = buf[pos]
            pos += 1
        elif kind == _O:
            old, pos = self._read_tuple(buf, pos, convs, rel)
            kind = buf[pos]
            pos += 1
        if kind != _N:
            raise PgOutputError(f"Update: expected 'N' tuple, got {bytes([kind])!r}")
        new, pos = self._read_tuple(buf, pos, convs, rel)
        self._expect_end(buf, pos, "Update")
        return Update(rel, new, old, key, xid)

    def _delete(self, buf: bytes) -> Delete:
        xid, pos = self._data_head(buf)
        oid, kind = _OID_AND_KIND(buf, pos)
        rel, convs = self._entry(oid, "Delete")
        if kind != _K and kind != _O:
            raise PgOutputError(f"Delete: expected 'K' or 'O' tuple, got {bytes([kind])!r}")
        values, pos = self._read_tuple(buf, pos + 5, convs, rel)
        self._expect_end(buf, pos, "Delete")
        if kind == _K:
            return Delete(rel, None, values, xid)
        return Delete(rel, values, None, xid)

    def _truncate(self, buf: bytes) -> Truncate:
        xid, pos = self._data_head(buf)
        (count,) = _U32(buf, pos)
        options = buf[pos + 4]
        pos += 5
        if pos + 4 * count > len(buf):
            raise _truncated(f"Truncate message: {count} relation oids need {4 * count} bytes")
        oids = struct.unpack_from(f">{count}I", buf, pos)
        relations = tuple(self._entry(oid, "Truncate")[0] for oid in oids)
        return Truncate(relations, bool(options & 1), bool(options & 2), xid)

    def _message(self, buf: bytes) -> LogicalMessage:
        xid, pos = self._data_head(buf)
        flags, lsn = _MESSAGE_HEAD(buf, pos)
        prefix, pos = _cstring(buf, pos + 9)
        (length,) = _U32(buf, pos)
        pos += 4
        if pos + length > len(buf):
            raise _truncated(f"Message content ({length} bytes announced, {len(buf) - pos} present)")
        return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:pos + length], xid)

    # -- streaming (protocol >= 2) --

    def _stream_start(self, buf: bytes) -> StreamStart:
        self._not_in_stream("Stream Start")
        xid, first = _STREAM_START(buf, 1)
        self._stream_xid = xid
        return StreamStart(xid, first == 1)

    def _stream_stop(self, buf: bytes) -> StreamStop:
        if self._stream_xid is None:
            raise PgOutputError("Stream Stop outside a stream segment: stream state out of sync")
        self._stream_xid = None
        return _STREAM_STOP

    def _stream_commit(self, buf: bytes) -> StreamCommit:
        self._not_in_stream("Stream Commit")
        xid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT(buf, 1)
        # The streamed schema is now committed: pgoutput marks it as sent.
        scoped = self._stream_relations.pop(xid, None)
        if scoped:
            self._relations.update(scoped)
        return StreamCommit(xid, flags, commit_lsn, end_lsn,
                            _PG_EPOCH + timedelta(microseconds=ts))

    def _stream_abort(self, buf: bytes) -> StreamAbort:
        self._not_in_stream("Stream Abort")
        xid, subxid = _U32_X2(buf, 1)
        abort_lsn = abort_ts = None
        # Only protocol 4 with streaming=parallel appends these; v4 alone does not.
        if self.protocol_version >= 4 and len(buf) >= 25:
            abort_lsn, ts = _STREAM_ABORT_EXTRA(buf, 9)
            abort_ts = _PG_EPOCH + timedelta(microseconds=ts)
        if xid == subxid:
            # Whole transaction gone: its streamed schema never happened.
            self._stream_relations.pop(xid, None)
        return StreamAbort(xid, subxid, abort_lsn, abort_ts)
