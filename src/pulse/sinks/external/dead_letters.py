"""`pulse dlq` for the external sink: the events the endpoint refused (terminal 4xx, a lone event refused
with 413 after it was delivered with a marker) or that ran out of attempts, kept in Pulse's schema.

Replay sends them again, oldest first, with their original CloudEvent ids, to the endpoint (`url`, else
`external.url`; signed with `external.secret`), and deletes what the endpoint acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from pulse.config import Settings
from pulse.sinks.dead_letter import DeadLetterAccess
from pulse.sinks.external.outbox import Outbox


class OutboxAccess(DeadLetterAccess):
    store: Outbox

    def __init__(self, settings: Settings, sink_name: str, url: str | None = None) -> None:
        from pulse.sinks.external.sink import sink_key

        if url:
            settings = settings.model_copy(update={"external": settings.external.model_copy(update={"url": url})})
        self.settings = settings
        db = settings.database
        self.store = Outbox(db.dsn(), db.state_schema, sink_key(db, sink_name))
        self.key = self.store.sink_key

    def list(self, limit: int) -> tuple[int, list[dict]]:
        return self._with(lambda conn: (self.store.dead_count(conn), self.store.dead_letters(conn, limit)))

    def describe(self, r: dict) -> str:
        return (f"{r['ce_id']} attempts={r['attempts']} status={r['last_status']} "
                f"dead_at={r['dead_at']:%Y-%m-%d %H:%M:%S%z} replays={r['replays']} error={r['last_error']}")

    def show(self, dead_id: int) -> dict | None:
        def read(conn):
            rows = self.store.dead_letters(conn, 1, ids=[dead_id])
            return rows, (self.store.dead_letter_row(conn, dead_id) if rows else None)

        rows, full = self._with(read)
        if not rows:
            return None
        if full is not None:
            rows[0]["cloudevent"] = orjson.loads(full.cloudevent())
        return rows[0]

    def replay(self, ids: Sequence[int] | None, *, attempts: int) -> tuple[int, int, str | None]:
        from pulse.sinks.external.delivery import HttpClient, replay_dead_letters

        self._with(lambda conn: None)  # the schema is there
        client = HttpClient(self.settings.external)
        try:
            return replay_dead_letters(self.store, client, self.settings.external, ids=ids, max_attempts=attempts)
        finally:
            client.close()

    def purge(self, ids: Sequence[int] | None, before: str | None) -> int:
        return self._with(lambda conn: self.store.purge_dead(conn, ids=ids, before=before))


__all__ = ["OutboxAccess"]
