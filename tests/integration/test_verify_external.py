"""`pulse verify --sink external`: the accounting of every event (delivered, pending, dead-lettered), a lost
outbox entry named exactly, and `--repair` sending it again (real PostgreSQL, a real receiver, the CLI)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pulse.receiver import Receiver
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.external import ExternalSink
from pulse.sinks.external_local import list_segments, read_state
from pulse.sinks.external_stream import pending_after

from .pipeline_helpers import Running, insert_content, insert_events, wait_for
from .test_external_sink import SECRET, received_by_event, settings, source_ids


def _verify(db, rec: Receiver, folder, *extra: str):
    from pulse.cli.main import app

    env = {"PULSE_DATABASE_URL": db.url, "PULSE_SLOT": db.slot, "PULSE_PUBLICATION": db.publication,
           "PULSE_EXTERNAL_URL": rec.url, "PULSE_EXTERNAL_SECRET": SECRET, "PULSE_EXTERNAL__OUTBOX_DIR": str(folder),
           "PULSE_VERIFY__SETTLE_S": "2"}
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
