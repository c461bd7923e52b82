"""A sink's store in Pulse's state schema (PostgreSQL), for one sink key (`<slot>/<sink name>`).

Two today: the general dead-letter table (`dead_letter.DeadLetters`) and
the external sink's outbox with its dead letters (`external/outbox.Outbox`).
A store is usable once the migration that creates its tables is applied
(`pulse db init`); `check_schema` says so, with that fix, before anything
reads or writes it.
"""

from __future__ import annotations

from typing import ClassVar

from pulse.errors import TerminalError


class StateStore:
    """What a store of Pulse's state schema shares: where it is and the check that its tables exist."""

    required_table: ClassVar[str]  # the table whose presence says its migration is applied
    what: ClassVar[str]  # that table, as the error names it
    migration: ClassVar[str]  # the migration that creates it

    def __init__(self, dsn: str, schema: str, sink_key: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.sink_key = sink_key

    def check_schema(self, conn) -> None:
        """TerminalError, with the `pulse db init` fix, when the store's table is missing; reads only."""
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.{self.required_table}",))
            ok = cur.fetchone()[0]
        conn.rollback()
        if not ok:
            raise TerminalError(f"{self.what} is missing in schema {self.schema}",
                                hint=f"run `pulse db init` (it applies migration {self.migration})")


__all__ = ["StateStore"]
