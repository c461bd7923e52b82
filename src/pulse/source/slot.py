"""Replication slot management: create when missing, never recreate a lost one.

Pulse records every slot it creates in its state schema (`slot_registry`).
A registered slot that has disappeared, or one PostgreSQL marked
`wal_status = 'lost'`, means changes were (or may have been) removed before
Pulse read them: that is a terminal error that says what happened and what
to do, never a silent re-creation that would skip those changes (Debezium
and Patroni users learned this the hard way).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from pulse.config import DatabaseConfig
from pulse.errors import SlotLostError, TerminalError
from pulse.log import get_logger
from pulse.source.db import connect

log = get_logger(__name__)


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    lag_bytes: int | None
    current_lsn: str | None
    retained_bytes: int | None = None  # WAL the server keeps for the slot (current LSN - restart_lsn)
    safe_wal_size: int | None = None  # bytes left before the slot is lost; None: unlimited


def slot_info(cur, name: str) -> SlotInfo | None:
    cur.execute(
        """
        SELECT slot_name, plugin, database, active, active_pid, wal_status,
               restart_lsn::text, confirmed_flush_lsn::text,
               pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
               pg_current_wal_lsn()::text,
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
               safe_wal_size
          FROM pg_replication_slots WHERE slot_name = %s
        """,
        (name,),
    )
    row = cur.fetchone()
    return SlotInfo(*row) if row else None


def _lost_hint(cfg: DatabaseConfig) -> str:
    return (
        f"changes may have been removed before Pulse read them. Drop what is left "
        f"(SELECT pg_drop_replication_slot('{cfg.slot}') if it still exists), forget it "
        f"(DELETE FROM {cfg.state_schema}.slot_registry WHERE slot_name = '{cfg.slot}'), then start "
        f"Pulse again and run `pulse backfill` over the gap; raise max_slot_wal_keep_size to avoid a repeat"
    )


def check_slot(cur, cfg: DatabaseConfig) -> SlotInfo | None:
    """The slot if usable, None if it never existed; raises SlotLostError otherwise."""
    info = slot_info(cur, cfg.slot)
    cur.execute(
        sql.SQL("SELECT created_at FROM {}.slot_registry WHERE slot_name = %s").format(
            sql.Identifier(cfg.state_schema)
        ),
        (cfg.slot,),
    )
    registered = cur.fetchone()
    if info is None:
        if registered is not None:
            raise SlotLostError(
                f"replication slot {cfg.slot!r}, created by Pulse at {registered[0]:%Y-%m-%d %H:%M:%S %Z}, "
                "no longer exists (dropped, or lost in a failover)",
                hint=_lost_hint(cfg),
            )
        return None
    if info.wal_status == "lost":
        raise SlotLostError(
            f"replication slot {cfg.slot!r} was invalidated by PostgreSQL (wal_status = lost): "
            "the WAL it needed was removed, probably because max_slot_wal_keep_size was exceeded",
            hint=_lost_hint(cfg),
        )
    if info.plugin != "pgoutput":
        raise TerminalError(
            f"slot {cfg.slot!r} exists but uses plugin {info.plugin!r}, not pgoutput",
            hint="choose another slot name (PULSE_SLOT) or drop that slot if it is unused",
        )
    cur.execute("SELECT current_database()")
    if info.database != cur.fetchone()[0]:
        raise TerminalError(
            f"slot {cfg.slot!r} belongs to database {info.database!r}",
            hint="choose another slot name (PULSE_SLOT)",
        )
    if registered is None:
        _register(cur, cfg, info.confirmed_flush_lsn)
        log.info("slot.adopted", slot=cfg.slot)
    return info


def _register(cur, cfg: DatabaseConfig, lsn: str | None) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO {}.slot_registry (slot_name, publication, created_lsn) VALUES (%s, %s, %s) "
            "ON CONFLICT (slot_name) DO NOTHING"
        ).format(sql.Identifier(cfg.state_schema)),
        (cfg.slot, cfg.publication, lsn),
    )


def ensure_slot(cfg: DatabaseConfig) -> tuple[SlotInfo, bool]:
    """The slot, created (and registered) when it never existed; returns (info, created)."""
    conn = connect(cfg)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            info = check_slot(cur, cfg)
            if info is not None:
                return info, False
            cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (cfg.slot,))
            lsn = cur.fetchone()[0]
            _register(cur, cfg, lsn)
            log.info("slot.created", slot=cfg.slot, lsn=lsn)
            info = slot_info(cur, cfg.slot)
            assert info is not None
            return info, True
    finally:
        conn.close()


def drop_slot(cfg: DatabaseConfig) -> bool:
    """Drop the slot and its registry entry (for `pulse slot drop` and tests)."""
    conn = connect(cfg)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            dropped = False
            if slot_info(cur, cfg.slot) is not None:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (cfg.slot,))
                dropped = True
            cur.execute(
                sql.SQL("DELETE FROM {}.slot_registry WHERE slot_name = %s").format(sql.Identifier(cfg.state_schema)),
                (cfg.slot,),
            )
            return dropped
    finally:
        conn.close()
