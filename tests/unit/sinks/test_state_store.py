"""The stores in Pulse's state schema connect and check their migration the same way, each with its own table
and fix; `pulse dlq` reaches either through one connection helper (`DeadLetterAccess._with`)."""

from __future__ import annotations

import pytest

from pulse.config import Settings
from pulse.errors import TerminalError, TransientError
from pulse.sinks.dead_letter import DeadLetters, StoreAccess
from pulse.sinks.external.dead_letters import OutboxAccess
from pulse.sinks.external.outbox import Outbox
from pulse.sinks.state_store import StateStore


class FakeConn:
    """Answers `to_regclass(...) IS NOT NULL` with `present`; records what it was asked and whether it ended."""

    def __init__(self, present: bool) -> None:
        self.present, self.asked, self.rolled_back, self.closed = present, [], False, False

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def execute(self, query: str, params: tuple) -> None:
        self.asked.append(params)

    def fetchone(self) -> tuple[bool]:
        return (self.present,)

    def rollback(self) -> None:
        self.rolled_back = True

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("store", "table", "message", "migration"), [
    (DeadLetters("postgresql://x/db", "pulse_state", "slot/kafka"), "dead_letter",
     "the dead-letter table is missing in schema pulse_state", "011_dead_letter.sql"),
    (Outbox("postgresql://x/db", "pulse_state", "slot/external"), "external_outbox",
     "the external sink's outbox table is missing in schema pulse_state", "010_outbox.sql"),
])
def test_a_missing_table_is_terminal_with_the_migration_that_creates_it(store, table, message, migration) -> None:
    conn = FakeConn(present=False)
    with pytest.raises(TerminalError) as err:
        store.check_schema(conn)
    assert conn.asked == [(f"pulse_state.{table}",)] and conn.rolled_back
    assert str(err.value).startswith(message)
    assert err.value.hint == f"run `pulse db init` (it applies migration {migration})"
    present = FakeConn(present=True)
    store.check_schema(present)  # no error, and no transaction left open
    assert present.rolled_back


@pytest.mark.parametrize(("cls", "label"), [(DeadLetters, "dead-letter store"), (Outbox, "external sink outbox")])
def test_an_unreachable_database_is_transient_and_names_the_store(cls, label) -> None:
    store = cls("postgresql://pulse@127.0.0.1:1/db?connect_timeout=2", "pulse_state", "slot/x")
    with pytest.raises(TransientError) as err:
        store.connect()
    assert str(err.value).startswith(f"{label}: database unreachable: ")


@pytest.mark.parametrize("access_cls", [StoreAccess, OutboxAccess])
def test_dlq_access_checks_the_schema_on_each_connection_and_always_closes_it(access_cls, monkeypatch) -> None:
    present = True
    conns: list[FakeConn] = []
    names: list[str | None] = []

    def connect(self, name=None, *, autocommit=False) -> FakeConn:
        names.append(name)
        conns.append(FakeConn(present=present))
        return conns[-1]

    monkeypatch.setattr(StateStore, "connect", connect)
    access = access_cls(Settings(), "sink")
    assert access._with(lambda conn: "read") == "read"
    with pytest.raises(ZeroDivisionError):
        access._with(lambda conn: 1 / 0)
    present = False
    with pytest.raises(TerminalError):
        access._with(lambda conn: pytest.fail("ran on a store without its table"))
    assert set(names) == {"pulse-dlq"}
    table = f"{access.store.schema}.{access.store.required_table}"
    assert all(c.asked == [(table,)] and c.closed for c in conns)


@pytest.mark.parametrize("cls", [DeadLetters, Outbox])
def test_dead_letters_are_selected_by_the_store_key_then_ids_then_age(cls) -> None:
    store = cls("postgresql://x/db", "pulse_state", "slot/sink")
    where, params = store._where(None)
    assert where.as_string(None) == "sink = %s" and params == ["slot/sink"]
    where, params = store._where([3, 4], "2026-12-01T00:00:00Z")
    assert where.as_string(None) == "sink = %s AND id = ANY(%s) AND dead_at < %s::timestamptz"
    assert params == ["slot/sink", [3, 4], "2026-12-01T00:00:00Z"]
