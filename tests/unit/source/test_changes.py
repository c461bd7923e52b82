"""Unit tests for pulse.source.changes.ChangeAssembler.

Records are the decoder's own dataclasses (pulse.source.pgoutput), built
directly: this tests what happens after decoding, not the wire format.
Streamed transactions spill to `tmp_path`, so the files can be watched.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from pulse.model import Change, Position
from pulse.source.changes import CAPTURED, ChangeAssembler, Truncated, TxnEnd
from pulse.source.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    PgOutputError,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)

TS1 = datetime(2024, 8, 1, 12, 0, 0, tzinfo=timezone.utc)
TS2 = datetime(2024, 8, 1, 12, 0, 1, tzinfo=timezone.utc)
EVENT_TS = datetime(2024, 8, 1, 11, 59, 0, tzinfo=timezone.utc)
CID = "11111111-1111-1111-1111-111111111111"

ENG_COLS = (
    ("id", 20), ("content_id", 2950), ("user_id", 2950), ("event_type", 25), ("event_ts", 1184),
    ("duration_ms", 23), ("device", 25), ("raw_payload", 3802),
)


def relation(name: str = "engagement_events", ident: str = "d", namespace: str = "public", oid: int = 16400,
             cols=ENG_COLS) -> Relation:
    # pgoutput flags every column as part of the identity under FULL.
    columns = tuple(Column(1 if (i == 0 or ident == "f") else 0, n, t, -1) for i, (n, t) in enumerate(cols))
    return Relation(oid, namespace, name, ident, columns)


ENG = relation()
ENG_FULL = relation(ident="f")
CONTENT = relation("content", oid=16390, cols=(("id", 2950), ("slug", 25), ("title", 25), ("content_type", 25),
                                                ("length_seconds", 23), ("publish_ts", 1184)))
OTHER_TABLE = relation("users", oid=16500, cols=(("id", 20), ("name", 25)))
OTHER_SCHEMA = relation(namespace="analytics", oid=16600)


def ev(i: int, duration: int | None = 1000, payload: object = '{"a": 1}') -> tuple:
    return (i, CID, None, "play", EVENT_TS, duration, "ios", payload)


def as_dict(values: tuple) -> dict:
    return dict(zip([n for n, _ in ENG_COLS], values))


def key_tuple(i: int) -> tuple:
    return (i, None, None, None, None, None, None, None)


def feed(asm: ChangeAssembler, *records) -> list:
    out: list = []
    for rec in records:
        out.extend(asm.feed(rec))
    return out


def changes(out: list) -> list[Change]:
    return [o for o in out if isinstance(o, Change)]


def spill_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("pulse-stream-*.spill"))


@pytest.fixture
def asm(tmp_path: Path) -> ChangeAssembler:
    return ChangeAssembler(spill_dir=tmp_path)


# --- regular transactions --------------------------------------------------------------


def test_regular_transaction_positions_and_end(asm: ChangeAssembler) -> None:
    out = feed(
        asm,
        Begin(final_lsn=0x1_0000_0100, commit_ts=TS1, xid=700),
        ENG,  # a Relation record: nothing to hand on
        Insert(ENG, ev(1)),
        Insert(ENG, ev(2, duration=None)),
        Update(ENG, ev(1, duration=1500)),
        Delete(ENG, key=key_tuple(2)),
        Commit(flags=0, commit_lsn=0x1_0000_0100, end_lsn=0x1_0000_0130, commit_ts=TS1),
    )
    assert len(out) == 5
    *chs, end = out
    assert [c.position for c in chs] == [Position(0x1_0000_0100, s) for s in (1, 2, 3, 4)]
    assert [c.op for c in chs] == ["insert", "insert", "update", "delete"]
    assert all(c.table == "engagement_events" for c in chs)
    assert all(c.commit_ts == TS1 for c in chs)
    assert chs[0].new == as_dict(ev(1)) and chs[0].old is None
    assert chs[1].new["duration_ms"] is None
    assert chs[2].new["duration_ms"] == 1500 and chs[2].old is None
    assert chs[3].new is None and chs[3].old == {"id": 2}
    assert end == TxnEnd(0x1_0000_0100, 0x1_0000_0130, TS1, streamed=False)


def test_changes_are_yielded_as_they_arrive(asm: ChangeAssembler) -> None:
    assert feed(asm, Begin(0x200, TS1, 1)) == []
    (first,) = feed(asm, Insert(ENG, ev(1)))
    assert first.position == Position(0x200, 1)


def test_each_transaction_restarts_its_ordinal(asm: ChangeAssembler) -> None:
    out = feed(
        asm,
        Begin(0x100, TS1, 1), Insert(ENG, ev(1)), Insert(ENG, ev(2)), Commit(0, 0x100, 0x110, TS1),
        Begin(0x200, TS2, 2), Insert(ENG, ev(3)), Commit(0, 0x200, 0x210, TS2),
    )
    assert [c.position for c in changes(out)] == [Position(0x100, 1), Position(0x100, 2), Position(0x200, 1)]
    assert [o for o in out if isinstance(o, TxnEnd)] == [TxnEnd(0x100, 0x110, TS1), TxnEnd(0x200, 0x210, TS2)]
    assert changes(out)[2].commit_ts == TS2


def test_content_changes_are_captured(asm: ChangeAssembler) -> None:
    row = (CID, "ep-1", "Episode 1", "podcast", 120, TS1)
    out = feed(asm, Begin(0x100, TS1, 1), Insert(CONTENT, row), Commit(0, 0x100, 0x110, TS1))
    (ch,) = changes(out)
    assert ch.table == "content"
    assert ch.new == {"id": CID, "slug": "ep-1", "title": "Episode 1", "content_type": "podcast",
                      "length_seconds": 120, "publish_ts": TS1}
    assert CAPTURED == {"content", "engagement_events"}


def test_other_tables_and_schemas_are_ignored(asm: ChangeAssembler) -> None:
    out = feed(
        asm,
        Begin(0x100, TS1, 1),
        Insert(OTHER_TABLE, (1, "bob")),
        Insert(OTHER_SCHEMA, ev(1)),
        Update(OTHER_SCHEMA, ev(1)),
        Delete(OTHER_SCHEMA, key=key_tuple(1)),
        Insert(ENG, ev(5)),
        Commit(0, 0x100, 0x110, TS1),
    )
    (ch,) = changes(out)
    assert ch.new["id"] == 5
    assert ch.position == Position(0x100, 1)  # ignored rows take no ordinal
    assert isinstance(out[-1], TxnEnd)


def test_the_schema_is_configurable(tmp_path: Path) -> None:
    asm = ChangeAssembler(schema="analytics", spill_dir=tmp_path)
    out = feed(asm, Begin(0x100, TS1, 1), Insert(ENG, ev(1)), Insert(OTHER_SCHEMA, ev(2)),
               Commit(0, 0x100, 0x110, TS1))
    (ch,) = changes(out)
    assert ch.new["id"] == 2


def test_transaction_without_captured_changes_still_ends(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Insert(OTHER_TABLE, (1, "x")),
               LogicalMessage(True, 0x100, "pulse.heartbeat", b""), Commit(0, 0x100, 0x110, TS1))
    assert out == [TxnEnd(0x100, 0x110, TS1)]


def test_row_change_outside_a_transaction_is_an_error(asm: ChangeAssembler) -> None:
    with pytest.raises(PgOutputError):
        feed(asm, Insert(ENG, ev(1)))
    with pytest.raises(PgOutputError):
        feed(asm, Begin(0x100, TS1, 1), Commit(0, 0x100, 0x110, TS1), Insert(ENG, ev(1)))


# --- old values by replica identity ---------------------------------------------------


def test_update_with_key_under_default_identity_keeps_only_key_columns(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Update(ENG, ev(9), key=key_tuple(1)), Commit(0, 0x100, 0x110, TS1))
    (ch,) = changes(out)
    assert ch.op == "update"
    assert ch.old == {"id": 1}  # placeholders for non-key columns are dropped, not NULLs
    assert ch.new == as_dict(ev(9))


def test_update_without_old_under_default_identity(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Update(ENG, ev(1)), Commit(0, 0x100, 0x110, TS1))
    assert changes(out)[0].old is None


def test_update_under_full_identity_keeps_every_old_column(asm: ChangeAssembler) -> None:
    old = ev(1, duration=None, payload=None)  # real NULLs survive
    out = feed(asm, Begin(0x100, TS1, 1), Update(ENG_FULL, ev(1, duration=3), old=old),
               Commit(0, 0x100, 0x110, TS1))
    (ch,) = changes(out)
    assert ch.old == as_dict(old)
    assert ch.old["duration_ms"] is None and "raw_payload" in ch.old
    assert ch.new["duration_ms"] == 3


def test_delete_old_values_by_identity(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Delete(ENG, key=key_tuple(1)), Delete(ENG_FULL, old=ev(2)),
               Commit(0, 0x100, 0x110, TS1))
    key_only, full = changes(out)
    assert (key_only.op, key_only.new, key_only.old) == ("delete", None, {"id": 1})
    assert (full.op, full.new, full.old) == ("delete", None, as_dict(ev(2)))


def test_update_keeps_unchanged_toast_sentinel(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Update(ENG, ev(1, payload=UNCHANGED_TOAST)),
               Commit(0, 0x100, 0x110, TS1))
    assert changes(out)[0].new["raw_payload"] is UNCHANGED_TOAST


# --- streamed transactions ------------------------------------------------------------


def test_streamed_transaction_is_emitted_at_commit_in_order(asm: ChangeAssembler, tmp_path: Path) -> None:
    seg1 = feed(
        asm,
        StreamStart(900, True),
        ENG,
        Insert(ENG, ev(1), xid=900),
        Insert(ENG, ev(2), xid=901),  # a subtransaction's change
        Update(ENG_FULL, ev(1, duration=5), old=ev(1), xid=900),
        StreamStop(),
    )
    assert seg1 == []
    assert asm.open_streams == 1
    (spill,) = spill_files(tmp_path)
    assert spill.name.startswith("pulse-stream-900-")

    # A regular transaction committed between segments goes through at once.
    regular = feed(asm, Begin(0x300, TS1, 950), Insert(ENG, ev(50)), Commit(0, 0x300, 0x310, TS1))
    assert [type(o) for o in regular] == [Change, TxnEnd]
    assert regular[0].position == Position(0x300, 1)
    assert spill.exists()

    seg2 = feed(asm, StreamStart(900, False), Delete(ENG, key=key_tuple(2), xid=901),
                Insert(ENG, ev(3), xid=900), StreamStop())
    assert seg2 == []
    assert spill_files(tmp_path) == [spill]
    assert asm.spilled_total == 5

    out = feed(asm, StreamCommit(900, 0, commit_lsn=0x500, end_lsn=0x540, commit_ts=TS2))
    *chs, end = out
    assert [c.position for c in chs] == [Position(0x500, s) for s in range(1, 6)]
    assert [(c.op, (c.new or c.old)["id"]) for c in chs] == [
        ("insert", 1), ("insert", 2), ("update", 1), ("delete", 2), ("insert", 3)]
    assert all(c.commit_ts == TS2 and c.table == "engagement_events" for c in chs)
    assert chs[0].new == as_dict(ev(1))  # values survive the spill, datetimes included
    assert chs[2].old == as_dict(ev(1))
    assert chs[3].old == {"id": 2}
    assert end == TxnEnd(0x500, 0x540, TS2, streamed=True)
    assert asm.open_streams == 0
    assert not spill.exists()
    assert spill_files(tmp_path) == []


def test_unchanged_toast_survives_the_spill(asm: ChangeAssembler) -> None:
    out = feed(asm, StreamStart(900, True), Update(ENG, ev(1, payload=UNCHANGED_TOAST), xid=900), StreamStop(),
               StreamCommit(900, 0, 0x500, 0x540, TS2))
    assert changes(out)[0].new["raw_payload"] is UNCHANGED_TOAST


def test_streamed_changes_of_other_tables_are_not_spilled(asm: ChangeAssembler, tmp_path: Path) -> None:
    out = feed(asm, StreamStart(900, True), Insert(OTHER_TABLE, (1, "x"), xid=900), StreamStop())
    assert out == []
    assert spill_files(tmp_path) == []
    assert asm.open_streams == 0
    assert feed(asm, StreamCommit(900, 0, 0x500, 0x540, TS2)) == [TxnEnd(0x500, 0x540, TS2, streamed=True)]


def test_two_streamed_transactions_interleaved(asm: ChangeAssembler, tmp_path: Path) -> None:
    feed(asm, StreamStart(900, True), Insert(ENG, ev(1), xid=900), StreamStop(),
         StreamStart(910, True), Insert(ENG, ev(10), xid=910), StreamStop(),
         StreamStart(900, False), Insert(ENG, ev(2), xid=900), StreamStop(),
         StreamStart(910, False), Insert(ENG, ev(11), xid=910), StreamStop())
    assert asm.open_streams == 2
    assert len(spill_files(tmp_path)) == 2
    second = feed(asm, StreamCommit(910, 0, 0x600, 0x640, TS2))
    assert [(c.new["id"], c.position) for c in changes(second)] == [(10, Position(0x600, 1)),
                                                                     (11, Position(0x600, 2))]
    assert asm.open_streams == 1
    first = feed(asm, StreamCommit(900, 0, 0x700, 0x740, TS2))
    assert [(c.new["id"], c.position) for c in changes(first)] == [(1, Position(0x700, 1)),
                                                                    (2, Position(0x700, 2))]
    assert spill_files(tmp_path) == []


def test_stream_abort_of_the_top_level_xid_drops_everything(asm: ChangeAssembler, tmp_path: Path) -> None:
    feed(asm, StreamStart(900, True), Insert(ENG, ev(1), xid=900), Insert(ENG, ev(2), xid=901), StreamStop())
    assert len(spill_files(tmp_path)) == 1
    assert feed(asm, StreamAbort(900, 900)) == []
    assert spill_files(tmp_path) == []
    assert asm.open_streams == 0
    # Nothing of it comes back, whatever follows.
    out = feed(asm, Begin(0x800, TS1, 1), Insert(ENG, ev(7)), Commit(0, 0x800, 0x810, TS1))
    assert [c.new["id"] for c in changes(out)] == [7]


def test_stream_abort_of_a_subxid_drops_only_its_changes(asm: ChangeAssembler, tmp_path: Path) -> None:
    feed(asm, StreamStart(900, True),
         Insert(ENG, ev(1), xid=900),
         Insert(ENG, ev(2), xid=901),
         Insert(ENG, ev(3), xid=902),
         Insert(ENG, ev(4), xid=901),
         StreamStop())
    assert feed(asm, StreamAbort(900, 901)) == []
    assert len(spill_files(tmp_path)) == 1  # the transaction is still open
    feed(asm, StreamStart(900, False), Insert(ENG, ev(5), xid=900), StreamStop())
    out = feed(asm, StreamCommit(900, 0, 0x500, 0x540, TS2))
    assert [(c.new["id"], c.position.seq) for c in changes(out)] == [(1, 1), (3, 2), (5, 3)]
    assert out[-1] == TxnEnd(0x500, 0x540, TS2, streamed=True)
    assert spill_files(tmp_path) == []


def test_stream_abort_of_an_unknown_xid_is_harmless(asm: ChangeAssembler, tmp_path: Path) -> None:
    feed(asm, StreamStart(900, True), Insert(ENG, ev(1), xid=900), StreamStop())
    assert feed(asm, StreamAbort(999, 999)) == []
    assert asm.open_streams == 1
    assert len(changes(feed(asm, StreamCommit(900, 0, 0x500, 0x540, TS2)))) == 1


def test_stream_commit_without_captured_changes_only_ends(asm: ChangeAssembler) -> None:
    assert feed(asm, StreamCommit(123, 0, 0x500, 0x540, TS2)) == [TxnEnd(0x500, 0x540, TS2, streamed=True)]


def test_spill_dir_is_created(tmp_path: Path) -> None:
    where = tmp_path / "nested" / "spill"
    asm = ChangeAssembler(spill_dir=where)
    feed(asm, StreamStart(900, True), Insert(ENG, ev(1), xid=900), StreamStop())
    assert len(spill_files(where)) == 1


def test_reset_discards_open_spills_and_the_open_transaction(asm: ChangeAssembler, tmp_path: Path) -> None:
    feed(asm, StreamStart(900, True), Insert(ENG, ev(1), xid=900), StreamStop(),
         StreamStart(910, True), Insert(ENG, ev(2), xid=910), StreamStop(),
         Begin(0x100, TS1, 1), Insert(ENG, ev(3)))
    assert len(spill_files(tmp_path)) == 2
    asm.reset()
    assert spill_files(tmp_path) == []
    assert asm.open_streams == 0
    with pytest.raises(PgOutputError):
        feed(asm, Insert(ENG, ev(4)))  # the open transaction is forgotten too
    # After a reconnect the server resends the streamed transaction from the start.
    out = feed(asm, StreamStart(900, True), Insert(ENG, ev(1), xid=900), StreamStop(),
               StreamCommit(900, 0, 0x500, 0x540, TS2))
    assert [(c.new["id"], c.position) for c in changes(out)] == [(1, Position(0x500, 1))]


def test_reset_restarts_the_ordinal(asm: ChangeAssembler) -> None:
    feed(asm, Begin(0x100, TS1, 1), Insert(ENG, ev(1)), Insert(ENG, ev(2)))
    asm.reset()
    out = feed(asm, Begin(0x100, TS1, 1), Insert(ENG, ev(1)))
    assert changes(out)[0].position == Position(0x100, 1)


# --- truncate -------------------------------------------------------------------------


def test_truncate_of_a_captured_table_yields_truncated(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Truncate((ENG, OTHER_TABLE, CONTENT), cascade=False,
                                                   restart_identity=False), Commit(0, 0x100, 0x110, TS1))
    truncs = [o for o in out if isinstance(o, Truncated)]
    assert [t.table for t in truncs] == ["engagement_events", "content"]
    assert all(t.position.lsn == 0x100 for t in truncs)
    assert out[-1] == TxnEnd(0x100, 0x110, TS1)


def test_truncate_of_other_tables_and_schemas_is_ignored(asm: ChangeAssembler) -> None:
    out = feed(asm, Begin(0x100, TS1, 1), Truncate((OTHER_TABLE, OTHER_SCHEMA), False, False),
               Commit(0, 0x100, 0x110, TS1))
    assert out == [TxnEnd(0x100, 0x110, TS1)]


def test_truncate_in_an_aborted_streamed_transaction_is_not_reported(asm: ChangeAssembler) -> None:
    out = feed(asm, StreamStart(900, True), Truncate((ENG,), False, False, xid=900), StreamStop(),
               StreamAbort(900, 900))
    assert [o for o in out if isinstance(o, Truncated)] == []


def test_large_streamed_transaction_replays_across_read_chunks(asm: ChangeAssembler, tmp_path: Path) -> None:
    # Spill records are read back in 4 MiB chunks: a few thousand rows and one
    # row bigger than a chunk make records straddle chunk boundaries.
    small = '{"pad": "' + "p" * 2000 + '"}'
    huge = '{"blob": "' + "h" * (5 << 20) + '"}'
    records: list = [StreamStart(900, True)]
    ids = []
    for i in range(1, 3001):
        payload = huge if i == 1500 else small
        records.append(Insert(ENG, ev(i, payload=payload), xid=900 if i % 7 else 901))
        ids.append(i)
    records.append(StreamStop())
    feed(asm, *records)
    assert spill_files(tmp_path)
    out = feed(asm, StreamCommit(900, 0, 0x900, 0x940, TS2))
    chs = changes(out)
    assert [c.new["id"] for c in chs] == ids
    assert [c.position.seq for c in chs] == list(range(1, 3001))
    assert chs[1499].new["raw_payload"] == huge
    assert all(c.new["raw_payload"] == small for c in chs if c.new["id"] != 1500)
    assert spill_files(tmp_path) == []
