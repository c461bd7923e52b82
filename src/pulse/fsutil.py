"""Durable changes to local files: what a crash must not undo.

A file's bytes survive a crash once the file is fsync'd; its name (created,
renamed, removed) once its folder is. The spools and outboxes of the sinks
(`sinks/bigquery/spool.py`, `sinks/external/local.py`, `sinks/jsonl/`) make
their writes durable with these, before they report a position.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of folder `path` durable: the files created, renamed or removed in it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Put `data` in file `path`, whole or not at all across a crash; durable when it returns.

    Written to a temporary file in the same folder (`.tmp-<name>-<random>`:
    the folder's owner removes such leftovers of a crash), fsync'd, renamed
    over `path`, then the folder fsync'd.
    """
    tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def truncate_durably(fh: BinaryIO, size: int) -> None:
    """Cut the open file `fh` to `size` bytes (a tail torn by a crash) and make the cut durable."""
    fh.truncate(size)
    fh.flush()
    os.fsync(fh.fileno())


__all__ = ["fsync_dir", "replace_durably", "truncate_durably"]
