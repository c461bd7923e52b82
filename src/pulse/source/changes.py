"""From decoded pgoutput records to positioned changes, in commit order.

`ChangeAssembler.feed(record)` yields `Change`s of the captured tables and a
`TxnEnd` after each transaction, so the runtime can acknowledge whole
transactions only.

- A regular transaction arrives whole and committed (Begin carries its
  commit LSN), so its changes are positioned and handed on as they arrive,
  without holding the transaction in memory.
- A streamed transaction (protocol 2, `streaming=on`: bigger than the
  server's `logical_decoding_work_mem`) arrives in segments before anyone
  knows whether it commits, and before its commit LSN is known. Its changes
  are spilled to a temporary file (memory stays bounded whatever its size),
  replayed in order on Stream Commit, and thrown away on Stream Abort
  (subtransaction aborts drop just that subtransaction's changes).

Positions are (commit LSN, ordinal among the transaction's captured changes):
the same on every replay, because pgoutput emits a transaction's changes in
WAL order in both modes.
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from pulse.log import get_logger
from pulse.model import Change, Position
from pulse.source import pgoutput as pg

log = get_logger(__name__)

CAPTURED = frozenset({"content", "engagement_events"})
WATERMARKS = "backfill_watermarks"  # in Pulse's state schema: backfill chunk boundaries
_TRUNCATE = "truncate"  # op of a spilled TRUNCATE record


@dataclass(frozen=True, slots=True)
class TxnEnd:
    """A transaction is complete: every change up to it has been yielded."""

    commit_lsn: int
    end_lsn: int
    commit_ts: datetime
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class Truncated:
    """A TRUNCATE of a captured table (delivered to nobody, reported loudly)."""

    table: str
    position: Position


@dataclass
class _Spill:
    path: Path
    fh: IO[bytes]
    count: int = 0
    aborted: set[int] | None = None


class ChangeAssembler:
    """Stateful: tracks the open transaction and the open streamed transactions."""

    def __init__(self, schema: str = "public", spill_dir: str | os.PathLike | None = None,
                 state_schema: str | None = None) -> None:
        self.schema = schema
        self._captured = {(schema, name) for name in CAPTURED}
        if state_schema is not None:
            self._captured.add((state_schema, WATERMARKS))
        self._wanted: dict[int, bool] = {}  # relation oid -> captured? (reset by Relation messages)
        self.spill_dir = Path(spill_dir) if spill_dir else Path(tempfile.gettempdir())
        self._txn: pg.Begin | None = None
        self._seq = 0
        #: The top-level xid of the transaction whose changes are being handed on (None between them).
        self.xid: int | None = None
        self._spills: dict[int, _Spill] = {}
        self._stream_top = 0
        self.spilled_total = 0

    # -- public --------------------------------------------------------------

    def reset(self) -> None:
        """Forget partial state (after a reconnect the server resends from the slot)."""
        self._txn = None
        self.xid = None
        self._seq = 0
        for spill in self._spills.values():
            self._discard(spill)
        self._spills.clear()

    def claim(self, n: int) -> tuple[int, int, datetime]:
        """Positions for `n` inserts of the open transaction decoded elsewhere (the native reader's runs).

        Returns (commit LSN, first ordinal, commit time); the next change is
        numbered after them, as if they had been fed one by one.
        """
        if self._txn is None:
            raise pg.PgOutputError("row change outside a transaction")
        first = self._seq + 1
        self._seq += n
        return self._txn.final_lsn, first, self._txn.commit_ts

    @property
    def open_streams(self) -> int:
        return len(self._spills)

    def feed(self, rec: object) -> Iterator[Change | TxnEnd | Truncated]:
        t = type(rec)
        if t is pg.Insert or t is pg.Update or t is pg.Delete:
            rel = rec.relation  # type: ignore[attr-defined]
            wanted = self._wanted.get(rel.oid)
            if wanted is None:
                wanted = self._wanted[rel.oid] = (rel.namespace, rel.name) in self._captured
            if not wanted:
                return
            xid = rec.xid  # type: ignore[attr-defined]
            if xid is not None:
                self._spill(xid, _rows(rec))
                return
            if self._txn is None:
                raise pg.PgOutputError("row change outside a transaction")
            self._seq += 1
            yield _to_change(rec, Position(self._txn.final_lsn, self._seq), self._txn.commit_ts)
        elif t is pg.Relation:
            self._wanted.clear()  # a schema change may rename a table
        elif t is pg.Begin:
            self._txn = rec  # type: ignore[assignment]
            self._seq = 0
            self.xid = rec.xid  # type: ignore[attr-defined]
        elif t is pg.Commit:
            self._txn = None
            self.xid = None
            yield TxnEnd(rec.commit_lsn, rec.end_lsn, rec.commit_ts)  # type: ignore[attr-defined]
        elif t is pg.StreamStart:
            self._stream_top = rec.xid  # type: ignore[attr-defined]
        elif t is pg.StreamCommit:
            yield from self._replay(rec)  # type: ignore[arg-type]
        elif t is pg.StreamAbort:
            self._abort(rec)  # type: ignore[arg-type]
        elif t is pg.Truncate:
            for rel in rec.relations:  # type: ignore[attr-defined]
                if rel.name in CAPTURED and rel.namespace == self.schema:
                    if rec.xid is not None:  # type: ignore[attr-defined]
                        # Inside a stream: only reported if the transaction commits.
                        self._spill(rec.xid, (rel.name, _TRUNCATE, None, None, None))  # type: ignore[attr-defined]
                        continue
                    pos = Position(self._txn.final_lsn if self._txn else 0, self._seq)
                    yield Truncated(rel.name, pos)
        # Relation, Type, Origin, LogicalMessage (heartbeats), StreamStop:
        # nothing to hand on; the decoder keeps what it needs.

    # -- streamed transactions -------------------------------------------------

    def _spill(self, xid: int, row: tuple) -> None:
        # Spill files are keyed by the top-level xid of the open stream segment.
        top = self._stream_top
        spill = self._spills.get(top)
        if spill is None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"pulse-stream-{top}-", suffix=".spill", dir=self.spill_dir)
            spill = self._spills[top] = _Spill(Path(name), os.fdopen(fd, "w+b", buffering=1 << 20))
        blob = pickle.dumps((xid, row), protocol=pickle.HIGHEST_PROTOCOL)
        spill.fh.write(_LEN.pack(len(blob)))
        spill.fh.write(blob)
        spill.count += 1
        self.spilled_total += 1

    def _replay(self, rec: pg.StreamCommit) -> Iterator[Change | TxnEnd | Truncated]:
        spill = self._spills.pop(rec.xid, None)
        seq = 0
        self.xid = rec.xid
        if spill is not None:
            try:
                spill.fh.close()
                aborted = spill.aborted or set()
                for xid, (table, op, new, old, types) in _read_spill(spill.path):
                    if xid in aborted:
                        continue
                    if op == _TRUNCATE:
                        yield Truncated(table, Position(rec.commit_lsn, seq))
                        continue
                    seq += 1
                    yield Change(table, op, new, old, Position(rec.commit_lsn, seq), rec.commit_ts, types)
            finally:
                self._discard(spill)
            log.debug("stream.replayed", xid=rec.xid, changes=seq)
        self.xid = None
        yield TxnEnd(rec.commit_lsn, rec.end_lsn, rec.commit_ts, streamed=True)

    def _abort(self, rec: pg.StreamAbort) -> None:
        spill = self._spills.get(rec.xid)
        if spill is None:
            return
        if rec.subxid == rec.xid:
            self._discard(self._spills.pop(rec.xid))
        else:
            if spill.aborted is None:
                spill.aborted = set()
            spill.aborted.add(rec.subxid)

    @staticmethod
    def _discard(spill: _Spill) -> None:
        try:
            if not spill.fh.closed:
                spill.fh.close()
        finally:
            spill.path.unlink(missing_ok=True)


_LEN = struct.Struct("<I")
_READ_CHUNK = 4 << 20


def _read_spill(path: Path) -> Iterator[tuple]:
    """Records of a spill file: length-prefixed pickles, read in large chunks.

    (pickle.load on the file object itself is an order of magnitude slower.)
    """
    with open(path, "rb", buffering=0) as fh:
        buf = b""
        pos = 0
        while True:
            if len(buf) - pos < 4 or len(buf) - pos < 4 + _LEN.unpack_from(buf, pos)[0]:
                more = fh.read(_READ_CHUNK)
                if not more:
                    if pos != len(buf):
                        raise pg.PgOutputError(f"spill file {path} is truncated")
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            (size,) = _LEN.unpack_from(buf, pos)
            start = pos + 4
            pos = start + size
            yield pickle.loads(buf[start:pos])


_TYPES: dict[int, tuple[pg.Relation, dict[str, str]]] = {}


def column_types(rel: pg.Relation) -> dict[str, str]:
    """Column name -> PostgreSQL type name of `rel`, one shared mapping per Relation message."""
    hit = _TYPES.get(id(rel))
    if hit is not None and hit[0] is rel:
        return hit[1]
    types = {c.name: pg.type_name(c.type_oid, c.type_modifier) for c in rel.columns}
    if len(_TYPES) > 256:
        _TYPES.clear()
    _TYPES[id(rel)] = (rel, types)
    return types


def _rows(rec: pg.Insert | pg.Update | pg.Delete) -> tuple:
    rel = rec.relation
    t = type(rec)
    if t is pg.Insert:
        return rel.name, "insert", rel.as_dict(rec.new), None, column_types(rel)
    if t is pg.Update:
        old = rec.old if rec.old is not None else rec.key  # type: ignore[union-attr]
        return rel.name, "update", rel.as_dict(rec.new), _partial(rel, old), column_types(rel)  # type: ignore[union-attr]
    old = rec.old if rec.old is not None else rec.key  # type: ignore[union-attr]
    return rel.name, "delete", None, _partial(rel, old), column_types(rel)


def _partial(rel: pg.Relation, values: tuple | None) -> dict | None:
    """Old values as a dict: the whole row with REPLICA IDENTITY FULL, else just the key.

    A 'K' tuple has NULL placeholders for non-key columns; dropping them lets
    callers tell "unknown" from "NULL".
    """
    if values is None:
        return None
    full = rel.as_dict(values)
    if rel.replica_identity == "f":
        return full
    return {c.name: full[c.name] for c in rel.key_columns}


def _to_change(rec, position: Position, commit_ts: datetime) -> Change:
    table, op, new, old, types = _rows(rec)
    return Change(table, op, new, old, position, commit_ts, types)
