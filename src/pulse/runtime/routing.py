"""Table routing: which of the dispatcher's handlers takes a decoded change.

The assembler (`source/changes.py`) yields the changes of three tables:
`engagement_events` (the events), `content` (the enrichment's lookup, kept
in the content cache) and, in Pulse's state schema, `backfill_watermarks`
(a backfill's chunk boundaries). `TableRouter` maps each to its handler; a
change of any other table is a bug upstream and says so, rather than being
taken for an event.
"""

from __future__ import annotations

from collections.abc import Callable

from pulse.model import Change
from pulse.source.changes import WATERMARKS

EVENTS = "engagement_events"
CONTENT = "content"

Handler = Callable[[Change], None]


class TableRouter:
    """`route(change)` calls the handler of the change's table."""

    __slots__ = ("_handlers",)

    def __init__(self, *, events: Handler, content: Handler, watermarks: Handler) -> None:
        self._handlers: dict[str, Handler] = {EVENTS: events, CONTENT: content, WATERMARKS: watermarks}

    def route(self, change: Change) -> None:
        handler = self._handlers.get(change.table)
        if handler is None:
            raise ValueError(f"a change of table {change.table!r} reached the dispatcher, which routes only "
                             f"{sorted(self._handlers)}: the assembler's captured tables and the router disagree")
        handler(change)


__all__ = ["CONTENT", "EVENTS", "TableRouter"]
