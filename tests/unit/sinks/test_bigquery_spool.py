"""Unit tests of the Parquet spool: atomic files, positions from names, the lock, the owner."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pulse.errors import TerminalError
from pulse.model import ZERO, Position
from pulse.sinks.bigquery.spool import Spool, SpoolOwner, file_name, spool_folder, upload_folders


def _t(n=3):
    return pa.table({"x": list(range(n))})


def test_files_sort_by_position_and_highest_reads_names(tmp_path):
    s = Spool(tmp_path)
    s.append(_t(), Position(0x20, 0), Position(0x20, 5))
    s.append(_t(), Position(0x1, 0), Position(0x10, 9))
    assert [f.last for f in s.files()] == [Position(0x10, 9), Position(0x20, 5)]
    assert s.highest() == Position(0x20, 5)
    assert s.files()[0].first == Position(1, 0)


def test_a_retried_batch_is_not_written_twice(tmp_path):
    s = Spool(tmp_path)
    p1 = s.append(_t(), Position(1, 0), Position(1, 2))
    p2 = s.append(_t(), Position(1, 0), Position(1, 2))
    assert p1 == p2 and len(s.files()) == 1


def test_partial_files_are_ignored_and_cleaned(tmp_path):
    s = Spool(tmp_path)
    (tmp_path / ".tmp-abc").write_bytes(b"half a parquet file")
    (tmp_path / "junk.parquet").write_bytes(b"")
    assert s.files() == [] and s.highest() == ZERO
    assert s.clean_partial() == 1 and not (tmp_path / ".tmp-abc").exists()


def test_position_file_survives_an_empty_spool_and_never_goes_back(tmp_path):
    s = Spool(tmp_path)
    s.write_position(Position(5, 1))
    s.write_position(Position(4, 9))
    assert Spool(tmp_path).highest() == Position(5, 1)


def test_names_are_fixed_width():
    assert file_name(Position(1, 2), Position(3, 4)) == "0000000000000003-0000000004-0000000000000001-0000000002.parquet"


def test_the_lock_is_exclusive(tmp_path):
    s = Spool(tmp_path)
    with s.locked() as got:
        assert got
        with Spool(tmp_path).locked(wait=False) as other:
            assert other is False


# -- the owner ---------------------------------------------------------------------------------------

RUN = SpoolOwner("proj", "ds", "engagement_events", slot="pulse")


def test_a_new_folder_is_claimed_and_reopened_by_its_owner(tmp_path):
    Spool(tmp_path, owner=RUN)
    assert json.loads((tmp_path / "owner.json").read_text()) == {
        "project": "proj", "dataset": "ds", "table": "engagement_events", "slot": "pulse",
        "topic": None, "partition": None, "group": None}
    assert Spool(tmp_path, owner=RUN).owner == RUN


@pytest.mark.parametrize("other", [
    SpoolOwner("proj", "other_ds", "engagement_events", slot="pulse"),
    SpoolOwner("other-proj", "ds", "engagement_events", slot="pulse"),
    SpoolOwner("proj", "ds", "engagement_events", slot="another_slot"),
    SpoolOwner("proj", "ds", "engagement_events", topic="t", partition=0, group="pulse-bigquery"),
])
def test_another_owner_is_refused_with_the_fix(tmp_path, other):
    Spool(tmp_path, owner=RUN).append(_t(), Position(1, 0), Position(1, 0))
    with pytest.raises(TerminalError) as info:
        Spool(tmp_path, owner=other)
    assert "belongs to table proj.ds.engagement_events, slot pulse" in info.value.message
    assert "bigquery.spool_dir" in info.value.hint


def test_a_folder_of_batches_without_an_owner_is_refused(tmp_path):
    Spool(tmp_path).append(_t(), Position(1, 0), Position(1, 0))  # as an earlier Pulse left it
    with pytest.raises(TerminalError, match="records no owner") as info:
        Spool(tmp_path, owner=RUN)
    assert "pulse upload --once --spool-dir" in info.value.hint
    (tmp_path / "only-position").mkdir()
    Spool(tmp_path / "only-position").write_position(Position(9, 0))  # a position alone would skip events too
    with pytest.raises(TerminalError, match="records no owner"):
        Spool(tmp_path / "only-position", owner=RUN)


def test_the_uploader_checks_the_table_only_and_claims_nothing(tmp_path):
    Spool(tmp_path, owner=RUN)
    other_slot = SpoolOwner("proj", "ds", "engagement_events", slot="x")
    assert Spool(tmp_path, owner=other_slot, table_only=True).owner == RUN
    with pytest.raises(TerminalError):
        Spool(tmp_path, owner=SpoolOwner("proj", "ds2", "engagement_events"), table_only=True)
    (tmp_path / "fresh").mkdir()
    assert Spool(tmp_path / "fresh", owner=RUN, table_only=True).owner is None
    assert not (tmp_path / "fresh" / "owner.json").exists()


def test_default_folders_are_namespaced_by_table_and_stream():
    a = spool_folder(None, RUN)
    assert a == Path("bigquery_batches/proj.ds.engagement_events/pulse")
    assert spool_folder(None, SpoolOwner("proj", "ds", "engagement_events", slot="other")) != a
    assert spool_folder(None, SpoolOwner("proj", "ds2", "engagement_events", slot="pulse")) != a
    part = SpoolOwner.of("proj", "ds", "engagement_events", "bigquery@pulse.engagement.enriched/4", slot="pulse",
                         group="pulse-bigquery")
    assert (part.topic, part.partition, part.slot) == ("pulse.engagement.enriched", 4, None)
    assert spool_folder(None, part) == Path(
        "bigquery_batches/proj.ds.engagement_events/pulse-bigquery/pulse.engagement.enriched_4")
    # A folder set by the user is used as it is; a partition gets its sub-folder, as before.
    assert spool_folder(Path("/s"), RUN) == Path("/s")
    assert spool_folder(Path("/s"), part) == Path("/s/pulse.engagement.enriched_4")


def test_upload_finds_the_run_and_partition_folders_of_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    owner = SpoolOwner("proj", "ds", "engagement_events", slot="pulse", group="pulse-bigquery")
    assert upload_folders(None, owner) == []
    part = SpoolOwner.of("proj", "ds", "engagement_events", "bigquery@t/0", slot=None, group="pulse-bigquery")
    other = SpoolOwner("proj", "ds", "engagement_events", slot="other")
    for o in (RUN, part, other):
        spool_folder(None, o).mkdir(parents=True)
    assert upload_folders(None, owner) == [spool_folder(None, RUN), spool_folder(None, part)]
