"""pulse.fsutil: the durable file changes the sinks' spools and outboxes make."""

from __future__ import annotations

import os

import pytest

from pulse import fsutil


def _record_fsyncs(monkeypatch) -> list[os.stat_result]:
    """Each fsync'd descriptor's stat, taken while it is open; the real fsync still runs."""
    seen: list[os.stat_result] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.fstat(fd))
        real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    return seen


def test_fsync_dir_syncs_the_folder_itself_and_leaves_no_descriptor_open(tmp_path, monkeypatch) -> None:
    seen = _record_fsyncs(monkeypatch)
    before = set(os.listdir("/proc/self/fd"))
    fsutil.fsync_dir(tmp_path)
    assert set(os.listdir("/proc/self/fd")) == before
    assert [(s.st_dev, s.st_ino) for s in seen] == [(tmp_path.stat().st_dev, tmp_path.stat().st_ino)]


def test_fsync_dir_of_a_missing_folder_raises_oserror(tmp_path) -> None:
    with pytest.raises(OSError):
        fsutil.fsync_dir(tmp_path / "gone")


def test_replace_durably_syncs_the_new_file_before_its_folder_and_leaves_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"old")
    seen = _record_fsyncs(monkeypatch)
    fsutil.replace_durably(target, b"new\n")
    assert target.read_bytes() == b"new\n" and os.listdir(tmp_path) == ["state"]
    # the file's bytes (under its temporary name, same inode), then the folder that now names it
    assert [s.st_ino for s in seen] == [target.stat().st_ino, tmp_path.stat().st_ino]


def test_replace_durably_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch) -> None:
    target = tmp_path / "position"
    target.write_bytes(b"5/1\n")

    def no_rename(src, dst) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", no_rename)
    with pytest.raises(OSError):
        fsutil.replace_durably(target, b"9/0\n")
    assert target.read_bytes() == b"5/1\n"
    # the temporary file stays behind, named for the folder's owner to remove at its next start
    assert [p.name.startswith(".tmp-position-") for p in tmp_path.iterdir() if p != target] == [True]


def test_truncate_durably_cuts_the_open_file_and_syncs_it(tmp_path, monkeypatch) -> None:
    segment = tmp_path / "events.jsonl"
    segment.write_bytes(b'{"a": 1}\n{"a": 2')
    seen = _record_fsyncs(monkeypatch)
    with open(segment, "r+b") as fh:
        fh.seek(0, os.SEEK_END)
        fsutil.truncate_durably(fh, 9)
    assert segment.read_bytes() == b'{"a": 1}\n'
    assert [s.st_ino for s in seen] == [segment.stat().st_ino] and seen[0].st_size == 9
