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

The in-process loader reads the tables it just spooled from memory
(`recent`, bounded by `memory_bytes`; the oldest are forgotten first), so a
load does not decode the files it is about to upload again. The files stay
the durable copy; `pulse upload` and a restarted sink read them from disk.

Loaders (the sink's thread, `pulse upload`) take an exclusive `flock` on
`.lock` while they apply files, so two of them never load the same file; the
OS drops the lock when a process dies, even by `kill -9`.

A spool knows its owner. `owner.json` records the table it loads (project,
dataset, table) and the stream it spools: the replication slot (`pulse run`)
or the Kafka topic, partition and consumer group (`pulse consume`). The sink
claims an empty folder and refuses, with the fix, a folder of another owner,
or one that holds batches but no record (an earlier Pulse's): its `position`
file would make this pipeline skip events, its files would load into the
wrong table. `pulse upload` checks the table only (it loads files; the
position they carry is the writer's business). The default folder is
namespaced (`spool_folder`), so pipelines started from one directory never
meet in one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pulse.errors import ConfigError, TerminalError, TransientError
from pulse.fsutil import fsync_dir, replace_durably
from pulse.model import ZERO, Position
from pulse.sinks.base import SinkInstance

_NAME = re.compile(r"^([0-9a-f]{16})-(\d{10})-([0-9a-f]{16})-(\d{10})\.parquet$")

#: Root of the default spool folders, relative to the working directory.
DEFAULT_ROOT = Path("bigquery_batches")
OWNER_FILE = "owner.json"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# The loader's combined upload files (bigquery.load.Loader._combined), left alone by clean_partial.
UPLOAD_TMP_PREFIX = ".tmp-upload-"


@dataclass(frozen=True)
class SpoolOwner:
    """The pipeline a spool folder belongs to: the table it loads and the stream it spools."""

    project: str
    dataset: str
    table: str
    slot: str | None = None  # pulse run
    topic: str | None = None  # pulse consume: one folder per partition
    partition: int | None = None
    group: str | None = None

    @classmethod
    def of(cls, project: str, dataset: str, table: str, instance: "SinkInstance | str", *, slot: str | None,
           group: str | None) -> "SpoolOwner":
        """The owner of a sink instance: `pulse run`'s (a slot) or a Kafka partition's (`pulse consume`)."""
        instance = SinkInstance.of(instance)
        if not instance.partitioned:
            return cls(project, dataset, table, slot=slot)
        return cls(project, dataset, table, topic=instance.topic, partition=instance.partition, group=group)

    @property
    def table_id(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"

    def describe(self) -> str:
        stream = (f"slot {self.slot}" if self.topic is None
                  else f"topic {self.topic} partition {self.partition} of consumer group {self.group}")
        return f"table {self.table_id}, {stream}"


def spool_folder(spool_dir: Path | None, owner: SpoolOwner) -> Path:
    """The folder a sink instance spools into.

    `spool_dir` set: that folder (`pulse run`) or its `<topic>_<partition>`
    sub-folder (`pulse consume`). Unset: `bigquery_batches/<project>.<dataset>.<table>/`
    then `<slot>` or `<group>/<topic>_<partition>` (slot names have no '-', group names
    `<prefix>-<sink>` do, so the two never collide).
    """
    if spool_dir is not None:
        root = Path(spool_dir)
    else:
        root = DEFAULT_ROOT / _safe(owner.table_id) / _safe((owner.group if owner.topic is not None
                                                             else owner.slot) or "default")
    if owner.topic is not None:
        root = root / _safe(f"{owner.topic}/{owner.partition}")
    return root


def upload_folders(spool_dir: Path | None, owner: SpoolOwner) -> list[Path]:
    """The spool folders `pulse upload` loads: those that `run` / `consume` write with the same config.

    `owner` carries the configured slot and the bigquery sink's consumer group.
    """
    def subdirs(root: Path) -> list[Path]:
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    if spool_dir is not None:
        return [Path(spool_dir), *subdirs(Path(spool_dir))]
    run = spool_folder(None, SpoolOwner(owner.project, owner.dataset, owner.table, slot=owner.slot))
    # The Kafka partitions' folders sit one level below their group's folder.
    kafka = DEFAULT_ROOT / _safe(owner.table_id) / _safe(owner.group or "default")
    return ([run] if run.is_dir() else []) + subdirs(kafka)


def holds_batches(directory: Path) -> bool:
    """True when `directory` holds spooled files or an applied position."""
    try:
        return any(_NAME.match(e.name) or e.name == "position" for e in os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return False


# Columns with few distinct values: dictionary-encoded. The others (ids,
# uuids, payloads, metrics) are not, and no file carries statistics: nothing
# reads the spool by predicate, and both save about 30% of the write time.
_DICTIONARY = ("content_id", "event_type", "device", "content_slug", "content_title", "content_type",
               "length_seconds", "op", "source_lsn", "commit_ts", "processed_ts", "backfill")


def parquet_options(schema: pa.Schema) -> dict:
    """Writer options for spool and upload files of `schema`."""
    return {"use_dictionary": [c for c in _DICTIONARY if c in schema.names], "write_statistics": False}


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    first: Position
    last: Position
    size: int
    mtime: float


def file_name(first: Position, last: Position) -> str:
    return f"{last.lsn:016x}-{last.seq:010d}-{first.lsn:016x}-{first.seq:010d}.parquet"


#: What a spooled table kept in memory costs beyond its buffers (`nbytes`), per column: the Python and
#: C++ objects of the table, its columns and schema, and 64-byte aligned buffers. A one-row table of the
#: 21 event columns took about 17 KB of RSS for 170 bytes of `nbytes`; counting only `nbytes` let a
#: trickle of tiny files hold about a hundred times the budget (the Kafka soak's consume-bigquery
#: reached 1.5 GB).
TABLE_OVERHEAD_PER_COLUMN = 1024


def held_bytes(table: pa.Table) -> int:
    """The memory a table held by the spool is counted for (its buffers and its objects)."""
    return int(table.nbytes) + TABLE_OVERHEAD_PER_COLUMN * table.num_columns


class MemoryBudget:
    """Bytes of recent tables that spools may hold, shared by every spool given the same budget:
    `pulse consume --sink bigquery` has a sink, hence a spool, per partition, and one process-wide
    budget keeps its memory independent of the partition count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size


_PROCESS_BUDGETS: dict[int, MemoryBudget] = {}
_PROCESS_BUDGETS_LOCK = threading.Lock()


def process_budget(limit: int) -> MemoryBudget:
    """The budget every spool of this process with the same limit shares."""
    with _PROCESS_BUDGETS_LOCK:
        return _PROCESS_BUDGETS.setdefault(limit, MemoryBudget(limit))


class Spool:
    """A folder of Parquet files, each one batch, named by position."""

    def __init__(self, directory: Path, compression: str = "snappy", memory_bytes: int = 256 * 1024 * 1024,
                 owner: SpoolOwner | None = None, *, table_only: bool = False,
                 budget: MemoryBudget | None = None) -> None:
        self.dir = Path(directory)
        self.compression = compression
        self.budget = budget or MemoryBudget(memory_bytes)
        self._recent: OrderedDict[str, pa.Table] = OrderedDict()
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TerminalError(f"cannot create the spool folder {self.dir}: {exc}",
                                hint="set bigquery.spool_dir to a writable folder") from exc
        self.owner = self.bind(owner, table_only=table_only) if owner is not None else None

    # -- the owner -------------------------------------------------------------------

    def read_owner(self) -> SpoolOwner | None:
        path = self.dir / OWNER_FILE
        try:
            data = json.loads(path.read_text())
            return SpoolOwner(**{f.name: data.get(f.name) for f in fields(SpoolOwner)})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise TerminalError(f"{path} is not a spool owner record: {exc}",
                                hint=f"restore it, or move the folder {self.dir} away") from exc

    def bind(self, owner: SpoolOwner, *, table_only: bool = False) -> SpoolOwner | None:
        """Check that this folder belongs to `owner` (claiming it when new); return the recorded owner.

        `table_only` (the uploader): only the table must match, and a folder
        without a record is not claimed (None is returned; the caller warns).
        """
        recorded = self.read_owner()
        if recorded is None:
            if table_only:
                return None
            if holds_batches(self.dir):
                raise ConfigError(
                    f"the spool folder {self.dir} holds spooled batches but records no owner "
                    f"(written by an earlier Pulse, or by hand); this pipeline is {owner.describe()}",
                    hint=f"load it into the table it was written for with `pulse upload --once --spool-dir "
                         f"{self.dir}` and that pipeline's configuration, then remove the folder; or set "
                         f"bigquery.spool_dir (PULSE_BIGQUERY__SPOOL_DIR) to another folder")
            # The file's bytes fsync'd before the rename: a crash must not leave an empty owner.json,
            # which the next start would refuse as "not a spool owner record".
            replace_durably(self.dir / OWNER_FILE, (json.dumps(asdict(owner), indent=1) + "\n").encode())
            return owner
        if recorded.table_id != owner.table_id or (not table_only and recorded != owner):
            raise ConfigError(
                f"the spool folder {self.dir} belongs to {recorded.describe()}, not to {owner.describe()}",
                hint="unset bigquery.spool_dir (PULSE_BIGQUERY__SPOOL_DIR) to get this pipeline's own folder, or "
                     "point it at an empty one; to load what the folder holds, run `pulse upload --once "
                     f"--spool-dir {self.dir}` with the configuration of {recorded.table_id}")
        return recorded

    # -- writing -------------------------------------------------------------------

    def clean_partial(self) -> int:
        """Delete what a crash mid-write left (temporary files); return how many.

        Not the loader's `.tmp-upload-*` files: a `pulse upload` may be combining one right now
        while `pulse run` starts (its loader removes its own leftovers under the spool lock).
        """
        n = 0
        for p in self.dir.glob(".tmp-*"):
            if p.name.startswith(UPLOAD_TMP_PREFIX):
                continue
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
                pq.write_table(table, fh, compression=self.compression, **parquet_options(table.schema))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(self.dir)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TransientError(f"spool write to {self.dir} failed: {exc}") from exc
        self._remember(final.name, table)
        return final

    def _remember(self, name: str, table: pa.Table) -> None:
        """Keep a table just written for the loader, within the budget: this spool's oldest tables make
        room first; when the budget is held by other spools, the table is read from disk when loaded."""
        size = held_bytes(table)
        with self._recent_lock:
            while not self.budget.take(size):
                if not self._recent:
                    return
                _, old = self._recent.popitem(last=False)
                freed = held_bytes(old)
                self._recent_bytes -= freed
                self.budget.give(freed)
            self._recent[name] = table
            self._recent_bytes += size

    def forget(self) -> None:
        """Drop the tables held in memory (the files stay): a closed sink gives its budget back."""
        with self._recent_lock:
            self._recent.clear()
            self.budget.give(self._recent_bytes)
            self._recent_bytes = 0

    def read(self, f: "SpoolFile", columns: list[str] | None = None) -> pa.Table:
        """A spool file's rows: from memory when this process just wrote it, else from disk."""
        with self._recent_lock:
            table = self._recent.get(f.path.name)
        if table is None:
            return pq.read_table(f.path, columns=columns)
        return table.select(columns) if columns else table

    def read_schema(self, f: "SpoolFile") -> pa.Schema:
        """A spool file's schema (its columns vary when the source gained columns)."""
        with self._recent_lock:
            table = self._recent.get(f.path.name)
        return table.schema if table is not None else pq.read_schema(f.path)

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
        replace_durably(self.dir / "position", f"{pos}\n".encode())

    def remove(self, files: list[SpoolFile]) -> None:
        for f in files:
            f.path.unlink(missing_ok=True)
            with self._recent_lock:
                old = self._recent.pop(f.path.name, None)
                if old is not None:
                    freed = held_bytes(old)
                    self._recent_bytes -= freed
                    self.budget.give(freed)
        fsync_dir(self.dir)

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
