"""`pulse.doctor.evaluate` over given facts: every check's branches, no database.

`healthy()` is a fact set on which every check passes (except the two
replica-identity warnings a default table gets); each test changes the one
fact it is about and asserts the status and the fix an operator would paste.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pulse.doctor import (
    CheckResult,
    evaluate,
    human_bytes,
    overall,
    quote_ident,
    quote_literal,
)


def healthy(**changes: Any) -> dict[str, Any]:
    """Facts of a well-prepared database; `changes` are dotted paths (`settings.wal_level=...`)."""
    columns = {
        "content": ["id", "slug", "title", "content_type", "length_seconds", "publish_ts"],
        "engagement_events": ["id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device",
                              "raw_payload"],
    }
    facts: dict[str, Any] = {
        "config": {"slot": "pulse", "publication": "pulse", "state_schema": "pulse", "source_schema": "public",
                   "protocol_version": 2},
        "server": {"version_num": 150018, "version": "15.18", "in_recovery": False},
        "database": "app",
        "role": {"name": "pulse", "superuser": False, "replication": True, "createdb": False},
        "settings": {"wal_level": "logical", "max_replication_slots": 10, "max_wal_senders": 10,
                     "max_slot_wal_keep_size": 4096},
        "slots_used": 2,
        "wal_senders_active": 1,
        "database_create": True,
        "state_schema": {"exists": True, "owner": "pulse", "usage": True, "create": True},
        "tables": {
            t: {"exists": True, "owner": "pulse", "is_owner": True, "can_select": True, "replica_identity": "full",
                "has_primary_key": True, "replica_identity_index": None, "columns": cols}
            for t, cols in columns.items()
        },
        "publication": {
            "owner": "pulse", "all_tables": False,
            "publish": {"insert": True, "update": True, "delete": True, "truncate": True},
            "tables": {t: {"columns": cols, "row_filter": None} for t, cols in columns.items()},
        },
        "slot": None,
        "registry": {"readable": True, "registered": False},
        "replication_connection": {"ok": True},
    }
    for path, value in changes.items():
        node = facts
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return facts


def slot(**over: Any) -> dict[str, Any]:
    base = {"plugin": "pgoutput", "slot_type": "logical", "database": "app", "temporary": False, "active": False,
            "active_pid": None, "wal_status": "reserved", "safe_wal_size": 4 * 2**30, "invalidation_reason": None,
            "restart_lsn": "0/1000000", "confirmed_flush_lsn": "0/1000100", "lag_bytes": 5 * 2**20,
            "retained_bytes": 6 * 2**20}
    base.update(over)
    return base


def by_name(facts: dict[str, Any]) -> dict[str, CheckResult]:
    results = evaluate(facts)
    names = [r.name for r in results]
    assert len(names) == len(set(names)), names
    return {r.name: r for r in results}


def check(facts: dict[str, Any], name: str) -> CheckResult:
    return by_name(facts)[name]


# A role with only the documented grants: REPLICATION, SELECT on the tables, DML on Pulse's schema.
LEAST = {"tables.content.is_owner": False, "tables.engagement_events.is_owner": False, "database_create": False,
         "state_schema": {"exists": True, "owner": "app_owner", "usage": True, "create": False, "is_owner": False,
                          "dml_missing": []}}


def test_healthy_database_is_all_ok():
    results = evaluate(healthy(**LEAST))
    assert {r.status for r in results} == {"ok"}, [r for r in results if r.status != "ok"]
    assert overall(results) == "ok"
    assert all(r.fix is None for r in results)
    assert [r.name for r in results] == [
        "server_version", "wal_level", "replication_slots", "wal_senders", "role_replication", "least_privilege",
        "select.content", "select.engagement_events", "state_schema", "publication_rights", "publication",
        "replica_identity.content", "replica_identity.engagement_events", "max_slot_wal_keep_size", "slot",
        "replication_connection",
    ]


def test_every_result_is_serialisable():
    import json

    facts = healthy(slot=slot())
    for r in evaluate(facts):
        doc = json.loads(json.dumps(r.to_dict()))
        assert set(doc) == {"name", "status", "detail", "fix", "data"}
        assert doc["status"] in ("ok", "warn", "error")


# -- quoting -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, quoted",
    [("pulse", '"pulse"'), ("Analytics", '"Analytics"'), ("a-b c", '"a-b c"'), ('we"ird', '"we""ird"'),
     ("select", '"select"')],
)
def test_quote_ident(name, quoted):
    assert quote_ident(name) == quoted


def test_quote_literal():
    assert quote_literal("pulse") == "'pulse'"
    assert quote_literal("o'brien") == "'o''brien'"


def test_human_bytes():
    assert human_bytes(None) == "unknown"
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 kB"
    assert human_bytes(4 * 2**30) == "4.0 GB"


# -- server version ----------------------------------------------------------


def test_server_13_with_protocol_2_is_an_error_with_the_setting_to_change():
    r = check(healthy(**{"server.version_num": 130011, "server.version": "13.11"}), "server_version")
    assert r.status == "error"
    assert "database.protocol_version = 1" in r.fix and "PULSE_DATABASE__PROTOCOL_VERSION=1" in r.fix


def test_server_13_with_protocol_1_is_ok():
    r = check(healthy(**{"server.version_num": 130011, "config.protocol_version": 1}), "server_version")
    assert r.status == "ok"


def test_server_9_cannot_decode():
    r = check(healthy(**{"server.version_num": 90600, "server.version": "9.6"}), "server_version")
    assert r.status == "error" and "upgrade" in r.fix


def test_server_14_with_protocol_1_is_ok_and_says_so():
    r = check(healthy(**{"server.version_num": 140000, "config.protocol_version": 1}), "server_version")
    assert r.status == "ok" and "protocol 1 configured" in r.detail


# -- settings ----------------------------------------------------------------


def test_wal_level_replica_is_an_error_with_alter_system_and_restart():
    r = check(healthy(**{"settings.wal_level": "replica"}), "wal_level")
    assert r.status == "error"
    assert "ALTER SYSTEM SET wal_level = logical;" in r.fix
    assert "restart" in r.fix


def test_no_free_replication_slot_is_an_error():
    r = check(healthy(slots_used=10), "replication_slots")
    assert r.status == "error"
    assert "ALTER SYSTEM SET max_replication_slots = 12;" in r.fix and "restart" in r.fix
    assert r.data["free"] == 0


def test_full_slots_are_fine_when_our_slot_already_exists():
    r = check(healthy(slots_used=10, slot=slot()), "replication_slots")
    assert r.status == "ok"


def test_no_free_wal_sender_is_an_error():
    r = check(healthy(wal_senders_active=10), "wal_senders")
    assert r.status == "error"
    assert "ALTER SYSTEM SET max_wal_senders = 12;" in r.fix and "restart" in r.fix


def test_one_free_wal_sender_is_enough():
    assert check(healthy(wal_senders_active=9), "wal_senders").status == "ok"


def test_unlimited_slot_wal_keep_is_a_warning_with_a_value():
    r = check(healthy(**{"settings.max_slot_wal_keep_size": -1}), "max_slot_wal_keep_size")
    assert r.status == "warn"
    assert "ALTER SYSTEM SET max_slot_wal_keep_size = '20GB';" in r.fix
    assert "pg_reload_conf()" in r.fix
    assert "disk" in r.detail


def test_slot_wal_keep_value_is_reported():
    r = check(healthy(), "max_slot_wal_keep_size")
    assert r.status == "ok" and "4.0 GB" in r.detail
    assert r.data["max_slot_wal_keep_size_mb"] == 4096


def test_slot_wal_keep_absent_before_13_is_a_warning():
    r = check(healthy(**{"settings.max_slot_wal_keep_size": None, "server.version_num": 120000,
                         "config.protocol_version": 1}), "max_slot_wal_keep_size")
    assert r.status == "warn"


# -- role and privileges -----------------------------------------------------


def test_role_without_replication_gets_alter_role():
    r = check(healthy(**{"role.replication": False}), "role_replication")
    assert r.status == "error"
    assert 'ALTER ROLE "pulse" REPLICATION;' in r.fix


def test_superuser_needs_no_replication_attribute():
    r = check(healthy(**{"role.replication": False, "role.superuser": True}), "role_replication")
    assert r.status == "ok" and "superuser" in r.detail


def test_odd_role_names_are_quoted_in_the_fix():
    facts = healthy(**{"role.name": 'Team "A"', "role.replication": False,
                       "tables.content.can_select": False})
    results = by_name(facts)
    assert 'ALTER ROLE "Team ""A""" REPLICATION;' in results["role_replication"].fix
    assert 'GRANT SELECT ON "public"."content" TO "Team ""A""";' in results["select.content"].fix


def test_missing_select_gets_grant():
    r = check(healthy(**{"tables.engagement_events.can_select": False}), "select.engagement_events")
    assert r.status == "error"
    assert 'GRANT SELECT ON "public"."engagement_events" TO "pulse";' in r.fix
    assert check(healthy(**{"tables.engagement_events.can_select": False}), "select.content").status == "ok"


def test_missing_table_is_an_error_that_names_the_schema_setting():
    r = check(healthy(**{"tables.content": {"exists": False}}), "select.content")
    assert r.status == "error" and "does not exist" in r.detail
    assert "PULSE_DATABASE__SOURCE_SCHEMA" in r.fix


def test_state_schema_without_create_is_fine_once_initialised():
    r = check(healthy(**{"state_schema.create": False}), "state_schema")
    assert r.status == "ok" and "pulse db init" in r.detail


def test_state_schema_without_usage_gets_grant():
    r = check(healthy(**{"state_schema.usage": False}), "state_schema")
    assert r.status == "error" and "USAGE" in r.detail
    assert 'GRANT USAGE ON SCHEMA "pulse" TO "pulse";' in r.fix
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "pulse" TO "pulse";' in r.fix


def test_state_tables_without_dml_get_grant():
    r = check(healthy(**LEAST, **{"role.name": "streamer"}) | {"state_schema": {**LEAST["state_schema"],
              "dml_missing": ["runtime_status", "external_dead_letter_id_seq"]}}, "state_schema")
    assert r.status == "error" and "runtime_status" in r.detail
    assert '-- as "app_owner"' in r.fix
    assert 'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "pulse" TO "streamer";' in r.fix


def test_a_superuser_is_warned():
    r = check(healthy(**LEAST, **{"role.superuser": True}), "least_privilege")
    assert r.status == "warn" and "superuser" in r.detail
    assert "CREATE ROLE pulse_stream LOGIN REPLICATION" in r.fix


def test_replication_plus_ownership_is_warned():
    r = check(healthy(), "least_privilege")  # the all-in-one role: owns the tables, may create schemas
    assert r.status == "warn"
    assert "content" in r.detail and "engagement_events" in r.detail and "CREATE on database app" in r.detail
    assert check(healthy(**LEAST, **{"state_schema.is_owner": True}), "least_privilege").status == "warn"


def test_an_owner_without_replication_is_not_warned():
    # That role runs `pulse db init`, not the stream (role_replication reports the missing attribute).
    assert check(healthy(**{"role.replication": False}), "least_privilege").status == "ok"


def test_absent_state_schema_is_fine_with_create_on_the_database():
    r = check(healthy(state_schema={"exists": False}), "state_schema")
    assert r.status == "ok" and "pulse db init" in r.detail


def test_absent_state_schema_without_create_on_the_database_is_an_error():
    r = check(healthy(state_schema={"exists": False}, database_create=False), "state_schema")
    assert r.status == "error"
    assert 'CREATE SCHEMA "pulse" AUTHORIZATION "pulse";' in r.fix
    assert 'GRANT CREATE ON DATABASE "app" TO "pulse";' in r.fix


# -- publication -------------------------------------------------------------


def test_missing_publication_gets_create_publication():
    r = check(healthy(publication=None), "publication")
    assert r.status == "error"
    assert ('CREATE PUBLICATION "pulse" FOR TABLE "public"."content", "public"."engagement_events" '
            "WITH (publish = 'insert, update, delete, truncate');") in r.fix
    assert "pulse db init" in r.fix
    assert check(healthy(publication=None), "publication_rights").status == "ok"


def test_missing_publication_on_tables_owned_by_someone_else():
    facts = healthy(publication=None)
    for t in facts["tables"].values():
        t.update(owner="app_owner", is_owner=False)
    results = by_name(facts)
    rights = results["publication_rights"]
    assert rights.status == "error"
    assert "ownership" in rights.detail and "app_owner" in rights.detail
    assert rights.fix.startswith("-- as app_owner")
    assert 'CREATE PUBLICATION "pulse" FOR TABLE "public"."content", "public"."engagement_events"' in rights.fix
    pub = results["publication"]
    assert pub.status == "error" and "-- as app_owner" in pub.fix and "pulse db init" not in pub.fix


def test_existing_publication_needs_no_table_ownership():
    facts = healthy()
    for t in facts["tables"].values():
        t.update(owner="app_owner", is_owner=False)
    assert check(facts, "publication_rights").status == "ok"


def test_publication_rights_before_tables_exist():
    r = check(healthy(publication=None, **{"tables.content": {"exists": False}}), "publication_rights")
    assert r.status == "error"


def test_publication_missing_a_table_gets_alter_publication():
    facts = healthy()
    del facts["publication"]["tables"]["content"]
    r = check(facts, "publication")
    assert r.status == "error" and "public.content" in r.detail
    assert r.fix == 'ALTER PUBLICATION "pulse" ADD TABLE "public"."content";'


def test_publication_owned_by_another_role_says_who_must_alter_it():
    facts = healthy(**{"publication.owner": "dba"})
    del facts["publication"]["tables"]["engagement_events"]
    r = check(facts, "publication")
    assert r.fix.startswith("-- as dba")
    assert 'ALTER PUBLICATION "pulse" ADD TABLE "public"."engagement_events";' in r.fix


def test_publication_for_all_tables_is_ok():
    r = check(healthy(**{"publication.all_tables": True}), "publication")
    assert r.status == "ok" and "all tables" in r.detail


def test_publication_without_inserts_is_an_error():
    r = check(healthy(**{"publication.publish": {"insert": False, "update": True, "delete": True,
                                                 "truncate": True}}), "publication")
    assert r.status == "error"
    assert "ALTER PUBLICATION \"pulse\" SET (publish = 'insert, update, delete, truncate');" in r.fix


def test_publication_without_deletes_is_a_warning():
    r = check(healthy(**{"publication.publish": {"insert": True, "update": True, "delete": False,
                                                 "truncate": True}}), "publication")
    assert r.status == "warn" and "deletes" in r.detail
    assert "SET (publish = " in r.fix


def test_publication_row_filter_and_column_list_are_warnings():
    facts = healthy()
    facts["publication"]["tables"]["engagement_events"] = {"columns": ["id", "content_id"],
                                                           "row_filter": "(device = 'ios')"}
    r = check(facts, "publication")
    assert r.status == "warn"
    assert "device = 'ios'" in r.detail and "raw_payload" in r.detail
    assert r.fix == 'ALTER PUBLICATION "pulse" SET TABLE "public"."content", "public"."engagement_events";'


# -- replica identity --------------------------------------------------------


def test_replica_identity_default_is_a_warning_suggesting_full():
    r = check(healthy(**{"tables.engagement_events.replica_identity": "default"}),
              "replica_identity.engagement_events")
    assert r.status == "warn"
    assert "old values" in r.detail and "WAL cost" in r.detail
    assert r.fix == 'ALTER TABLE "public"."engagement_events" REPLICA IDENTITY FULL;'


def test_replica_identity_index_is_a_warning_naming_the_index():
    r = check(healthy(**{"tables.content.replica_identity": "index",
                         "tables.content.replica_identity_index": "content_slug_key"}), "replica_identity.content")
    assert r.status == "warn" and "content_slug_key" in r.detail


def test_replica_identity_nothing_is_an_error():
    r = check(healthy(**{"tables.engagement_events.replica_identity": "nothing"}),
              "replica_identity.engagement_events")
    assert r.status == "error" and "UPDATE and DELETE" in r.detail
    assert 'ALTER TABLE "public"."engagement_events" REPLICA IDENTITY FULL;' in r.fix


def test_replica_identity_default_without_primary_key_is_an_error():
    r = check(healthy(**{"tables.content.replica_identity": "default", "tables.content.has_primary_key": False}),
              "replica_identity.content")
    assert r.status == "error" and "without a primary key" in r.detail


def test_replica_identity_of_a_missing_table():
    assert check(healthy(**{"tables.content": {"exists": False}}), "replica_identity.content").status == "error"


# -- slot --------------------------------------------------------------------


def test_absent_slot_is_ok():
    r = check(healthy(), "slot")
    assert r.status == "ok" and "creates it" in r.detail


def test_healthy_slot_reports_its_lag():
    r = check(healthy(slot=slot()), "slot")
    assert r.status == "ok"
    assert "5.0 MB" in r.detail
    assert r.data["lag_bytes"] == 5 * 2**20 and r.data["wal_status"] == "reserved"


def test_lost_slot_is_an_error_with_drop_and_backfill():
    r = check(healthy(slot=slot(wal_status="lost", restart_lsn=None, safe_wal_size=None)), "slot")
    assert r.status == "error"
    assert "invalidated" in r.detail and "missed" in r.detail
    assert r.fix.splitlines()[0] == "SELECT pg_drop_replication_slot('pulse');"
    assert "pulse backfill" in r.fix


def test_invalidation_reason_is_named_when_the_server_gives_it():
    r = check(healthy(slot=slot(wal_status="lost", invalidation_reason="wal_removed")), "slot")
    assert r.status == "error" and "wal_removed" in r.detail


def test_slot_name_is_a_quoted_literal_in_the_fix():
    r = check(healthy(slot=slot(wal_status="lost"), **{"config.slot": "o'slot"}), "slot")
    assert "SELECT pg_drop_replication_slot('o''slot');" in r.fix


def test_unreserved_slot_is_a_warning():
    r = check(healthy(slot=slot(wal_status="unreserved", safe_wal_size=1024)), "slot")
    assert r.status == "warn" and "unreserved" in r.detail


def test_extended_slot_is_ok_and_says_so():
    r = check(healthy(slot=slot(wal_status="extended")), "slot")
    assert r.status == "ok" and "extended" in r.detail


def test_active_slot_is_a_warning_naming_the_process():
    r = check(healthy(slot=slot(active=True, active_pid=4242)), "slot")
    assert r.status == "warn" and "4242" in r.detail


def test_slot_with_another_plugin_is_an_error():
    r = check(healthy(slot=slot(plugin="wal2json")), "slot")
    assert r.status == "error" and "wal2json" in r.detail
    assert "pg_drop_replication_slot('pulse')" in r.fix


def test_slot_of_another_database_is_an_error():
    r = check(healthy(slot=slot(database="other")), "slot")
    assert r.status == "error" and "other" in r.detail and "PULSE_SLOT" in r.fix


def test_physical_slot_with_our_name_is_an_error():
    r = check(healthy(slot=slot(slot_type="physical", plugin=None, database=None)), "slot")
    assert r.status == "error" and "physical" in r.detail


def test_registered_slot_that_disappeared_is_lost():
    r = check(healthy(registry={"readable": True, "registered": True, "created_at": "2024-08-01"}), "slot")
    assert r.status == "error" and "missed" in r.detail
    assert """DELETE FROM "pulse".slot_registry WHERE slot_name = 'pulse';""" in r.fix
    assert "pulse backfill" in r.fix


# -- replication connection --------------------------------------------------


def test_failed_replication_connection_points_at_the_cause_already_reported():
    facts = healthy(**{"role.replication": False},
                    replication_connection={"ok": False, "error": "must be superuser or replication role"})
    r = check(facts, "replication_connection")
    assert r.status == "error" and "role_replication" in r.fix


def test_failed_replication_connection_without_known_cause_suggests_pg_hba():
    r = check(healthy(replication_connection={"ok": False, "error": "no pg_hba.conf entry"}),
              "replication_connection")
    assert r.status == "error" and "pg_hba.conf" in r.fix


def test_replication_probe_can_be_skipped():
    assert "replication_connection" not in by_name(healthy(replication_connection=None))


# -- overall -----------------------------------------------------------------


def test_overall_is_the_worst_status():
    ok = CheckResult("a", "ok", "")
    warn = CheckResult("b", "warn", "")
    error = CheckResult("c", "error", "")
    assert overall([ok]) == "ok"
    assert overall([ok, warn]) == "warn"
    assert overall([warn, error, ok]) == "error"


def test_facts_are_not_mutated():
    facts = healthy(slot=slot(wal_status="lost"), publication=None)
    before = copy.deepcopy(facts)
    evaluate(facts)
    assert facts == before


def test_native_reader_check_warns_only_when_enabled_but_not_built() -> None:
    from pulse.doctor import check_native_reader

    assert check_native_reader({}) is None
    assert check_native_reader({"native_reader": {"enabled": True, "built": True}}).status == "ok"
    assert check_native_reader({"native_reader": {"enabled": False, "built": False}}).status == "ok"
    missing = check_native_reader({"native_reader": {"enabled": True, "built": False}})
    assert missing.status == "warn" and "gcc" in missing.fix
