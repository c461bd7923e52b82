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
