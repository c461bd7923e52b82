"""A sink's store in Pulse's state schema (PostgreSQL), for one sink key (`<slot>/<sink name>`).

Two today: the general dead-letter table (`dead_letter.DeadLetters`) and
the external sink's outbox with its dead letters (`external/outbox.Outbox`).
Each connection is its own (`connect`: an unreachable database is a
TransientError, retried). A store is usable once the migration that creates
its tables is applied (`pulse db init`); `check_schema` says so, with that
fix, before anything reads or writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg2
from psycopg2 import sql

from pulse.errors import TerminalError, TransientError


class StateStore:
    """What a store of Pulse's state schema shares: where it is, its connections, the check that its tables exist."""

    required_table: ClassVar[str]  # the table whose presence says its migration is applied
    what: ClassVar[str]  # that table, as the error names it
    migration: ClassVar[str]  # the migration that creates it
    label: ClassVar[str]  # the store, as its errors name it
    application_name: ClassVar[str]  # its connections' name in pg_stat_activity, unless the caller gives one

    def __init__(self, dsn: str, schema: str, sink_key: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.sink_key = sink_key

    def connect(self, name: str | None = None, *, autocommit: bool = False):
        """A new connection to the store's database; TransientError when the database does not answer."""
        try:
            conn = psycopg2.connect(self.dsn, application_name=name or self.application_name)
        except psycopg2.OperationalError as exc:
            raise TransientError(f"{self.label}: database unreachable: {str(exc).strip()}") from exc
        conn.autocommit = autocommit
        return conn

    def check_schema(self, conn) -> None:
        """TerminalError, with the `pulse db init` fix, when the store's table is missing; reads only."""
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.{self.required_table}",))
            ok = cur.fetchone()[0]
        conn.rollback()
        if not ok:
            raise TerminalError(f"{self.what} is missing in schema {self.schema}",
                                hint=f"run `pulse db init` (it applies migration {self.migration})")

    def _count(self, conn, table: sql.Composable) -> int:
        """How many rows of `table` (a dead-letter table) are this store's; reads only."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE sink = %s").format(table), (self.sink_key,))
            n = cur.fetchone()[0]
        conn.rollback()
        return int(n)

    def _where(self, ids: Sequence[int] | None, before: str | None = None) -> tuple[sql.Composable, list[Any]]:
        """The condition on a dead-letter table (`sink`, `id`, `dead_at`) for this store's rows, of `ids`
        when given, dead-lettered before `before` (an ISO time) when given; and its parameters."""
        where = [sql.SQL("sink = %s")]
        params: list[Any] = [self.sink_key]
        if ids:
            where.append(sql.SQL("id = ANY(%s)"))
            params.append(list(ids))
        if before:
            where.append(sql.SQL("dead_at < %s::timestamptz"))
            params.append(before)
        return sql.SQL(" AND ").join(where), params


__all__ = ["StateStore"]
