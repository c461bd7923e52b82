"""A BigQuery spool knows its owner (issue 13, item 5), against the emulator.

Before, every pipeline started from one directory spooled into
`bigquery_batches/`, and a spool written for one dataset or slot was taken
by whichever pipeline opened it next. Now the default folder is namespaced
by table and slot (or consumer group and partition), the folder records its
owner, and a pipeline of another table or slot is refused with the fix.
`pulse upload` with the same configuration still finds what was spooled.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from pulse.config import Settings
from pulse.errors import TerminalError
from pulse.model import Batch, Position
from pulse.sinks.bigquery.sink import BigQuerySink

from ..conftest import unique
from .pipeline_helpers import wait_for
from .bigquery_helpers import bq_event
from .pipeline_helpers import pulse_cmd


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty working directory, with no spool folder configured."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PULSE_BIGQUERY__SPOOL_DIR", raising=False)
    return tmp_path


def _settings(services, dataset: str, slot: str = "pulse", **bigquery) -> Settings:
    return Settings(database={"slot": slot},
                    bigquery={"project": services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), "dataset": dataset,
                              "endpoint": services["PULSE_BIGQUERY_ENDPOINT"], "load_interval_s": 0.2,
                              "request_timeout_s": 20, **bigquery})


def _ids(client, dataset: str) -> list[int]:
    try:
        return sorted(r[0] for r in client.query(f"SELECT event_id FROM `{dataset}.engagement_events`").result())
    except Exception:  # the table is not there yet
        return []


def _batch(ids: range, lsn: int) -> Batch:
    return Batch(tuple(bq_event(i, Position(lsn, i), '{"i": %d}' % i) for i in ids))


def test_two_pipelines_with_different_slots_in_one_directory_get_two_spools(services, bq, in_tmp):  # noqa: F811
    client, dataset = bq
    a = BigQuerySink.from_settings(_settings(services, dataset, slot="slot_a"))
    b = BigQuerySink.from_settings(_settings(services, dataset, slot="slot_b"))
    a.open()
    b.open()
    try:
        a.write(_batch(range(1, 4), 10))
        b.write(_batch(range(4, 7), 20))
        assert a.spool.dir != b.spool.dir
        table = in_tmp / "bigquery_batches" / f"{a.cfg.project}.{dataset}.engagement_events"
        assert (in_tmp / a.spool.dir).resolve() == (table / "slot_a").resolve()
        assert (in_tmp / b.spool.dir).resolve() == (table / "slot_b").resolve()
        for sink, slot in ((a, "slot_a"), (b, "slot_b")):
            owner = json.loads((sink.spool.dir / "owner.json").read_text())
            assert (owner["project"], owner["dataset"], owner["table"], owner["slot"]) == (
                a.cfg.project, dataset, "engagement_events", slot)
        wait_for(lambda: not a.spool.files() and not b.spool.files(), 60, "both spools to be loaded")
    finally:
        a.close()
        b.close()
    assert _ids(client, dataset) == list(range(1, 7))
    # Each spool remembers its own position, not the other pipeline's.
    assert a.spool.read_position() == Position(10, 3) and b.spool.read_position() == Position(20, 6)


def test_a_spool_of_another_dataset_or_slot_is_refused_with_the_fix(services, bq, tmp_path):  # noqa: F811
    client, dataset = bq
    spool = tmp_path / "spool"
    first = BigQuerySink.from_settings(_settings(services, dataset, slot="slot_a", spool_dir=str(spool),
                                                 upload_in_process=False))
    first.open()
    first.write(_batch(range(1, 4), 10))
    first.close()
    other_dataset = unique("pulse_bq_other")
    for settings in (_settings(services, other_dataset, slot="slot_a", spool_dir=str(spool)),
                     _settings(services, dataset, slot="slot_b", spool_dir=str(spool))):
        intruder = BigQuerySink.from_settings(settings)
        with pytest.raises(TerminalError) as info:
            intruder.open()
        intruder.close()
        assert f"belongs to table {first.cfg.project}.{dataset}.engagement_events, slot slot_a" in info.value.message
        assert "bigquery.spool_dir" in info.value.hint and "pulse upload" in info.value.hint
    assert len(first.spool.files()) == 1  # untouched

    # `pulse upload` for another dataset refuses the folder too; for its own, it loads it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_BIGQUERY__SPOOL")}
    env.update({"PULSE_BIGQUERY_PROJECT": first.cfg.project, "PULSE_BIGQUERY_ENDPOINT": services[
        "PULSE_BIGQUERY_ENDPOINT"]})
    out = subprocess.run(pulse_cmd("upload", "--once", "--spool-dir", str(spool)),
                         env={**env, "PULSE_BIGQUERY_DATASET": other_dataset},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "belongs to table" in out.stderr, out.stderr[-3000:]
    assert _ids(client, dataset) == []
    out = subprocess.run(pulse_cmd("upload", "--once", "--spool-dir", str(spool)),
                         env={**env, "PULSE_BIGQUERY_DATASET": dataset}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _ids(client, dataset) == [1, 2, 3]


def test_upload_finds_what_run_and_consume_spooled_in_their_default_folders(services, bq, in_tmp):  # noqa: F811
    """`pulse upload` with the same configuration (slot, consumer group) loads both kinds of default folder."""
    client, dataset = bq
    settings = _settings(services, dataset, slot="slot_u", upload_in_process=False)
    run_sink = BigQuerySink.from_settings(settings)
    part_sink = BigQuerySink.from_settings(settings, name="bigquery@pulse.engagement.enriched/3")
    for sink, ids, lsn in ((run_sink, range(1, 4), 10), (part_sink, range(4, 6), 20)):
        sink.open()
        sink.write(_batch(ids, lsn))
        sink.close()
    table = in_tmp / "bigquery_batches" / f"{settings.bigquery.project}.{dataset}.engagement_events"
    assert (in_tmp / part_sink.spool.dir).resolve() == (table / "pulse-bigquery" / "pulse.engagement.enriched_3")\
        .resolve()
    owner = json.loads((part_sink.spool.dir / "owner.json").read_text())
    assert (owner["topic"], owner["partition"], owner["group"], owner["slot"]) == (
        "pulse.engagement.enriched", 3, "pulse-bigquery", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_BIGQUERY__SPOOL")}
    env.update({"PULSE_BIGQUERY_PROJECT": settings.bigquery.project, "PULSE_BIGQUERY_DATASET": dataset,
                "PULSE_BIGQUERY_ENDPOINT": services["PULSE_BIGQUERY_ENDPOINT"], "PULSE_SLOT": "slot_u"})
    out = subprocess.run(pulse_cmd("upload", "--once", "--json"), env=env, cwd=in_tmp, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _ids(client, dataset) == [1, 2, 3, 4, 5]
    # --json: what was loaded, per folder, as one document on stdout (the logs stay on stderr).
    report = json.loads(out.stdout)
    assert report["rows"] == 5 and report["files"] == 2 and len(report["folders"]) == 2
    assert report["table"].endswith(f"{dataset}.engagement_events")
