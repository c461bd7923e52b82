"""Preflight checks of the source database (`pulse doctor`).

Two halves, kept apart so that every branch is testable without a server:

* `gather_facts(cfg)` reads the catalog in one read-only session (settings,
  the role's attributes and privileges, the source tables, the publication,
  the slot) and opens one replication connection, returning a plain dict;
* `evaluate(facts)` is a pure function from that dict to a list of
  `CheckResult` (name, status ok / warn / error, detail, fix).

A fix is text an operator can paste: SQL statements, with any step that is
not SQL (a restart, a CLI command) written as an SQL comment. Identifiers in
it are always double-quoted and literals single-quoted, exactly as
`psycopg2.sql.Identifier` / `Literal` render them, so a role called
`analytics-team` or a mixed-case owner yields SQL that runs as printed.

Nothing here changes the database: the session is read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from pulse.config import DatabaseConfig
from pulse.log import get_logger
from pulse.schema import SOURCE_TABLES
from pulse.source.db import REPLICA_IDENTITIES

log = get_logger(__name__)

Status = Literal["ok", "warn", "error"]

# pgoutput protocol 2 (streaming of in-progress transactions) arrived in 14.
STREAMING_MIN_VERSION = 140000
# Logical decoding with pgoutput exists from 10; wal_status / safe_wal_size from 13.
LOGICAL_MIN_VERSION = 100000
WAL_STATUS_MIN_VERSION = 130000
# Publication column lists and row filters (pg_publication_tables.attnames/rowfilter) from 15.
PUB_FILTERS_MIN_VERSION = 150000
INVALIDATION_REASON_MIN_VERSION = 170000

# Offered when max_slot_wal_keep_size is unlimited; the operator sizes it to the WAL disk.
SUGGESTED_SLOT_WAL_KEEP = "20GB"

PUBLISH = "insert, update, delete, truncate"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check; `fix` is what the operator runs when it is not ok."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = dict(self.data)
        return out


# -- quoting (no connection needed, so the evaluation stays pure) ------------


def quote_ident(name: str) -> str:
    """`name` as a PostgreSQL identifier, always quoted (what sql.Identifier renders)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """`value` as a standard SQL string literal (standard_conforming_strings=on)."""
    return "'" + value.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


# -- gathering ---------------------------------------------------------------

_SETTINGS = ("wal_level", "max_replication_slots", "max_wal_senders", "max_slot_wal_keep_size")


def _one(cur, query, params=()) -> tuple | None:
    cur.execute(query, params)
    return cur.fetchone()


def _table_facts(cur, schema: str, table: str) -> dict[str, Any]:
    row = _one(
        cur,
        """
        SELECT c.oid,
               pg_get_userbyid(c.relowner),
               pg_has_role(current_user, c.relowner, 'USAGE'),
               has_table_privilege(c.oid, 'SELECT'),
               c.relreplident::text,
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
               (SELECT i.indexrelid::regclass::text FROM pg_index i
                 WHERE i.indrelid = c.oid AND i.indisreplident),
               ARRAY(SELECT a.attname::text FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (schema, table),
    )
    if row is None:
        return {"exists": False}
    return {
        "exists": True,
        "owner": row[1],
        "is_owner": row[2],
        "can_select": row[3],
        "replica_identity": REPLICA_IDENTITIES[row[4]],
        "has_primary_key": row[5],
        "replica_identity_index": row[6],
        "columns": list(row[7]),
    }


def _publication_facts(cur, publication: str, schema: str, version: int) -> dict[str, Any] | None:
    row = _one(
        cur,
        "SELECT pg_get_userbyid(pubowner), puballtables, pubinsert, pubupdate, pubdelete, pubtruncate "
        "FROM pg_publication WHERE pubname = %s",
        (publication,),
    )
    if row is None:
        return None
    if version >= PUB_FILTERS_MIN_VERSION:
        query = (
            "SELECT tablename::text, attnames::text[], rowfilter FROM pg_publication_tables "
            "WHERE pubname = %s AND schemaname = %s"
        )
    else:
        query = (
            "SELECT tablename::text, NULL::text[], NULL::text FROM pg_publication_tables "
            "WHERE pubname = %s AND schemaname = %s"
        )
    cur.execute(query, (publication, schema))
    tables = {name: {"columns": list(cols) if cols is not None else None, "row_filter": flt}
              for name, cols, flt in cur.fetchall()}
    return {
        "owner": row[0],
        "all_tables": row[1],
        "publish": {"insert": row[2], "update": row[3], "delete": row[4], "truncate": row[5]},
        "tables": tables,
    }


def _slot_facts(cur, slot: str, version: int) -> dict[str, Any] | None:
    # The server's current position; a standby (16+) decodes up to its replay position.
    current = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END"
    wal = "wal_status, safe_wal_size" if version >= WAL_STATUS_MIN_VERSION else "NULL::text, NULL::bigint"
    reason = "invalidation_reason" if version >= INVALIDATION_REASON_MIN_VERSION else "NULL::text"
    # Only fixed catalog column names, chosen by server version, are composed in.
    query = sql.SQL(
        "SELECT plugin::text, slot_type, database::text, temporary, active, active_pid, {wal}, {reason}, "
        "restart_lsn::text, confirmed_flush_lsn::text, "
        "pg_wal_lsn_diff({current}, confirmed_flush_lsn)::bigint, pg_wal_lsn_diff({current}, restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s"
    ).format(wal=sql.SQL(wal), reason=sql.SQL(reason), current=sql.SQL(current))
    row = _one(cur, query, (slot,))
    if row is None:
        return None
    keys = ("plugin", "slot_type", "database", "temporary", "active", "active_pid", "wal_status",
            "safe_wal_size", "invalidation_reason", "restart_lsn", "confirmed_flush_lsn", "lag_bytes",
            "retained_bytes")
    return dict(zip(keys, row))


def _registry_facts(cur, state_schema: str, slot: str) -> dict[str, Any]:
    """Whether Pulse recorded creating `slot` (so a missing slot means a lost one)."""
    row = _one(cur, "SELECT to_regclass(format('%%I.%%I', %s::text, 'slot_registry'))::oid", (state_schema,))
    if row is None or row[0] is None:
        return {"readable": False, "registered": False}
    if not _one(cur, "SELECT has_table_privilege(%s, 'SELECT')", (row[0],))[0]:
        return {"readable": False, "registered": False}
    found = _one(
        cur,
        sql.SQL("SELECT created_at::text FROM {}.slot_registry WHERE slot_name = %s").format(
            sql.Identifier(state_schema)
        ),
        (slot,),
    )
    return {"readable": True, "registered": found is not None, "created_at": found[0] if found else None}


def _replication_connection(cfg: DatabaseConfig) -> dict[str, Any]:
    """Open a logical replication connection, as the producer will, and identify the system."""
    try:
        conn = psycopg2.connect(
            cfg.dsn(), connection_factory=psycopg2.extras.LogicalReplicationConnection,
            application_name="pulse-doctor", connect_timeout=10,
        )
    except psycopg2.Error as exc:
        return {"ok": False, "error": " ".join(str(exc).split())}
    try:
        with conn.cursor() as cur:
            cur.execute("IDENTIFY_SYSTEM")
            system_id, timeline, xlogpos, dbname = cur.fetchone()
        return {"ok": True, "system_id": str(system_id), "timeline": timeline, "database": dbname}
    except psycopg2.Error as exc:
        return {"ok": False, "error": " ".join(str(exc).split())}
    finally:
        conn.close()


def gather_facts(cfg: DatabaseConfig, *, replication_probe: bool = True) -> dict[str, Any]:
    """Everything `evaluate` needs, read from the catalog (raises psycopg2.Error when unreachable)."""
    conn = psycopg2.connect(
        cfg.dsn(), application_name="pulse-doctor", connect_timeout=10, options="-c statement_timeout=15000"
    )
    try:
        conn.set_session(readonly=True, autocommit=False)
        with conn.cursor() as cur:
            database, role, version, version_text, in_recovery = _one(
                cur,
                "SELECT current_database(), current_user, current_setting('server_version_num')::int, "
                "current_setting('server_version'), pg_is_in_recovery()",
            )
            cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(_SETTINGS),))
            raw = dict(cur.fetchall())
            settings: dict[str, Any] = {"wal_level": raw.get("wal_level")}
            for key in ("max_replication_slots", "max_wal_senders", "max_slot_wal_keep_size"):
                # max_slot_wal_keep_size is in MB, -1 unlimited; absent before 13.
                settings[key] = int(raw[key]) if key in raw else None
            superuser, replication, createdb = _one(
                cur, "SELECT rolsuper, rolreplication, rolcreatedb FROM pg_roles WHERE rolname = current_user"
            )
            slots_used = _one(cur, "SELECT count(*) FROM pg_replication_slots")[0]
            senders_active = _one(cur, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'")[0]
            db_create = _one(cur, "SELECT has_database_privilege(current_database(), 'CREATE')")[0]
            schema_row = _one(
                cur,
                "SELECT pg_get_userbyid(nspowner), has_schema_privilege(oid, 'USAGE'), "
                "has_schema_privilege(oid, 'CREATE'), pg_has_role(current_user, nspowner, 'USAGE') "
                "FROM pg_namespace WHERE nspname = %s",
                (cfg.state_schema,),
            )
            # Pulse's tables (and sequences) the role cannot read and write: the pipeline needs DML, no DDL.
            cur.execute(
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND ((c.relkind = 'r' AND NOT (has_table_privilege(c.oid, 'SELECT') "
                "AND has_table_privilege(c.oid, 'INSERT') AND has_table_privilege(c.oid, 'UPDATE') "
                "AND has_table_privilege(c.oid, 'DELETE'))) "
                "OR (c.relkind = 'S' AND NOT has_sequence_privilege(c.oid, 'USAGE'))) ORDER BY 1",
                (cfg.state_schema,),
            )
            dml_missing = [row[0] for row in cur.fetchall()]
            facts: dict[str, Any] = {
                "config": {
                    "slot": cfg.slot,
                    "publication": cfg.publication,
                    "state_schema": cfg.state_schema,
                    "source_schema": cfg.source_schema,
                    "protocol_version": cfg.protocol_version,
                },
                "server": {"version_num": version, "version": version_text, "in_recovery": in_recovery},
                "database": database,
                "role": {"name": role, "superuser": superuser, "replication": replication, "createdb": createdb},
                "settings": settings,
                "slots_used": slots_used,
                "wal_senders_active": senders_active,
                "database_create": db_create,
                "state_schema": (
                    {"exists": True, "owner": schema_row[0], "usage": schema_row[1], "create": schema_row[2],
                     "is_owner": schema_row[3], "dml_missing": dml_missing}
                    if schema_row
                    else {"exists": False}
                ),
                "tables": {t: _table_facts(cur, cfg.source_schema, t) for t in SOURCE_TABLES},
                "publication": _publication_facts(cur, cfg.publication, cfg.source_schema, version),
                "slot": _slot_facts(cur, cfg.slot, version),
                "registry": _registry_facts(cur, cfg.state_schema, cfg.slot),
            }
        conn.rollback()
    finally:
        conn.close()
    facts["replication_connection"] = _replication_connection(cfg) if replication_probe else None
    from pulse.source import native

    facts["native_reader"] = {"enabled": cfg.native_reader, "built": native.available()}
    return facts


# -- evaluation (pure) -------------------------------------------------------


def _restart_note(setting: str) -> str:
    return f"-- then restart PostgreSQL: {setting} is only read at server start"


def check_server_version(f: Mapping[str, Any]) -> CheckResult:
    version = f["server"]["version_num"]
    text = f["server"]["version"]
    protocol = f["config"]["protocol_version"]
    data = {"version_num": version}
    if version < LOGICAL_MIN_VERSION:
        return CheckResult("server_version", "error", f"PostgreSQL {text} has no pgoutput logical decoding",
                           "-- upgrade PostgreSQL to 14 or later", data)
    if version < STREAMING_MIN_VERSION:
        if protocol == 2:
            return CheckResult(
                "server_version", "error",
                f"PostgreSQL {text} does not speak pgoutput protocol 2 (streaming needs 14+), "
                "and database.protocol_version is 2",
                "-- set database.protocol_version = 1 (PULSE_DATABASE__PROTOCOL_VERSION=1); "
                "large transactions are then decoded only at commit",
                data,
            )
        return CheckResult("server_version", "ok",
                           f"PostgreSQL {text}: protocol 1 (large transactions decoded at commit)", None, data)
    note = "" if protocol == 2 else "; protocol 1 configured, 2 would stream large transactions"
    return CheckResult("server_version", "ok", f"PostgreSQL {text} supports pgoutput protocol 2{note}", None, data)


def check_wal_level(f: Mapping[str, Any]) -> CheckResult:
    level = f["settings"]["wal_level"]
    if level == "logical":
        return CheckResult("wal_level", "ok", "wal_level = logical")
    return CheckResult(
        "wal_level", "error",
        f"wal_level = {level}: logical decoding needs wal_level = logical",
        "ALTER SYSTEM SET wal_level = logical;\n" + _restart_note("wal_level") + "\n"
        "-- managed services: Amazon RDS / Aurora rds.logical_replication = 1, "
        "Cloud SQL cloudsql.logical_decoding = on (in the instance's parameters)",
    )


def check_replication_slots(f: Mapping[str, Any]) -> CheckResult:
    maximum = f["settings"]["max_replication_slots"]
    used = f["slots_used"]
    free = maximum - used
    # An existing slot of ours is reused; only a new one takes a free place.
    need = 0 if f.get("slot") else 1
    data = {"max": maximum, "used": used, "free": free}
    detail = f"{free} of max_replication_slots = {maximum} free ({used} in use)"
    if free >= need:
        return CheckResult("replication_slots", "ok", detail, None, data)
    suggested = used + need + 1
    return CheckResult(
        "replication_slots", "error", detail + ": Pulse needs one for its slot",
        f"ALTER SYSTEM SET max_replication_slots = {suggested};\n" + _restart_note("max_replication_slots")
        + "\n-- or drop a slot nobody uses: SELECT slot_name, active FROM pg_replication_slots;",
        data,
    )


def check_wal_senders(f: Mapping[str, Any]) -> CheckResult:
    maximum = f["settings"]["max_wal_senders"]
    active = f["wal_senders_active"]
    free = maximum - active
    data = {"max": maximum, "active": active, "free": free}
    detail = f"{free} of max_wal_senders = {maximum} free ({active} active)"
    if free >= 1:
        return CheckResult("wal_senders", "ok", detail, None, data)
    return CheckResult(
        "wal_senders", "error", detail + ": Pulse's replication connection needs one",
        f"ALTER SYSTEM SET max_wal_senders = {active + 2};\n" + _restart_note("max_wal_senders"),
        data,
    )


def check_role_replication(f: Mapping[str, Any]) -> CheckResult:
    role = f["role"]
    if role["superuser"]:
        return CheckResult("role_replication", "ok", f"role {role['name']} is a superuser")
    if role["replication"]:
        return CheckResult("role_replication", "ok", f"role {role['name']} has REPLICATION")
    return CheckResult(
        "role_replication", "error",
        f"role {role['name']} lacks REPLICATION: it cannot open a replication connection or create a slot",
        f"ALTER ROLE {quote_ident(role['name'])} REPLICATION;\n"
        "-- as a superuser; on Amazon RDS / Aurora instead: "
        f"GRANT rds_replication TO {quote_ident(role['name'])};",
    )


def check_select(f: Mapping[str, Any], table: str) -> CheckResult:
    schema = f["config"]["source_schema"]
    role = f["role"]["name"]
    t = f["tables"][table]
    name = f"select.{table}"
    if not t["exists"]:
        return CheckResult(
            name, "error", f"table {schema}.{table} does not exist",
            f"-- point database.source_schema (PULSE_DATABASE__SOURCE_SCHEMA) at the schema holding {table}, "
            "or on a fresh database create the source schema: pulse db init",
        )
    if t["can_select"]:
        return CheckResult(name, "ok", f"role {role} can SELECT {schema}.{table}")
    return CheckResult(
        name, "error", f"role {role} cannot SELECT {schema}.{table} (needed for the content cache and backfill)",
        f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(role)};\n"
        f"GRANT SELECT ON {qualified(schema, table)} TO {quote_ident(role)};",
    )


def check_state_schema(f: Mapping[str, Any]) -> CheckResult:
    schema = f["config"]["state_schema"]
    role = f["role"]["name"]
    s = f["state_schema"]
    if s["exists"]:
        if not s["usage"]:
            return CheckResult(
                "state_schema", "error",
                f"schema {schema} (owner {s['owner']}) exists but role {role} lacks USAGE on it "
                "(Pulse keeps its positions and slot registry there)",
                f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(role)};\n"
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {quote_ident(schema)} "
                f"TO {quote_ident(role)};\n"
                f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {quote_ident(schema)} TO {quote_ident(role)};",
            )
        missing = s.get("dml_missing") or []
        if missing:
            return CheckResult(
                "state_schema", "error",
                f"role {role} cannot read and write {', '.join(missing)} in schema {schema} "
                "(the pipeline stores its positions, status and backfill progress there)",
                f"-- as {quote_ident(s['owner'])} (the schema's owner):\n"
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {quote_ident(schema)} "
                f"TO {quote_ident(role)};\n"
                f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {quote_ident(schema)} TO {quote_ident(role)};",
            )
        note = "" if s["create"] else " (without CREATE: `pulse db init` runs as a role that has it)"
        return CheckResult("state_schema", "ok", f"schema {schema} exists and role {role} can use it{note}")
    if f["database_create"]:
        return CheckResult("state_schema", "ok",
                           f"schema {schema} does not exist yet; role {role} may create it (pulse db init)")
    return CheckResult(
        "state_schema", "error",
        f"schema {schema} does not exist and role {role} may not create schemas in database {f['database']}",
        f"-- run pulse db init as the database owner, or as the owner or a superuser:\n"
        f"CREATE SCHEMA {quote_ident(schema)} AUTHORIZATION {quote_ident(role)};\n"
        f"-- or let this role create it: GRANT CREATE ON DATABASE {quote_ident(f['database'])} TO {quote_ident(role)};",
    )


def check_least_privilege(f: Mapping[str, Any]) -> CheckResult:
    """The running role should hold REPLICATION and DML only: a superuser or an owner can do far more."""
    role = f["role"]
    name = role["name"]
    guide = "-- see docs/deploy.md, \"Least privilege\", for the grants of a role that only streams"
    if role["superuser"]:
        return CheckResult(
            "least_privilege", "warn",
            f"role {name} is a superuser: a leaked Pulse password then opens the whole cluster; Pulse needs only "
            "REPLICATION, SELECT on the two source tables and read/write on its own schema",
            f"-- keep {quote_ident(name)} for `pulse db init`, and run Pulse as a dedicated role:\n"
            "CREATE ROLE pulse_stream LOGIN REPLICATION PASSWORD '...';\n" + guide,
        )
    owned = []
    if role["replication"]:
        owned = [t for t, facts in f["tables"].items() if facts.get("is_owner")]
        if f["state_schema"].get("is_owner"):
            owned.append(f"schema {f['config']['state_schema']}")
        if f["database_create"]:
            owned.append(f"CREATE on database {f['database']}")
    if owned:
        return CheckResult(
            "least_privilege", "warn",
            f"role {name} has REPLICATION and also owns or may create {', '.join(owned)}: streaming needs none of "
            "that once `pulse db init` has run (it can alter or drop the source tables)",
            f"-- run `pulse db init` as {quote_ident(name)} (or the tables' owner), and `pulse run` / `pulse produce` "
            "as a role with REPLICATION and only the grants of\n" + guide,
        )
    return CheckResult("least_privilege", "ok",
                       f"role {name} is not a superuser and owns nothing Pulse does not need" if role["replication"]
                       else f"role {name} is not a superuser")


def create_publication_sql(f: Mapping[str, Any]) -> str:
    schema = f["config"]["source_schema"]
    tables = ", ".join(qualified(schema, t) for t in SOURCE_TABLES)
    return f"CREATE PUBLICATION {quote_ident(f['config']['publication'])} FOR TABLE {tables} WITH (publish = '{PUBLISH}');"


def _table_owners(f: Mapping[str, Any]) -> list[str]:
    return sorted({t["owner"] for t in f["tables"].values() if t.get("exists")})


def check_publication_rights(f: Mapping[str, Any]) -> CheckResult:
    """Creating a publication FOR TABLE needs ownership of every table (or an existing publication)."""
    role = f["role"]["name"]
    if f["publication"] is not None:
        return CheckResult("publication_rights", "ok",
                           f"publication {f['config']['publication']} exists; Pulse need not create it")
    tables = f["tables"]
    if not all(t["exists"] for t in tables.values()):
        return CheckResult("publication_rights", "error",
                           "the publication cannot be created before both source tables exist",
                           "-- see the select.* checks")
    not_owned = [name for name, t in tables.items() if not t["is_owner"]]
    if not not_owned:
        return CheckResult("publication_rights", "ok",
                           f"role {role} owns both source tables, so it can create the publication")
    owners = _table_owners(f)
    return CheckResult(
        "publication_rights", "error",
        f"role {role} does not own {', '.join(not_owned)} (owner: {', '.join(owners)}), and CREATE PUBLICATION "
        "... FOR TABLE needs ownership: the owner must create the publication",
        f"-- as {' / '.join(owners)} (the tables' owner) or a superuser:\n" + create_publication_sql(f),
    )


def check_publication(f: Mapping[str, Any]) -> CheckResult:
    pub_name = f["config"]["publication"]
    schema = f["config"]["source_schema"]
    pub = f["publication"]
    if pub is None:
        owns = all(t.get("is_owner") for t in f["tables"].values())
        prefix = "" if owns else f"-- as {' / '.join(_table_owners(f)) or 'the tables owner'} or a superuser:\n"
        hint = "\n-- or, since this role owns the tables: pulse db init --publication " + pub_name if owns else ""
        return CheckResult("publication", "error", f"publication {pub_name} does not exist",
                           prefix + create_publication_sql(f) + hint)
    problems: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    missing = [t for t in SOURCE_TABLES if t not in pub["tables"]]
    if missing:
        problems.append(f"does not cover {', '.join(f'{schema}.{t}' for t in missing)}")
        if pub["owner"] != f["role"]["name"]:
            fixes.append(f"-- as {pub['owner']} (the publication's owner), who must also own the tables:")
        fixes += [f"ALTER PUBLICATION {quote_ident(pub_name)} ADD TABLE {qualified(schema, t)};" for t in missing]
    if not pub["publish"]["insert"]:
        problems.append("does not publish inserts")
    for op in ("update", "delete"):
        if not pub["publish"][op]:
            warnings.append(f"does not publish {op}s")
    if not pub["publish"]["insert"] or warnings:
        fixes.append(f"ALTER PUBLICATION {quote_ident(pub_name)} SET (publish = '{PUBLISH}');")
    for table, info in sorted(pub["tables"].items()):
        if table not in SOURCE_TABLES:
            continue
        if info.get("row_filter"):
            # A row filter drops events at the source, before Pulse can see them.
            warnings.append(f"filters {table} rows (WHERE {info['row_filter']}): other rows are never delivered")
            fixes.append(f"ALTER PUBLICATION {quote_ident(pub_name)} SET TABLE "
                         + ", ".join(qualified(schema, t) for t in SOURCE_TABLES) + ";")
        cols = info.get("columns")
        table_cols = f["tables"].get(table, {}).get("columns")
        if cols is not None and table_cols and set(table_cols) - set(cols):
            absent = ", ".join(c for c in table_cols if c not in cols)
            warnings.append(f"publishes only some columns of {table}: {absent} never arrive")
            fixes.append(f"ALTER PUBLICATION {quote_ident(pub_name)} SET TABLE "
                         + ", ".join(qualified(schema, t) for t in SOURCE_TABLES) + ";")
    covered = "all tables" if pub["all_tables"] else ", ".join(sorted(pub["tables"])) or "no tables"
    data = {"tables": sorted(pub["tables"]), "publish": dict(pub["publish"])}
    fix = "\n".join(dict.fromkeys(fixes)) or None
    if problems:
        return CheckResult("publication", "error", f"publication {pub_name} " + "; ".join(problems + warnings),
                           fix, data)
    if warnings:
        return CheckResult("publication", "warn", f"publication {pub_name} " + "; ".join(warnings), fix, data)
    return CheckResult("publication", "ok", f"publication {pub_name} covers {covered}", None, data)


def check_replica_identity(f: Mapping[str, Any], table: str) -> CheckResult:
    schema = f["config"]["source_schema"]
    t = f["tables"][table]
    name = f"replica_identity.{table}"
    if not t["exists"]:
        return CheckResult(name, "error", f"table {schema}.{table} does not exist", "-- see the select.* checks")
    full = f"ALTER TABLE {qualified(schema, table)} REPLICA IDENTITY FULL;"
    ident = t["replica_identity"]
    data = {"replica_identity": ident}
    if ident == "full":
        return CheckResult(name, "ok", "REPLICA IDENTITY FULL: updates and deletes carry every old value",
                           None, data)
    if ident == "nothing" or (ident == "default" and not t["has_primary_key"]):
        why = "NOTHING" if ident == "nothing" else "DEFAULT without a primary key"
        return CheckResult(
            name, "error",
            f"REPLICA IDENTITY {why}: UPDATE and DELETE on {schema}.{table} fail while it is published "
            "and their changes cannot be captured",
            full + "\n-- or, with a primary key: ALTER TABLE " + qualified(schema, table) + " REPLICA IDENTITY DEFAULT;",
            data,
        )
    key = "the primary key" if ident == "default" else f"the columns of index {t['replica_identity_index']}"
    return CheckResult(
        name, "warn",
        f"REPLICA IDENTITY {ident.upper()} is fine; but UPDATE/DELETE old values other than {key} are not "
        "available (nor unchanged TOASTed values): REPLICA IDENTITY FULL gives them, at a WAL cost "
        "(the whole old row is logged on every update and delete)",
        full, data,
    )


def check_slot_wal_keep(f: Mapping[str, Any]) -> CheckResult:
    keep = f["settings"]["max_slot_wal_keep_size"]
    if keep is None:
        return CheckResult(
            "max_slot_wal_keep_size", "warn",
            "this server (before 13) cannot cap the WAL a slot retains: a stuck slot can fill the disk",
            "-- watch slot lag (pulse status) and the WAL disk; upgrade to 13+ for max_slot_wal_keep_size",
        )
    if keep < 0:
        return CheckResult(
            "max_slot_wal_keep_size", "warn",
            "max_slot_wal_keep_size = -1 (unlimited): a slot that stops advancing keeps WAL until the disk is full",
            f"ALTER SYSTEM SET max_slot_wal_keep_size = '{SUGGESTED_SLOT_WAL_KEEP}';\nSELECT pg_reload_conf();\n"
            "-- size it below the free space of the WAL disk; a slot further behind is invalidated "
            "(wal_status lost) and Pulse then needs a backfill",
            {"max_slot_wal_keep_size_mb": keep},
        )
    return CheckResult(
        "max_slot_wal_keep_size", "ok",
        f"max_slot_wal_keep_size = {human_bytes(keep * 1024 * 1024)}: a slot further behind than that is "
        "invalidated (and Pulse then needs a backfill)",
        None, {"max_slot_wal_keep_size_mb": keep},
    )


def check_slot(f: Mapping[str, Any]) -> CheckResult:
    slot_name = f["config"]["slot"]
    slot = f["slot"]
    literal = quote_literal(slot_name)
    backfill = "-- then re-process what was missed: pulse backfill --since <time of the last event delivered>"
    if slot is None:
        reg = f.get("registry") or {}
        if reg.get("registered"):
            schema = f["config"]["state_schema"]
            return CheckResult(
                "slot", "error",
                f"slot {slot_name} was created by Pulse (at {reg.get('created_at')}) but no longer exists: "
                "it was dropped, so changes since were missed; Pulse refuses to recreate it silently",
                f"DELETE FROM {quote_ident(schema)}.slot_registry WHERE slot_name = {literal};\n{backfill}",
            )
        return CheckResult("slot", "ok", f"slot {slot_name} does not exist yet; Pulse creates it on first run")
    data = {k: slot.get(k) for k in ("plugin", "database", "wal_status", "active", "active_pid", "lag_bytes",
                                     "retained_bytes", "safe_wal_size", "confirmed_flush_lsn", "restart_lsn")}
    drop = f"SELECT pg_drop_replication_slot({literal});"
    if slot["slot_type"] != "logical":
        return CheckResult("slot", "error", f"slot {slot_name} is a {slot['slot_type']} slot, not a logical one",
                           f"-- choose another name: --slot / PULSE_SLOT, or if it is unused: {drop}", data)
    if slot["database"] != f["database"]:
        return CheckResult(
            "slot", "error",
            f"slot {slot_name} belongs to database {slot['database']}, not {f['database']}",
            "-- choose another name for this database: --slot / PULSE_SLOT", data,
        )
    if slot["plugin"] != "pgoutput":
        return CheckResult(
            "slot", "error", f"slot {slot_name} uses output plugin {slot['plugin']}, Pulse needs pgoutput",
            f"-- choose another name: --slot / PULSE_SLOT, or if nothing else reads it: {drop}", data,
        )
    lag = f"lag {human_bytes(slot['lag_bytes'])} behind the server, retains {human_bytes(slot['retained_bytes'])} of WAL"
    status = slot.get("wal_status")
    # 17+ names the cause (wal_removed, rows_removed, ...); before, wal_status "lost" is the sign.
    if status == "lost" or slot.get("invalidation_reason"):
        reason = f" ({slot['invalidation_reason']})" if slot.get("invalidation_reason") else ""
        return CheckResult(
            "slot", "error",
            f"slot {slot_name} was invalidated{reason}: the server removed WAL it still needed, so changes were "
            "missed; it cannot be resumed",
            f"{drop}\n{backfill}", data,
        )
    if status == "unreserved":
        left = human_bytes(slot.get("safe_wal_size"))
        return CheckResult(
            "slot", "warn",
            f"slot {slot_name}: {lag}; wal_status unreserved: beyond max_slot_wal_keep_size, it is lost at the "
            f"next checkpoint unless it catches up ({left} left)",
            "-- start Pulse now so the slot advances, or raise max_slot_wal_keep_size:\n"
            "ALTER SYSTEM SET max_slot_wal_keep_size = '" + SUGGESTED_SLOT_WAL_KEEP + "';\nSELECT pg_reload_conf();",
            data,
        )
    if slot["active"]:
        return CheckResult(
            "slot", "warn",
            f"slot {slot_name} is in use by process {slot['active_pid']} ({lag}): another Pulse may be running",
            f"-- stop that consumer first; to see it: SELECT * FROM pg_stat_activity WHERE pid = {slot['active_pid']};",
            data,
        )
    extended = "; wal_status extended (beyond max_wal_size, kept for this slot)" if status == "extended" else ""
    return CheckResult("slot", "ok", f"slot {slot_name} (pgoutput): {lag}{extended}", None, data)


def check_replication_connection(f: Mapping[str, Any], earlier: list[CheckResult]) -> CheckResult | None:
    probe = f.get("replication_connection")
    if probe is None:
        return None
    if probe["ok"]:
        return CheckResult("replication_connection", "ok", "a logical replication connection opens (IDENTIFY_SYSTEM)")
    # The usual causes already have their own check and fix.
    causes = [r.name for r in earlier if r.status == "error" and r.name in ("role_replication", "wal_senders",
                                                                            "wal_level")]
    if causes:
        return CheckResult("replication_connection", "error",
                           f"a replication connection fails: {probe['error']}", f"-- see the {', '.join(causes)} checks")
    role = quote_ident(f["role"]["name"])
    return CheckResult(
        "replication_connection", "error", f"a replication connection fails: {probe['error']}",
        f"-- allow it in pg_hba.conf (logical replication matches the database column), e.g.\n"
        f"--   host  {f['database']}  {f['role']['name']}  <client address>/32  scram-sha-256\n"
        f"SELECT pg_reload_conf();\n-- and check the role can log in: ALTER ROLE {role} LOGIN;",
    )


def check_native_reader(f: Mapping[str, Any]) -> CheckResult | None:
    """Whether the replication stream is read by the C extension (about twice the throughput)."""
    n = f.get("native_reader")
    if n is None:
        return None
    if not n["enabled"]:
        return CheckResult("native_reader", "ok", "the pure-Python reader is configured (database.native_reader = false)")
    if n["built"]:
        return CheckResult("native_reader", "ok", "the native reader (pulse.source._wire) is built and used")
    return CheckResult(
        "native_reader", "warn", "pulse.source._wire was not built: the pure-Python reader runs, at about half the rate",
        "# install a C compiler and the Python headers, then reinstall Pulse, e.g.\n"
        "apt-get install gcc libc6-dev python3-dev && pip install --force-reinstall --no-deps pulse-cdc",
    )


def evaluate(facts: Mapping[str, Any]) -> list[CheckResult]:
    """Every check, in the order an operator should fix them."""
    results = [
        check_server_version(facts),
        check_wal_level(facts),
        check_replication_slots(facts),
        check_wal_senders(facts),
        check_role_replication(facts),
        check_least_privilege(facts),
        *(check_select(facts, t) for t in SOURCE_TABLES),
        check_state_schema(facts),
        check_publication_rights(facts),
        check_publication(facts),
        *(check_replica_identity(facts, t) for t in SOURCE_TABLES),
        check_slot_wal_keep(facts),
        check_slot(facts),
    ]
    probe = check_replication_connection(facts, results)
    if probe is not None:
        results.append(probe)
    reader = check_native_reader(facts)
    if reader is not None:
        results.append(reader)
    return results


def failure(cfg: DatabaseConfig, exc: psycopg2.Error) -> CheckResult:
    """The single result reported when the catalog cannot be read at all."""
    message = " ".join(str(exc).split())
    if isinstance(exc, psycopg2.OperationalError):
        return CheckResult(
            "connection", "error", f"cannot connect to {cfg.safe_url()}: {message}",
            "-- check PULSE_DATABASE_URL / --database-url, that the server runs and that pg_hba.conf admits this role",
        )
    return CheckResult("catalog", "error", f"reading the catalog of {cfg.safe_url()} failed: {message}",
                       "-- the role needs to read pg_catalog views; run pulse doctor as a role that can")


def run(cfg: DatabaseConfig, *, replication_probe: bool = True) -> list[CheckResult]:
    """Gather and evaluate; an unreachable database is one error result, not an exception."""
    try:
        facts = gather_facts(cfg, replication_probe=replication_probe)
    except psycopg2.Error as exc:
        return [failure(cfg, exc)]
    results = evaluate(facts)
    log.debug("doctor.done", database=cfg.safe_url(),
              errors=sum(r.status == "error" for r in results), warnings=sum(r.status == "warn" for r in results))
    return results


def overall(results: list[CheckResult]) -> Status:
    if any(r.status == "error" for r in results):
        return "error"
    if any(r.status == "warn" for r in results):
        return "warn"
    return "ok"


__all__ = ["CheckResult", "evaluate", "gather_facts", "overall", "quote_ident", "quote_literal", "run"]
