"""Unit tests of the Parquet spool: atomic files, positions from names, the lock."""

from __future__ import annotations

import pyarrow as pa

from pulse.model import ZERO, Position
from pulse.sinks.bigquery_spool import Spool, file_name


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
