"""The pure parts of the BigQuery sink's cost control: the id mark, the job budget, partition filters, guards."""

from __future__ import annotations

import random
from datetime import date
from types import SimpleNamespace

import numpy as np
import pytest
from google.api_core import exceptions as g

from pulse.config import BigQueryConfig
from pulse.errors import TerminalError
from pulse.sinks.bigquery import schema as S
from pulse.sinks.bigquery.cost import BURST, DAY_S, IdMark, job_labels, next_load_at, pacing
from pulse.sinks.bigquery.client import Tables


def test_the_mark_never_calls_an_id_of_the_table_fresh():
    """Against a model: a set of the ids loaded. Loads in random, non-monotonic order (stragglers,
    explicit ids far ahead, resets to low ids); the mark must never say fresh of a loaded id, and
    must say fresh of ids just below it that were skipped (the stragglers)."""
    for seed in range(30):
        rng = random.Random(seed)
        loaded: set[int] = set()
        mark = IdMark(0)
        nxt = 1
        for _ in range(40):
            kind = rng.random()
            if kind < 0.6:  # the sequence, with holes
                ids = [i for i in range(nxt, nxt + rng.randrange(1, 50)) if rng.random() > 0.1]
                nxt += 50
            elif kind < 0.8 and loaded:  # stragglers and resets: anything below
                ids = [rng.randrange(1, nxt + 1) for _ in range(rng.randrange(1, 10))]
            else:  # an explicit id far ahead
                ids = [nxt + rng.randrange(1000, 100_000)]
            arr = np.array(ids, np.int64)
            fresh = mark.fresh(arr)
            assert not any(f and i in loaded for f, i in zip(fresh, ids)), (seed, ids)
            mark = mark.after(arr, keep=rng.choice([3, 1000]))
            loaded.update(ids)
            assert all(lo <= hi < mark.mark for lo, hi in mark.absent)
            assert list(mark.absent) == sorted(mark.absent)


def test_skipped_ids_stay_fresh_until_loaded():
    mark = IdMark(10).after(np.array([11, 12, 14, 15, 20], np.int64))
    assert mark == IdMark(20, ((13, 13), (16, 19)))
    assert mark.fresh(np.array([13, 17, 21, 12, 5], np.int64)).tolist() == [True, True, True, False, False]
    assert mark.after(np.array([13], np.int64)) == IdMark(20, ((16, 19),))
    # Past the limit the narrowest (then the lowest) ranges are forgotten: those ids are checked.
    kept = IdMark(0).after(np.array([2, 4, 100], np.int64), keep=2)
    assert kept == IdMark(100, ((3, 3), (5, 99)))


def _simulate(budget: int, wants, start: float, end: float) -> list[float]:
    """Job start times when the loader asks at each time of `wants` (sorted) and the budget decides."""
    tat, times = None, []
    interval, _ = pacing(budget)
    for t in wants:
        if start <= t < end and t >= next_load_at(tat, budget, t):
            times.append(t)
            tat = max(tat if tat is not None else t, t) + interval
    return times


def _worst_day(times: list[float]) -> int:
    arr = np.array(times)
    return max((np.searchsorted(arr, x + DAY_S, side="right") - i for i, x in enumerate(arr)), default=0)


def test_the_budget_holds_in_any_24_hours_and_spreads_over_the_day():
    budget = 1000
    interval, burst = pacing(budget)
    assert burst == round(BURST * budget) and burst + DAY_S / interval == budget
    for step in (20.0, 60.0, 3600.0):  # a backfill's pace, the default, an idle stream
        times = _simulate(budget, np.arange(0, 3 * DAY_S, step), 0, 3 * DAY_S)
        assert _worst_day(times) <= budget
        if step < interval:  # faster than the budget: the burst at once, then paced
            assert times[burst - 1] == (burst - 1) * step  # the burst at once ...
            assert min(np.diff(times[2 * burst:])) >= interval - step  # ... then one per interval
    # Idle, then as fast as possible, then idle again: the pattern a per-calendar-day count lets through
    # twice (a day's end, the next day's start); in any 24 hours it is still the budget.
    rng = np.random.default_rng(3)
    for _ in range(6):
        wants = np.sort(np.concatenate([rng.uniform(a, a + DAY_S / 6, 800) for a in rng.uniform(0, 4 * DAY_S, 5)]))
        assert _worst_day(_simulate(budget, wants, 0, 5 * DAY_S)) <= budget
    assert next_load_at(None, budget, 5.0) == 5.0
    assert pacing(1) == (DAY_S + 1.0, 1) and _worst_day(_simulate(1, np.arange(0, 3 * DAY_S, 60.0), 0, 3 * DAY_S)) == 1


def test_partition_filter_names_runs_of_days_and_the_null_partition():
    f = S.partition_filter({date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 5), None})
    assert f == ("((T.event_ts >= TIMESTAMP '2024-01-01 00:00:00+00' AND T.event_ts < TIMESTAMP "
                 "'2024-01-03 00:00:00+00') OR (T.event_ts >= TIMESTAMP '2024-01-05 00:00:00+00' AND T.event_ts < "
                 "TIMESTAMP '2024-01-06 00:00:00+00') OR T.event_ts IS NULL)")
    assert S.partition_filter(set()) == "FALSE"


def test_partition_filter_at_the_edges_of_the_date_range():
    """Rows on BigQuery's first and last days (0001-01-01, 9999-12-31: `event_ts_at_limit`) have
    partitions too; the day after the last one is not a date, so that run is bounded below only."""
    f = S.partition_filter({date(9999, 12, 30), date(9999, 12, 31), date(1, 1, 1)})
    assert f == ("((T.event_ts >= TIMESTAMP '0001-01-01 00:00:00+00' AND T.event_ts < TIMESTAMP "
                 "'0001-01-02 00:00:00+00') OR (T.event_ts >= TIMESTAMP '9999-12-30 00:00:00+00'))")
    assert S.partition_filter({date.max}) == "((T.event_ts >= TIMESTAMP '9999-12-31 00:00:00+00'))"


def test_the_merge_carries_the_filter_and_the_state_row_the_mark_and_the_count():
    sql = S.apply_script(final="F", source="X", dead_letter="D", state="ST", table_name="t", position=(5, 1),
                         target_filter="(T.event_ts IS NULL)",
                         state_update=S.StateUpdate(42, ((3, 4),), date(2024, 1, 1), 1, 10, 5))
    assert "ON T.event_id = S.event_id AND (T.event_ts IS NULL)\n" in sql
    assert "max_event_id = 42, absent_ids = '[[3,4]]'" in sql
    assert "jobs_today = IF(T.jobs_day = DATE '2024-01-01', IFNULL(T.jobs_today, 0) + 1, 1)" in sql
    assert ("jobs_tat = TIMESTAMP_ADD(GREATEST(IFNULL(T.jobs_tat, TIMESTAMP_MICROS(10)), TIMESTAMP_MICROS(10)), "
            "INTERVAL 5 MICROSECOND)") in sql
    # A writer that keeps no mark (stream mode, a Kafka partition): raised in SQL, absent ranges forgotten.
    plain = S.apply_script(final="F", source="X", dead_letter="D", state="ST", table_name="t", position=(5, 1))
    assert "GREATEST(T.max_event_id, IFNULL((SELECT MAX(X.event_id) FROM X X" in plain
    assert "absent_ids = CAST(NULL AS STRING)" in plain and "jobs_today = T.jobs_today" in plain


def test_job_labels_are_valid_label_values():
    assert job_labels("My.Slot-1", "check-all") == {"pulse_slot": "my_slot-1", "pulse_path": "check-all"}
    assert job_labels(None, "x" * 80)["pulse_slot"] == "none" and len(job_labels("s", "x" * 80)["pulse_path"]) == 63


class _Job:
    def __init__(self, exc):
        self.exc = exc

    def result(self, **_):
        raise self.exc


def test_a_query_over_the_byte_limit_stops_with_an_error_naming_it():
    refused = g.BadRequest("Query exceeded limit for bytes billed: 104857600. 838860800 or higher required.",
                           errors=[{"reason": "bytesBilledLimitExceeded", "message": "..."}])
    seen = {}

    def query(sql, job_config=None, **_):
        seen["limit"], seen["labels"] = job_config.maximum_bytes_billed, job_config.labels
        return _Job(refused)

    tables = Tables(SimpleNamespace(project="p", query=query), BigQueryConfig(maximum_bytes_billed=100 * 1024**2),
                    slot="s1")
    with pytest.raises(TerminalError) as err:
        tables.query("SELECT DATE(event_ts), count(*) FROM `p.pulse.engagement_events` T WHERE event_id BETWEEN 1 "
                     "AND 2 GROUP BY 1", "id check (every partition)", path="check-all")
    assert seen == {"limit": 100 * 1024**2, "labels": {"pulse_slot": "s1", "pulse_path": "check-all"}}
    text = str(err.value)
    assert "id check (every partition)" in text and "maximum_bytes_billed (104,857,600 bytes)" in text
    assert "SELECT DATE(event_ts), count(*) FROM `p.pulse.engagement_events`" in text
    assert "PULSE_BIGQUERY__MAXIMUM_BYTES_BILLED" in err.value.hint
