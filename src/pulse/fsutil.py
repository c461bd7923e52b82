"""Durable changes to local files: what a crash must not undo.

A file's bytes survive a crash once the file is fsync'd; its name (created,
renamed, removed) once its folder is. The spools and outboxes of the sinks
(`sinks/bigquery/spool.py`, `sinks/external/local.py`, `sinks/jsonl/`) make
their writes durable with these, before they report a position.
"""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of folder `path` durable: the files created, renamed or removed in it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["fsync_dir"]
