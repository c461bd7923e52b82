"""The row path's queue item: consecutive changes of `engagement_events`, enriched on first use.

The dispatcher (`runtime/pipeline.py`) hands every sink the same kind of
item, a chunk. A native run of inserts is an `columnar.EventChunk`; what the
row path decodes (updates, deletes, short runs, rows while a backfill window
is open, rows with extra columns) is a `RowChunk`: the `Change`s as they
came, turned into `EnrichedEvent`s by the first sink thread that asks
(`events()`), shared by the others. The dispatcher only gathers them.

A `RowChunk` reads the live content cache, not a snapshot of it (a snapshot
copies the cache). That is exact because the dispatcher, before it applies
a content change, settles (`settle()`) every chunk it handed on that no sink
has built yet: an event is still enriched with the content committed before
it, and content changes later in the stream never reach it.
"""

from __future__ import annotations

import threading
from datetime import datetime

from pulse.model import UNCHANGED_TOAST, Change, EnrichedEvent, Position
from pulse.transform.content_cache import ContentCache
from pulse.transform.enrich import enrich_change

# Bytes a change holds besides its payload (the dicts, the tuple, the values), for byte-bounded queues.
_CHANGE_BYTES = 600


def change_size(change: Change) -> int:
    """Rough bytes `change` and its event hold in memory (as `EnrichedEvent.size_hint` counts them)."""
    size = _CHANGE_BYTES
    for row in (change.new, change.old):
        if row:
            payload = row.get("raw_payload")
            if payload is not None and payload is not UNCHANGED_TOAST:
                size += len(payload)
    return size


class RowChunk:
    """Consecutive changes handed on together; `events()` enriches them once, on the thread that asks first.

    `after(position)` gives a view of the later rows that shares the build
    (a sink restarted with part of the chunk durable). `commit_ts` is None:
    the rows may span transactions, and each event keeps its own.
    """

    __slots__ = ("changes", "cache", "now", "_size", "_events", "_lock", "_problems", "_base", "_skip")

    # The queue item's common face (EventChunk has the same attributes).
    backfill = False
    targets: tuple[str, ...] | None = None
    row_only = True  # no columnar form: every sink gets the events
    commit_ts = None

    def __init__(self, changes: list[Change], cache: ContentCache, now: datetime, size: int | None = None) -> None:
        if not changes:
            raise ValueError("a RowChunk holds at least one change")
        self.changes = changes
        self.cache = cache
        self.now = now
        self._size = size if size is not None else sum(change_size(c) for c in changes)
        self._events: list[EnrichedEvent] | None = None
        self._problems: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._base: RowChunk | None = None  # the chunk that builds, for a view (`after`); None: this one
        self._skip = 0

    @property
    def first(self) -> Position:
        return self.changes[self._skip].position

    @property
    def position(self) -> Position:
        return self.changes[-1].position

    def __len__(self) -> int:
        return len(self.changes) - self._skip

    def size_hint(self) -> int:
        return self._size if self._skip == 0 else self._size * len(self) // len(self.changes)

    def _owner(self) -> "RowChunk":
        return self if self._base is None else self._base

    @property
    def built(self) -> bool:
        return self._owner()._events is not None

    def after(self, position: Position) -> "RowChunk":
        """The rows after `position`, as a view sharing this chunk's build."""
        skip = self._skip
        changes = self.changes
        while skip < len(changes) and changes[skip].position <= position:
            skip += 1
        if skip == self._skip:
            return self
        if skip == len(changes):
            raise ValueError(f"no row of the chunk is after {position}")
        view = RowChunk.__new__(RowChunk)
        view.changes, view.cache, view.now, view._size = changes, self.cache, self.now, self._size
        view._events = view._problems = None
        view._lock = self._lock
        view._base, view._skip = self._owner(), skip
        return view

    def events(self) -> list[EnrichedEvent]:
        built = self._owner()._build()
        return built if self._skip == 0 else built[self._skip:]

    def settle(self) -> None:
        """Build the events now, with the cache as it is (the dispatcher, before the cache changes)."""
        self._owner()._build()

    def _build(self) -> list[EnrichedEvent]:
        with self._lock:
            if self._events is None:
                cache, now = self.cache, self.now
                events = [enrich_change(c, cache, now) for c in self.changes]
                counts: dict[str, int] = {}
                for ev in events:
                    for problem in ev.problems:
                        counts[problem] = counts.get(problem, 0) + 1
                self._problems = counts
                self._events = events
            return self._events

    def take_problems(self) -> dict[str, int]:
        """Problem counts of the chunk's rows, once (for metrics): empty on later calls or before a build."""
        base = self._owner()
        with base._lock:
            if not base._problems:
                return {}
            counts, base._problems = base._problems, {}
            return counts


__all__ = ["RowChunk", "change_size"]
