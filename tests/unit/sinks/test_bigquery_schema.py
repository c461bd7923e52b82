"""Unit tests of the BigQuery schema, Arrow conversion, schema evolution and SQL."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from google.cloud import bigquery

from pulse.errors import ConfigError, TerminalError
from pulse.model import EnrichedEvent, Position
from pulse.sinks.bigquery import schema as S
from tests.factories import make_event

NOW = datetime(2024, 8, 1, 12, 0, tzinfo=timezone.utc)


def _ev(i=1, seconds=1.005, pct=0.57, op="insert", payload='{"a": 1}') -> EnrichedEvent:
    return make_event(i, Position(7, i), at=NOW, op=op, content_id="c", duration_ms=1005, user_id="u",
                      event_type="play", device="ios", raw_payload=payload, content_slug="s", content_title="t",
                      content_type="video", length_seconds=100, engagement_seconds=seconds, engagement_pct=pct,
                      problems=("x", "y"))


def test_arrow_rows_follow_the_column_list_and_keep_decimals_exact():
    t = S.to_arrow([_ev(1), _ev(2, seconds=None, pct=None)])
    assert t.schema.names == list(S.NAMES)
    rows = t.to_pylist()
    assert rows[0]["engagement_seconds"] == Decimal("1.005") and rows[0]["engagement_pct"] == Decimal("0.57")
    assert rows[1]["engagement_pct"] is None
    assert rows[0]["problems"] == ["x", "y"] and rows[0]["source_lsn"] == 7 and rows[0]["source_seq"] == 1


def test_naive_timestamps_are_read_as_utc():
    ev = _ev()._replace(event_ts=datetime(2024, 8, 1, 12, 0))
    assert S.to_arrow([ev]).to_pylist()[0]["event_ts"] == NOW


def test_final_table_types_are_the_documented_ones():
    types = {f.name: f.field_type for f in S.final_schema()}
    assert types["event_id"] == "INT64" and types["raw_payload"] == "JSON" and types["event_ts"] == "TIMESTAMP"
    assert types["engagement_pct"] == "NUMERIC" and types["content_id"] == "STRING"
    # Staging holds raw_payload as text, so a bad value cannot fail the load.
    assert {f.name: f.field_type for f in S.staging_schema()}["raw_payload"] == "STRING"


def test_plan_schema_adds_missing_columns_as_nullable():
    existing = [bigquery.SchemaField("event_id", "INTEGER", mode="REQUIRED")]
    wanted = existing + [bigquery.SchemaField("new_col", "STRING", mode="REQUIRED")]
    add = S.plan_schema(existing, wanted, "t")
    assert [(f.name, f.mode) for f in add] == [("new_col", "NULLABLE")]


def test_plan_schema_keeps_unknown_columns_and_refuses_to_retype():
    existing = [bigquery.SchemaField("event_id", "INT64"), bigquery.SchemaField("analyst_col", "STRING")]
    assert S.plan_schema(existing, [bigquery.SchemaField("event_id", "INTEGER")], "t") == []
    with pytest.raises(TerminalError) as info:
        S.plan_schema(existing, [bigquery.SchemaField("event_id", "STRING")], "t")
    assert "never retypes" in info.value.hint


def test_identifiers_are_checked_before_they_reach_sql():
    assert S.check_identifier("dataset", "pulse_1") == "pulse_1"
    for bad in ("a`b", "x; DROP", "", "1abc-"):
        with pytest.raises(ConfigError):
            S.check_identifier("dataset", bad)


def test_apply_script_applies_only_newer_changes_and_records_the_position():
    sql = S.apply_script(final="`p.d.t`", source="`p.d.s`", dead_letter="`p.d.dl`", state="`p.d.st`",
                         table_name="t", position=(42, 3))
    assert "BEGIN TRANSACTION" in sql and sql.strip().endswith("COMMIT TRANSACTION;")
    assert "WHEN MATCHED AND S.op = 'delete'" in sql and "THEN DELETE" in sql
    assert "WHEN NOT MATCHED AND S.op != 'delete' THEN INSERT" in sql
    assert "42 AS source_lsn, 3 AS source_seq" in sql
    assert "ORDER BY source_lsn DESC, source_seq DESC" in sql


def test_changelog_window_bounds():
    w = S.changelog_window("`c`", (1, 2), (3, 4))
    assert "source_lsn > 1 OR (source_lsn = 1 AND source_seq > 2)" in w
    assert "source_lsn < 3 OR (source_lsn = 3 AND source_seq <= 4)" in w
