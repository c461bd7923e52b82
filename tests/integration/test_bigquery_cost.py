"""What the BigQuery sink costs, on the emulator (docs/sinks/bigquery.md, "Cost model").

The emulator bills nothing, so the tests look at the jobs themselves: the
official client is wrapped (`Recorder`) to record every job Pulse starts
(its SQL or destination, its labels, its maximumBytesBilled), and the
checks are on that record:

- a steady stream of fresh inserts issues no query that reads the table;
- ids that are not monotonic (a transaction committing a lower id later,
  an explicit id above the sequence and one below the mark, a sequence reset, a delete and re-insert, an update that
  moves the partition), from real PostgreSQL through pgoutput, land exactly
  once, and every query on the table names its partitions where the cost
  model says it can;
- the daily job budget holds across a simulated day (a driven clock).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest

from pulse.config import BigQueryConfig
from pulse.model import Batch, EnrichedEvent, Position
from pulse.runtime.pipeline import Pipeline
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.bigquery.cost import DAY_S, pacing
from tests.factories import make_event

from .pipeline_helpers import Running, insert_content, wait_for
from .bigquery_helpers import bq_settings

LIMIT = 5 * 1024**3


class Recorder:
    """The real client; every job it starts is recorded as (kind, sql or destination, labels, bytes limit)."""

    def __init__(self, client) -> None:
        self._client = client
        self.jobs: list[tuple[str, str, dict, int | None]] = []

    def query(self, sql, job_config=None, **kw):
        self.jobs.append(("query", sql, dict(job_config.labels or {}) if job_config else {},
                          job_config.maximum_bytes_billed if job_config else None))
        return self._client.query(sql, job_config=job_config, **kw)

    def load_table_from_file(self, fh, destination, job_config=None, **kw):
        self.jobs.append(("load", str(destination), dict(job_config.labels or {}) if job_config else {}, None))
        return self._client.load_table_from_file(fh, destination, job_config=job_config, **kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


def _on_table(rec: Recorder, start: int, table_ref: str) -> list[tuple[str, str, dict, int | None]]:
    """Query jobs from `start` on that read the table itself (not its dead-letter or state tables)."""
    return [j for j in rec.jobs[start:] if j[0] == "query" and table_ref in j[1]]


def _cfg(services, dataset, spool, **kw) -> BigQueryConfig:
    return BigQueryConfig(project=services.get("PULSE_BIGQUERY_PROJECT", "pulse-local"), dataset=dataset,
                          endpoint=services["PULSE_BIGQUERY_ENDPOINT"], spool_dir=spool, upload_in_process=False,
                          maximum_bytes_billed=LIMIT, request_timeout_s=30, **kw)


def _event(i: int, pos: Position, ts: datetime) -> EnrichedEvent:
    return make_event(i, pos, at=ts, content_id=None, duration_ms=1000, user_id=None, event_type="play",
                      device="web", raw_payload='{"i": %d}' % i, content_slug=None, content_title=None,
                      content_type=None, length_seconds=None, engagement_seconds=1.0, engagement_pct=None)


def _ids(client, dataset) -> list[int]:
    return sorted(r[0] for r in client.query(f"SELECT event_id FROM `{dataset}.engagement_events`").result())


def test_a_steady_stream_of_fresh_inserts_reads_nothing_of_the_table(services, bq, tmp_path):
    client, dataset = bq
    rec = Recorder(client)
    cfg = _cfg(services, dataset, tmp_path)
    sink = BigQuerySink(cfg, client=rec, slot="Cost-Slot.1")
    sink.open()
    table_ref = f"`{client.project}.{dataset}.engagement_events`"
    start = len(rec.jobs)
    now = datetime.now(timezone.utc)
    expected: list[int] = []
    next_id, lsn = 1, 100
    for k in range(8):
        # Ids as a busy source hands them out: runs with holes (rolled back, or still open) and,
        # from the third load on, one id skipped by the previous load arriving late (committed later).
        ids = [next_id + j for j in range(60) if j % 17 != 5]
        if k >= 2:
            ids.append(late)
        late = next_id + 5
        next_id += 60
        events = tuple(_event(i, Position(lsn, n), now - timedelta(days=k % 3)) for n, i in enumerate(ids))
        lsn += 1
        sink.write(Batch(events))
        assert sink.loader.load_once() == 1
        expected += ids
    sink.close()
    assert _ids(client, dataset) == sorted(expected)
    assert sink.loader.direct_loads == 8 and sink.loader.checks == 0 and sink.loader.merge_loads == 0
    assert _on_table(rec, start, table_ref) == [], "a query read the table during a stream of fresh inserts"
    loads = [j for j in rec.jobs[start:] if j[0] == "load"]
    assert len(loads) == 8 and all(j[1].endswith(".engagement_events") for j in loads)
    # Every job is labelled; every query carries the byte limit.
    assert all(j[2] == {"pulse_slot": "cost-slot_1", "pulse_path": "direct"} for j in loads)
    queries = [j for j in rec.jobs[start:] if j[0] == "query"]
    assert queries and all(j[3] == LIMIT and j[2]["pulse_slot"] == "cost-slot_1" for j in queries)
    assert {j[2]["pulse_path"] for j in queries} == {"state"}


# A predicate on the partitioning column with constant bounds (`bigquery.schema.partition_filter`).
PARTITION_PREDICATE = re.compile(r"T\.event_ts >= TIMESTAMP '\d{4}-\d\d-\d\d 00:00:00\+00'|T\.event_ts IS NULL|"
                                 r"AND FALSE")
# Queries on the table that the cost model says cannot name their partitions.
UNBOUNDED_PATHS = {"check-all", "mark-start"}


def _source_rows(cur) -> dict[int, datetime]:
    cur.execute("SELECT id, event_ts FROM engagement_events")
    return {r[0]: r[1] for r in cur.fetchall()}


def _table_rows(client, dataset) -> list[tuple[int, datetime]] | None:
    try:
        return [(r[0], r[1]) for r in client.query(
            f"SELECT event_id, event_ts FROM `{dataset}.engagement_events`").result()]
    except Exception:  # the table not there yet
        return None


def _exact(client, dataset, cur) -> bool:
    rows = _table_rows(client, dataset)
    if rows is None:
        return False
    ids = [r[0] for r in rows]
    return len(ids) == len(set(ids)) and dict(rows) == _source_rows(cur)


def _insert(cur, content: str, n: int, ts_sql: str = "now()", explicit_id: int | None = None) -> None:
    cols = "content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload"
    if explicit_id is not None:
        cur.execute(f"INSERT INTO engagement_events (id, {cols}) VALUES (%s, %s, gen_random_uuid(), 'play', "
                    f"{ts_sql}, 1000, 'ios', '{{}}')", (explicit_id, content))
        return
    cur.execute(f"INSERT INTO engagement_events ({cols}) SELECT %s, gen_random_uuid(), 'play', {ts_sql}, "
                "1000 + g, 'ios', '{}' FROM generate_series(1, %s) g", (content, n))


def test_ids_that_are_not_monotonic_land_exactly_once(scratch_db, services, bq, tmp_path):
    """Through PostgreSQL and pgoutput: changes arrive in commit order, not id order."""
    client, dataset = bq
    rec = Recorder(client)
    settings = bq_settings(scratch_db, services, dataset, tmp_path / "spool", load_interval_s=0.3,
                            maximum_bytes_billed=LIMIT)
    table_ref = f"`{client.project}.{dataset}.engagement_events`"
    conn = scratch_db.connect()
    conn.autocommit = True
    cur = conn.cursor()
    content = insert_content(cur, 1)[0]
    sink = BigQuerySink(settings.bigquery, client=rec, slot=settings.database.slot)

    def converge(what: str) -> None:
        wait_for(lambda: _exact(client, dataset, cur), 60, what, interval=0.3)

    def no_table_reads(start: int, what: str) -> None:
        reads = _on_table(rec, start, table_ref)
        assert reads == [], f"{what}: the table was read: {[j[1][:120] for j in reads]}"

    with Running(Pipeline(settings, [sink])):
        _insert(cur, content, 50)
        converge("the first 50 events")

        # 1. A transaction takes an id, then commits after later ids were loaded.
        start = len(rec.jobs)
        slow = psycopg2.connect(scratch_db.url)
        slow_cur = slow.cursor()
        _insert(slow_cur, content, 1)  # open: holds the next id
        _insert(cur, content, 10)
        converge("the ten events committed first")
        slow.commit()
        slow.close()
        converge("the lower id committed later")
        no_table_reads(start, "a lower id committed later (in the absent ranges)")

        # 2. An explicit id far above the sequence; the sequence goes on below it.
        start = len(rec.jobs)
        cur.execute("SELECT max(id) FROM engagement_events")
        top = cur.fetchone()[0]
        _insert(cur, content, 0, explicit_id=top + 10_000)
        converge("the explicit id")
        _insert(cur, content, 10)
        converge("sequence ids below the explicit one")
        # An explicit id below the mark that the table never held (in an absent range).
        _insert(cur, content, 0, explicit_id=top + 5_000)
        converge("an explicit id below the mark")
        no_table_reads(start, "ids below an explicit id (in the absent ranges)")

        # 3. A sequence reset: ids deleted, then handed out again.
        cur.execute("DELETE FROM engagement_events WHERE id <= 5")
        converge("the deletes")
        cur.execute("SELECT setval(pg_get_serial_sequence('engagement_events', 'id'), 1, false)")
        _insert(cur, content, 5)
        converge("the reused ids 1..5")

        # 4. A delete and a re-insert of one id in one transaction, on another day; an update
        # that moves a row to another day's partition (neither old partition is in the change).
        cur.execute("BEGIN")
        cur.execute("DELETE FROM engagement_events WHERE id = 6")
        _insert(cur, content, 0, ts_sql="now() - interval '3 days'", explicit_id=6)
        cur.execute("COMMIT")
        cur.execute("UPDATE engagement_events SET event_ts = event_ts - interval '5 days' WHERE id = 7")
        converge("the re-insert and the moved row")
    assert sink.loader.checks > 0  # the checked path did run for cases 3 and 4
    ids = [r[0] for r in _table_rows(client, dataset)]
    assert len(ids) == len(set(ids)) == len(_source_rows(cur))
    # Every query on the table names its partitions, but those the cost model says cannot.
    on_table = _on_table(rec, 0, table_ref)
    assert on_table and {j[2]["pulse_path"] for j in on_table} >= {"merge", "check"}
    for kind, sql, labels, _ in on_table:
        if labels["pulse_path"] not in UNBOUNDED_PATHS:
            assert PARTITION_PREDICATE.search(sql), f"{labels['pulse_path']} without a partition filter: {sql[:300]}"
    conn.close()


def test_the_job_budget_holds_across_a_simulated_day(services, bq, tmp_path):
    client, dataset = bq
    budget = 24
    cfg = _cfg(services, dataset, tmp_path, load_jobs_per_day=budget, load_interval_s=60)
    day0 = (datetime.now(timezone.utc).timestamp() // DAY_S + 1) * DAY_S  # the next UTC midnight
    clock = {"now": day0}
    sink = BigQuerySink(cfg, client=client, slot="budget")
    sink.open()
    sink.loader.clock = lambda: clock["now"]
    loads: list[float] = []
    next_id = 1
    ts = datetime.now(timezone.utc)
    for minute in range(30 * 60):  # a day and six hours, a spool file waiting at every minute
        clock["now"] = day0 + 60 * minute
        if not sink.spool.files():
            sink.write(Batch((_event(next_id, Position(next_id, 0), ts),)))
            next_id += 1
        if sink.loader.due():
            assert sink.loader.load_once() == 1
            loads.append(clock["now"] - day0)
        if minute == 24 * 60 - 1:
            status_at_midnight = sink.status()
    sink.close()
    interval, burst = pacing(budget)
    # Never more than the budget in any 24 hours (not only per calendar day).
    assert budget - 2 <= max(sum(1 for u in loads if t <= u <= t + DAY_S) for t in loads) <= budget
    # A fifth at once, then paced: the interval widens to what the rest of the budget allows.
    assert loads[:burst] == [60.0 * i for i in range(burst)]
    gaps = [b - a for a, b in zip(loads[burst:], loads[burst + 1:])]
    assert gaps and min(gaps) >= interval - 60 and max(gaps) <= interval + 60
    first_day = [t for t in loads if t < DAY_S]
    assert status_at_midnight == {"table jobs today": f"{len(first_day)}/{budget}"}
    # The state row keeps the count (per UTC day) and the pacing clock.
    second_day = [t for t in loads if t >= DAY_S]
    state = sink.loader.tables.read_state()
    assert state.jobs_day == datetime.fromtimestamp(day0 + DAY_S, timezone.utc).date()
    assert second_day and state.jobs_today == len(second_day)
    assert abs(state.jobs_tat - sink.loader.jobs_tat) < 1e-3 and state.jobs_tat > day0 + loads[-1]
    from pulse import metrics

    assert metrics.BQ_TABLE_JOBS.labels(table="engagement_events")._value.get() == len(second_day)
    assert metrics.BQ_TABLE_JOBS_BUDGET.labels(table="engagement_events")._value.get() == budget
    assert _ids(client, dataset) == list(range(1, len(loads) + 1))


@pytest.mark.parametrize("direct", [True, False], ids=["single-writer", "partition-instance"])
def test_a_table_from_before_the_mark_starts_it_once(services, bq, tmp_path, direct):
    """A state row without a mark (an older Pulse, or a Kafka partition instance that keeps none)."""
    client, dataset = bq
    rec = Recorder(client)
    cfg = _cfg(services, dataset, tmp_path)
    sink = BigQuerySink(cfg, client=rec, slot="old", name="bigquery" if direct else "bigquery@t/0")
    sink.open()
    now = datetime.now(timezone.utc)
    sink.write(Batch(tuple(_event(i, Position(10, i), now) for i in range(1, 21))))
    sink.loader.load_once()
    # Forget the mark, as a table written by an older Pulse has none; a Pulse that starts then.
    client.query(f"UPDATE `{dataset}._pulse_state` SET max_event_id = NULL, absent_ids = NULL "
                 "WHERE TRUE").result()
    sink.close()
    sink = BigQuerySink(cfg, client=rec, slot="old", name="bigquery" if direct else "bigquery@t/0")
    sink.open()
    sink.write(Batch(tuple(_event(i, Position(11, i), now) for i in range(21, 41))))
    sink.loader.load_once()
    sink.write(Batch(tuple(_event(i, Position(12, i), now) for i in range(41, 61))))
    start = len(rec.jobs)
    sink.loader.load_once()
    sink.close()
    assert _ids(client, dataset) == list(range(1, 61))
    paths = [j[2]["pulse_path"] for j in _on_table(rec, 0, f"`{client.project}.{dataset}.engagement_events`")]
    if direct:
        assert paths.count("mark-start") == 1  # once, then the mark is kept again
        assert _on_table(rec, start, f"`{client.project}.{dataset}.engagement_events`") == []
    else:
        assert "mark-start" not in paths and sink.loader.merge_loads == 2  # both loads of the reopened sink
