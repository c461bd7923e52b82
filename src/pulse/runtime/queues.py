"""A queue bounded in bytes as well as in items (backpressure, not memory growth).

`put` blocks while the queue holds `max_bytes` or `max_items`; an item
larger than `max_bytes` is still admitted when the queue is empty, so one
huge row cannot deadlock the pipeline.

An item may weigh more than one (`put_many(..., count=)`): a sink's queue
holds chunks and counts their events, so `max_items` and `len()` are events
(`runtime.queue_max_events`, `pulse status`'s queued), while `get_many`
takes up to so many *items*.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ByteQueue(Generic[T]):
    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: deque[tuple[T, int, int]] = deque()  # (item, bytes, count)
        self._bytes = 0
        self._count = 0
        self._cond = threading.Condition()
        self.closed = False

    def put(self, item: T, size: int, timeout: float | None = None) -> bool:
        """Add `item`; False when `timeout` passed without room."""
        return self.put_many([item], size, timeout, 1)

    def put_many(self, items: list[T], size: int, timeout: float | None = None, count: int | None = None) -> bool:
        """Add `items` (together `size` bytes, and `count` toward `max_items`: default one each) at once:
        one lock round trip for a whole chunk."""
        deadline = None if timeout is None else time.monotonic() + timeout
        count = len(items) if count is None else count
        with self._cond:
            while self._items and (self._bytes + size > self.max_bytes or self._count + count > self.max_items):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            n = len(items)
            each = size // n if n else 0
            base, extra = divmod(count, n) if n else (0, 0)
            self._items.extend((item, each, base + (k < extra)) for k, item in enumerate(items))
            self._bytes += each * n
            self._count += count if n else 0
            self._cond.notify_all()
            return True

    def get_many(self, max_items: int, timeout: float) -> list[T]:
        """Up to `max_items` items; waits up to `timeout` for the first one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    return []
                self._cond.wait(remaining)
            out = []
            while self._items and len(out) < max_items:
                item, size, count = self._items.popleft()
                self._bytes -= size
                self._count -= count
                out.append(item)
            self._cond.notify_all()
            return out

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        """What the queue holds, counted as `put_many` counted it (events, for a sink's queue)."""
        return self._count
