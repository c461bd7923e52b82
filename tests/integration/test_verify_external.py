"""`pulse verify --sink external`: the accounting of every event (delivered, pending, dead-lettered), a lost
outbox entry named exactly, and `--repair` sending it again (real PostgreSQL, a real receiver, the CLI)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pulse.receiver import Receiver
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.external.sink import ExternalSink
from pulse.sinks.external.local import list_segments, read_state
from pulse.sinks.external.stream import pending_after

from .pipeline_helpers import Running, insert_content, insert_events, wait_for
from .external_helpers import SECRET, outbox_rows, received_by_event, settings, source_ids


def _verify(db, rec: Receiver, folder, *extra: str, env: dict[str, str] | None = None):
    from pulse.cli.main import app

    env = {"PULSE_DATABASE_URL": db.url, "PULSE_SLOT": db.slot, "PULSE_PUBLICATION": db.publication,
           "PULSE_EXTERNAL_URL": rec.url, "PULSE_EXTERNAL_SECRET": SECRET, "PULSE_VERIFY__SETTLE_S": "2",
           **({"PULSE_EXTERNAL__OUTBOX_DIR": str(folder)} if folder is not None else {}), **(env or {})}
    out = CliRunner().invoke(app, ["verify", "--sink", "external", "--json", *extra], env=env)
    start = out.output.find('{\n  "ok"')  # the document, among the log lines of a repair's pipeline
    doc = json.JSONDecoder().raw_decode(out.output, start)[0] if start >= 0 else None
    return out.exit_code, doc, out.output


def test_a_lost_outbox_entry_is_named_exactly_and_repair_makes_the_next_verify_pass(scratch_db, tmp_path):
    folder = tmp_path / "outbox"
    rec = Receiver(secret=SECRET, seed=3).start()
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    try:
        cfg = settings(scratch_db, rec, outbox_dir=str(folder))
        with Running(Pipeline(cfg, [ExternalSink.from_settings(cfg)])):
            content = insert_content(cur, 3)
            delivered = insert_events(cur, content, 50)
            wait_for(lambda: set(delivered) <= set(received_by_event(rec)), 30, "50 events delivered")
            wait_for(lambda: read_state(folder).ledger.count() >= 50, 10, "the ledger to hold them")
            rec.set_faults(error_500=1.0)  # the endpoint fails every request; the next events wait in the outbox
            lost = insert_events(cur, content, 20)
            wait_for(lambda: pending_after(folder, read_state(folder).delivered) == 20, 30, "20 pending events")

        code, doc, text = _verify(scratch_db, rec, folder)
        assert code == 0, text  # everything accounted for: 50 delivered, 20 pending
        acc = doc["results"][0]["accounting"]
        assert acc["delivered"] == 50 and acc["pending"] == 20 and acc["missing"] == 0, acc

        for path, _first in list_segments(folder):  # the disk loses the pending frames
            path.unlink()
        code, doc, text = _verify(scratch_db, rec, folder)
        assert code == 1, text
        result = doc["results"][0]
        assert {int(f["key"]) for f in result["findings"]} == set(lost)
        assert {f["kind"] for f in result["findings"]} == {"missing"}
        assert result["accounting"]["delivered"] == 50

        code, doc, text = _verify(scratch_db, rec, folder, "--repair")
        assert code == 0, text
        result = doc["results"][0]
        assert result["repair"]["backfilled_ids"] == 20 and result["accounting"]["pending"] == 20, result

        rec.set_faults(error_500=0.0)  # back: the repaired events go out, under the ids they always had
        with Running(Pipeline(cfg, [ExternalSink.from_settings(cfg)])):
            expected = source_ids(cur)
            wait_for(lambda: set(received_by_event(rec)) == expected, 30, "all 70 events at the receiver")
            wait_for(lambda: read_state(folder).ledger.count() >= 70, 10, "the ledger to hold all 70")
        code, doc, text = _verify(scratch_db, rec, folder)
        assert code == 0, text
        assert doc["results"][0]["accounting"]["delivered"] == 70
        assert all(len(ids) == 1 for ids in received_by_event(rec).values())
    finally:
        rec.stop()


def _ledger(cur) -> set[int]:
    """Every id in the PostgreSQL outbox's ledger, read straight from its table."""
    cur.execute("SELECT ranges FROM pulse.external_delivered")
    ids: set[int] = set()
    for (flat,) in cur.fetchall():
        for lo, hi in zip(flat[::2], flat[1::2]):
            ids.update(range(lo, hi + 1))
    return ids


def _drop_from_ledger(cur, gone: set[int]) -> None:
    """What a bad restore of the ledger would do: the ranges rewritten without `gone`."""
    cur.execute("SELECT sink, block, ranges FROM pulse.external_delivered")
    for sink, block, flat in cur.fetchall():
        ids = sorted({i for lo, hi in zip(flat[::2], flat[1::2]) for i in range(lo, hi + 1)} - gone)
        out: list[int] = []
        for i in ids:
            if out and out[-1] == i - 1:
                out[-1] = i
            else:
                out += [i, i]
        cur.execute("UPDATE pulse.external_delivered SET ranges = %s::bigint[] WHERE sink = %s AND block = %s",
                    (out, sink, block))


def test_postgres_outbox_lost_rows_and_ledger_entries_are_named_exactly_and_repair_makes_verify_pass(scratch_db):
    rec = Receiver(secret=SECRET, seed=5).start()
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    env = {"PULSE_EXTERNAL__OUTBOX": "postgres"}
    try:
        # Failing requests stay pending (never dead-lettered) for the length of the test.
        cfg = settings(scratch_db, rec, outbox="postgres", max_attempts=100_000)
        with Running(Pipeline(cfg, [ExternalSink.from_settings(cfg)])):
            content = insert_content(cur, 3)
            delivered = insert_events(cur, content, 50)
            wait_for(lambda: set(delivered) <= set(received_by_event(rec)), 30, "50 events delivered")
            wait_for(lambda: set(delivered) <= _ledger(cur), 10, "the ledger to hold them")
            rec.set_faults(error_500=1.0)  # the endpoint fails every request; the next events wait in the outbox
            waiting = insert_events(cur, content, 20)
            wait_for(lambda: outbox_rows(cur) == 20, 30, "20 rows in the outbox")
        cur.execute("SELECT count(*), max(cardinality(ranges)) FROM pulse.external_delivered")
        rows, widest = cur.fetchone()
        assert rows == 1 and widest == 2, (rows, widest)  # 50 ids without gaps: one block row, one range

        code, doc, text = _verify(scratch_db, rec, None, env=env)
        assert code == 0, text  # everything accounted for: 50 delivered, 20 pending
        acc = doc["results"][0]["accounting"]
        assert (acc["outbox"], acc["delivered"], acc["pending"], acc["missing"]) == ("postgres", 50, 20, 0), acc

        lost_rows = set(waiting[3:8])  # outbox rows deleted by hand: never sent
        cur.execute("DELETE FROM pulse.external_outbox WHERE event_id = ANY(%s)", (sorted(lost_rows),))
        assert cur.rowcount == 5
        lost_ledger = {delivered[0], delivered[17], delivered[18]}  # delivered, then forgotten by the ledger
        _drop_from_ledger(cur, lost_ledger)
        code, doc, text = _verify(scratch_db, rec, None, env=env)
        assert code == 1, text
        result = doc["results"][0]
        assert {int(f["key"]) for f in result["findings"]} == lost_rows | lost_ledger
        assert {f["kind"] for f in result["findings"]} == {"missing"}
        acc = result["accounting"]
        assert (acc["delivered"], acc["pending"], acc["missing"]) == (47, 15, 8), acc

        code, doc, text = _verify(scratch_db, rec, None, "--repair", env=env)
        assert code == 0, text
        result = doc["results"][0]
        assert result["repair"]["backfilled_ids"] == 8, result
        assert result["accounting"]["pending"] + result["accounting"]["delivered"] == 70, result

        rec.set_faults(error_500=0.0)  # back: every event goes out, under the ids it always had
        with Running(Pipeline(cfg, [ExternalSink.from_settings(cfg)])):
            expected = source_ids(cur)
            wait_for(lambda: set(received_by_event(rec)) == expected, 30, "all 70 events at the receiver")
            wait_for(lambda: outbox_rows(cur) == 0 and expected <= _ledger(cur), 10, "the ledger to hold all 70")
        code, doc, text = _verify(scratch_db, rec, None, env=env)
        assert code == 0, text
        assert doc["results"][0]["accounting"]["delivered"] == 70
        assert all(len(ids) == 1 for ids in received_by_event(rec).values())  # the same CloudEvent id each time
    finally:
        rec.stop()


def test_postgres_ledger_merges_ranges_across_blocks_and_lanes_resolving_at_once(scratch_db):
    from concurrent.futures import ThreadPoolExecutor

    from pulse.sinks.external.outbox import LEDGER_BLOCK_BITS
    from .external_helpers import outbox_for

    outbox = outbox_for(scratch_db)
    edge = 1 << LEDGER_BLOCK_BITS
    ids = list(range(edge - 300, edge + 300)) + [5 * edge + 7]  # across a block boundary, and a lone id

    def lane(k: int) -> None:  # four lanes, each resolving every fourth id, ten ids per transaction
        conn = outbox.connect()
        try:
            mine = ids[k::4]
            for i in range(0, len(mine), 10):
                with conn, conn.cursor() as cur:
                    outbox.record_resolved(cur, mine[i:i + 10])
        finally:
            conn.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lane, range(4)))
    conn = scratch_db.connect()
    try:
        cur = conn.cursor()
        assert _ledger(cur) == set(ids)
        cur.execute("SELECT block, ranges FROM pulse.external_delivered ORDER BY block")
        assert cur.fetchall() == [(0, [edge - 300, edge - 1]), (1, [edge, edge + 299]), (5, [5 * edge + 7] * 2)]
    finally:
        conn.close()
