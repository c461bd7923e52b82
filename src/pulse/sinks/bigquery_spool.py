"""The local spool of Parquet files awaiting a load job (`bigquery_batches/`).

A file is the durable copy of one batch: written to a temporary name,
fsync'd, renamed into place, and the folder fsync'd, so after a crash a file
is either whole or absent (a leftover `.tmp-*` is deleted on open). Its name
carries the positions it holds,

    <last lsn:016x>-<last seq:010d>-<first lsn:016x>-<first seq:010d>.parquet

so names sort in position order and the highest spooled position is read
from the names alone. `position` (a small text file, written atomically
after a load is applied) remembers how far the table is, so `open()` knows
its position with the spool empty and BigQuery unreachable.

Loaders (the sink's thread, `pulse upload`) take an exclusive `flock` on
`.lock` while they apply files, so two of them never load the same file; the
OS drops the lock when a process dies, even by `kill -9`.
"""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pulse.errors import TerminalError, TransientError
from pulse.model import ZERO, Position

_NAME = re.compile(r"^([0-9a-f]{16})-(\d{10})-([0-9a-f]{16})-(\d{10})\.parquet$")


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    first: Position
    last: Position
    size: int
    mtime: float


def file_name(first: Position, last: Position) -> str:
    return f"{last.lsn:016x}-{last.seq:010d}-{first.lsn:016x}-{first.seq:010d}.parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A folder of Parquet files, each one batch, named by position."""

    def __init__(self, directory: Path, compression: str = "snappy") -> None:
        self.dir = Path(directory)
        self.compression = compression
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(f"cannot create the spool folder {self.dir}: {exc}",
                                hint="set bigquery.spool_dir to a writable folder") from exc

    # -- writing -------------------------------------------------------------------

    def clean_partial(self) -> int:
        """Delete what a crash mid-write left (temporary files); return how many."""
        n = 0
        for p in self.dir.glob(".tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def append(self, table: pa.Table, first: Position, last: Position) -> Path:
        """Write `table` durably as one file; idempotent for the same positions."""
        final = self.dir / file_name(first, last)
        if final.exists():
            return final  # a retried batch: it is already durable
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression=self.compression)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.dir)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TransientError(f"spool write to {self.dir} failed: {exc}") from exc
        return final

    # -- reading ---------------------------------------------------------------------

    def files(self) -> list[SpoolFile]:
        """The complete spool files, in position order."""
        out = []
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            m = _NAME.match(entry.name)
            if not m:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # removed by a loader meanwhile
            out.append(SpoolFile(Path(entry.path), Position(int(m[3], 16), int(m[4])),
                                 Position(int(m[1], 16), int(m[2])), st.st_size, st.st_mtime))
        out.sort(key=lambda f: f.last)
        return out

    def highest(self) -> Position:
        """The highest position spooled or recorded as applied (ZERO when none)."""
        files = self.files()
        top = files[-1].last if files else ZERO
        return max(top, self.read_position())

    def bytes(self) -> int:
        return sum(f.size for f in self.files())

    # -- the applied position ------------------------------------------------------------

    def read_position(self) -> Position:
        try:
            return Position.parse((self.dir / "position").read_text().strip())
        except (FileNotFoundError, ValueError):
            return ZERO

    def write_position(self, pos: Position) -> None:
        if pos <= self.read_position():
            return
        tmp = self.dir / f".tmp-position-{uuid.uuid4().hex}"
        with open(tmp, "w") as fh:
            fh.write(str(pos) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / "position")
        _fsync_dir(self.dir)

    def remove(self, files: list[SpoolFile]) -> None:
        for f in files:
            f.path.unlink(missing_ok=True)
        _fsync_dir(self.dir)

    @contextmanager
    def locked(self, wait: bool = True) -> Iterator[bool]:
        """Hold the loaders' exclusive lock; yields False when `wait` is False and it is taken."""
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
