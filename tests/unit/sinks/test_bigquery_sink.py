"""Unit tests of the sink's control flow with fakes (no BigQuery)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow as pa
import pytest
from google.api_core import exceptions as g

from pulse.config import BigQueryConfig
from pulse.errors import TerminalError, TransientError
from pulse.model import Batch, Position
from pulse.sinks.bigquery import client as C
from pulse.sinks.bigquery import load as L
from pulse.sinks.bigquery.sink import BigQuerySink
from pulse.sinks.bigquery.cost import IdMark
from pulse.sinks.bigquery.spool import Spool
from tests.factories import make_event

NOW = datetime(2024, 8, 1, tzinfo=timezone.utc)


def _ev(i, pos):
    return make_event(i, pos, at=NOW, content_id=None, duration_ms=1, user_id=None, event_type="play", device=None,
                      raw_payload=None, content_slug=None, content_title=None, content_type=None,
                      length_seconds=None, engagement_seconds=0.001, engagement_pct=None)


def test_classify_sorts_errors():
    assert isinstance(C.classify(g.ServiceUnavailable("down"), "x"), TransientError)
    assert isinstance(C.classify(ConnectionError("refused"), "x"), TransientError)
    assert isinstance(C.classify(g.Forbidden("no"), "x"), TerminalError)
    assert isinstance(C.classify(g.BadRequest("bad"), "x"), TerminalError)


class FakeTables:
    def __init__(self, fail=None, present=0, direct_fail=None, mark=IdMark(0)):
        self.applied = []
        self.fail = fail
        self.present = present  # rows the fake table holds of any ids looked up
        self.direct_fail = direct_fail
        self.mark = mark  # the state row's IdMark (None: not known yet)
        self.table = "t"
        self.calls = []
        self.client = SimpleNamespace(delete_table=lambda *a, **k: None)
        self.retry = None
        self.timeout = 1
        self.types = {}  # extra column -> its type in the fake table

    def staging(self, key):
        return "stage_" + key

    def ref(self, t):
        return t

    def id(self, t):
        return t

    def read_state(self):
        return C.LoadState(Position(0, 0), self.mark, None, 0)

    def highest_id(self):
        self.calls.append(("highest",))
        return 0

    def locate(self, ids, days):
        self.calls.append(("range", sorted(set(int(i) for i in ids))))
        return self.present, ({days and min(days)} if self.present else set())

    def claim(self, update):
        self.calls.append(("claim", update.mark))

    def extra_columns(self, extras, unchanged=False):
        self.calls.append(("extras", tuple(e.name for e in extras), unchanged)) if extras or unchanged else None
        return [e._replace(table_type=self.types.get(e.name, e.bq_type)) for e in extras]

    def load_direct(self, path, extras=()):
        self.calls.append(("direct", path.name))
        if self.direct_fail:
            raise self.direct_fail
        return 1

    def store_position(self, pos, update=None):
        self.calls.append(("state", pos))

    def apply(self, src, pos, extras=(), unchanged=False, target_filter=None, state_update=None):
        self.calls.append(("merge", pos))
        self.filters = getattr(self, "filters", []) + [target_filter]


class FakeLoader(L.Loader):
    def _load_staging(self, staging, path, schema=None):
        if self.tables.fail:
            raise self.tables.fail
        return 1

    def _apply(self, group):
        if self.tables.fail:
            raise self.tables.fail
        self.tables.applied.append([f.last for f in group])
        super()._apply(group)


def _spool_with(tmp_path, n):
    from pulse.sinks.bigquery.schema import to_arrow

    s = Spool(tmp_path)
    for i in range(1, n + 1):
        s.append(to_arrow([_ev(i, Position(i, 0))]), Position(i, 0), Position(i, 0))
    return s


def test_loader_applies_files_in_order_records_position_then_deletes(tmp_path):
    spool = _spool_with(tmp_path, 3)
    tables = FakeTables()
    tables.apply = lambda src, pos, *a, **k: tables.applied.append(("apply", pos))
    loader = FakeLoader(tables, spool, BigQueryConfig(load_max_bytes=10**9))
    assert loader.drain() == 3
    assert spool.files() == [] and spool.read_position() == Position(3, 0)


def test_a_load_takes_at_most_load_max_files_files(tmp_path):
    # A backlog of tiny files: each load combines a bounded number, so it ends in bounded time
    # and its progress survives a restart (the chaos soak's loader combined 50,000 files at once).
    spool = _spool_with(tmp_path, 7)
    tables = FakeTables()
    tables.apply = lambda src, pos, *a, **k: None
    loader = FakeLoader(tables, spool, BigQueryConfig(load_max_bytes=10**9, load_max_files=3))
    assert loader.drain() == 7
    assert [len(g) for g in tables.applied] == [3, 3, 1]
    assert spool.files() == [] and spool.read_position() == Position(7, 0)


def _spool_of(tmp_path, events):
    from pulse.sinks.bigquery.schema import to_arrow

    s = Spool(tmp_path)
    for ev in events:
        s.append(to_arrow([ev]), ev.position, ev.position)
    return s


def test_id_ranges_cover_the_ids_and_leave_out_the_widest_gaps():
    ids = pa.array([5, 1, 2, 3, 1000, 1001, 50_000, 7, 2_000_000], pa.int64())
    assert C.id_ranges(ids) == [(1, 3), (5, 5), (7, 7), (1000, 1001), (50_000, 50_000), (2_000_000, 2_000_000)]
    assert C.id_ranges(ids, max_ranges=2) == [(1, 50_000), (2_000_000, 2_000_000)]
    assert C.id_ranges(ids, max_ranges=1) == [(1, 2_000_000)]
    assert C.id_ranges(pa.array([], pa.int64())) == []
    assert C.id_ranges(pa.array([4], pa.int64())) == [(4, 4)]
    contiguous = pa.array(range(10, 20_000), pa.int64())
    assert C.id_ranges(contiguous) == [(10, 19_999)]
    for seed in range(20):
        import random

        rng = random.Random(seed)
        values = sorted({rng.randrange(10_000) for _ in range(rng.randrange(1, 300))})
        ranges = C.id_ranges(pa.array(values, pa.int64()), max_ranges=rng.randrange(1, 8))
        covered = {v for v in values if any(lo <= v <= hi for lo, hi in ranges)}
        assert covered == set(values)
        assert all(lo in values and hi in values for lo, hi in ranges)


def _kinds(tables):
    return [c[0] for c in tables.calls]


def test_fresh_inserts_are_loaded_directly_then_the_state_row(tmp_path):
    spool = _spool_of(tmp_path, [_ev(i, Position(i, 0)) for i in (5, 3, 9)])
    tables = FakeTables(present=0, mark=IdMark(2))
    loader = L.Loader(tables, spool, BigQueryConfig(load_max_bytes=10**9))
    assert loader.drain() == 3
    # Above the mark: no look-up; the claim raises the mark first, then the load, then the position.
    assert _kinds(tables) == ["claim", "direct", "state"] and tables.calls[0] == ("claim", 9)
    assert tables.calls[-1] == ("state", Position(9, 0))
    assert loader.direct_loads == 1 and spool.files() == [] and spool.read_position() == Position(9, 0)


def test_ids_below_the_mark_are_looked_up_and_a_table_without_a_mark_starts_one(tmp_path):
    spool = _spool_of(tmp_path, [_ev(i, Position(i, 0)) for i in (5, 3, 9)])
    tables = FakeTables(present=0, mark=IdMark(8, ((1, 3),)))
    L.Loader(tables, spool, BigQueryConfig(load_max_bytes=10**9)).drain()
    assert tables.calls[0] == ("range", [5])  # 3 is in an absent range, 9 above the mark
    assert _kinds(tables) == ["range", "claim", "direct", "state"]
    tables = FakeTables(present=0, mark=None)  # a table from before the mark
    L.Loader(tables, _spool_of(tmp_path / "b", [_ev(4, Position(1, 0))]), BigQueryConfig()).drain()
    assert _kinds(tables) == ["highest", "claim", "direct", "state"]


def test_ids_already_in_the_table_take_the_merge(tmp_path):
    # Also the crash after a direct load and before its state row: the rows are there now.
    spool = _spool_of(tmp_path, [_ev(i, Position(i, 0)) for i in (1, 2)])
    tables = FakeTables(present=2, mark=IdMark(2))
    loader = FakeLoader(tables, spool, BigQueryConfig(load_max_bytes=10**9))
    assert loader.drain() == 2
    assert _kinds(tables) == ["range", "merge"] and loader.merge_loads == 1
    assert tables.filters == ["((T.event_ts >= TIMESTAMP '2024-08-01 00:00:00+00' AND T.event_ts < "
                              "TIMESTAMP '2024-08-02 00:00:00+00'))"]


@pytest.mark.parametrize("events", [
    [_ev(1, Position(1, 0)), _ev(1, Position(2, 0))],  # two changes of one id: the MERGE picks the newest
    [_ev(1, Position(1, 0)), _ev(2, Position(2, 0))._replace(op="delete")],
], ids=["repeated-id", "delete"])
def test_groups_a_plain_load_cannot_apply_take_the_merge(tmp_path, events):
    tables = FakeTables(present=0)
    loader = FakeLoader(tables, _spool_of(tmp_path, events), BigQueryConfig(load_max_bytes=10**9))
    loader.drain()
    assert _kinds(tables) == ["merge"]


def test_a_refused_direct_load_falls_back_to_the_merge(tmp_path):
    tables = FakeTables(present=0, direct_fail=TerminalError("BigQuery direct load: Malformed JSON"))
    loader = FakeLoader(tables, _spool_of(tmp_path, [_ev(1, Position(1, 0))]), BigQueryConfig())
    loader.drain()
    assert _kinds(tables) == ["claim", "direct", "merge"]


def test_an_unreachable_table_during_a_direct_load_keeps_the_files(tmp_path):
    spool = _spool_of(tmp_path, [_ev(1, Position(1, 0))])
    loader = L.Loader(FakeTables(direct_fail=TransientError("down")), spool, BigQueryConfig())
    with pytest.raises(TransientError):
        loader.load_once()
    assert len(spool.files()) == 1 and spool.read_position() == Position(0, 0)


def test_direct_loads_can_be_switched_off(tmp_path):
    tables = FakeTables(present=0)
    loader = FakeLoader(tables, _spool_of(tmp_path, [_ev(1, Position(1, 0))]), BigQueryConfig(direct_load=False))
    loader.drain()
    assert _kinds(tables) == ["merge"]


def test_loader_failure_keeps_files(tmp_path):
    spool = _spool_with(tmp_path, 2)
    loader = FakeLoader(FakeTables(fail=TransientError("down")), spool, BigQueryConfig())
    with pytest.raises(TransientError):
        loader.load_once()
    assert len(spool.files()) == 2 and spool.read_position() == Position(0, 0)


def test_files_already_applied_are_just_removed(tmp_path):
    spool = _spool_with(tmp_path, 2)
    spool.write_position(Position(2, 0))  # applied, crash before the delete
    tables = FakeTables()
    loader = FakeLoader(tables, spool, BigQueryConfig())
    assert loader.load_once() == 2 and tables.applied == [] and spool.files() == []


def test_load_is_due_by_age_or_size(tmp_path):
    spool = _spool_with(tmp_path, 1)
    cfg = BigQueryConfig(load_interval_s=60, load_max_bytes=10**9)
    loader = L.Loader(FakeTables(), spool, cfg)
    mtime = spool.files()[0].mtime
    assert not loader.due(now=mtime + 1) and loader.due(now=mtime + 61)
    small = L.Loader(FakeTables(), spool, BigQueryConfig(load_interval_s=60, load_max_bytes=1024))
    assert small.due(now=mtime) is (spool.files()[0].size >= 1024)


def test_a_backfill_hurries_the_loads_for_a_while(tmp_path):
    spool = _spool_with(tmp_path, 1)
    loader = L.Loader(FakeTables(), spool, BigQueryConfig(load_interval_s=60, backfill_load_interval_s=0.5,
                                                          load_max_bytes=10**9))
    mtime = spool.files()[0].mtime
    assert not loader.due(now=mtime + 1)
    loader.hurry(now=mtime)
    assert loader.due(now=mtime + 1)
    assert not loader.due(now=mtime + L.HURRY_S + 1)  # the hurry is over: back to load_interval_s


def test_only_backfill_rows_hurry_the_loader(tmp_path):
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path))
    sink.spool = Spool(tmp_path)
    sink.loader = L.Loader(FakeTables(), sink.spool, sink.cfg)
    sink.write(Batch((_ev(1, Position(5, 0)),)))
    assert sink.loader.hurry_until == 0.0
    sink.write(Batch((_ev(2, Position(6, 0))._replace(backfill=True),), backfill=True))
    assert sink.loader.hurry_until > 0.0


def test_batch_write_touches_only_the_spool(tmp_path):
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path))
    sink.spool = Spool(tmp_path)
    batch = Batch((_ev(1, Position(5, 0)), _ev(2, Position(5, 1))))
    assert sink.write(batch) == Position(5, 1)
    assert sink.write(batch) == Position(5, 1)  # retried batch: idempotent
    assert [f.last for f in sink.spool.files()] == [Position(5, 1)]


def test_open_without_bigquery_uses_the_spool_position(tmp_path, monkeypatch):
    def down(self, changelog=False):
        raise TransientError("emulator down")

    monkeypatch.setattr(C.Tables, "ensure", down)
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path, upload_in_process=False),
                        client=SimpleNamespace(project="p", close=lambda: None), slot="s1")
    Spool(tmp_path, owner=sink.owner)  # the folder is this sink's (it spooled before the restart)
    _spool_with(tmp_path, 2)
    assert sink.open() == Position(2, 0)
    sink.close()


def test_open_without_bigquery_and_without_a_spool_is_transient(tmp_path, monkeypatch):
    def down(self, changelog=False):
        raise TransientError("emulator down")

    monkeypatch.setattr(C.Tables, "ensure", down)
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path), client=SimpleNamespace(project="p", close=lambda: None))
    with pytest.raises(TransientError):
        sink.open()


def test_spool_serves_what_it_just_wrote_from_memory_and_the_rest_from_disk(tmp_path):
    import pyarrow.parquet as pq

    from pulse.sinks.bigquery.schema import to_arrow

    spool = Spool(tmp_path)
    spool.append(to_arrow([_ev(1, Position(1, 0))]), Position(1, 0), Position(1, 0))
    restarted = Spool(tmp_path)  # knows nothing in memory: reads the file
    restarted.append(to_arrow([_ev(2, Position(2, 0))]), Position(2, 0), Position(2, 0))
    first, second = restarted.files()
    assert restarted.read(second) is not None and restarted._recent  # from memory
    assert restarted.read(first).column("event_id").to_pylist() == [1]  # from disk
    loader = L.Loader(FakeTables(), restarted, BigQueryConfig(load_max_bytes=10**9))
    combined = loader._combined([first, second])
    assert pq.read_table(combined).column("event_id").to_pylist() == [1, 2]
    restarted.remove([first, second])
    assert not restarted._recent and restarted._recent_bytes == 0


def test_spool_memory_is_bounded(tmp_path):
    from pulse.sinks.bigquery.schema import to_arrow
    from pulse.sinks.bigquery.spool import held_bytes

    table = to_arrow([_ev(1, Position(1, 0))])
    spool = Spool(tmp_path, memory_bytes=held_bytes(table) * 2)
    for i in range(1, 6):
        spool.append(to_arrow([_ev(i, Position(i, 0))]), Position(i, 0), Position(i, 0))
    assert len(spool._recent) == 2 and spool._recent_bytes <= spool.budget.limit
    assert [f.last.lsn for f in spool.files()] == [1, 2, 3, 4, 5]  # the files are all there


def test_a_trickle_of_one_row_tables_stays_within_the_memory_budget(tmp_path):
    """Tables of one row cost far more than their `nbytes` (about 17 KB against 170 bytes): counted by
    `nbytes` alone, 20,000 of them (a backlog of a trickle spooled file by file, the Kafka soak's
    consume-bigquery) fit a 16 MiB budget and took some 340 MB. The oracle is the process's RSS."""
    from pulse.sinks.bigquery.schema import to_arrow

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    budget = 16 * 1024 * 1024
    spool = Spool(tmp_path, memory_bytes=budget)
    before = rss()
    for i in range(1, 20_001):
        spool._remember(f"f{i}", to_arrow([_ev(i, Position(i, 0))]))  # as `append` does, without 20,000 fsyncs
    grown = rss() - before
    assert spool._recent_bytes <= budget
    assert grown < 4 * budget, f"{grown / 2**20:.0f} MiB for a {budget / 2**20:.0f} MiB budget"


def test_spools_sharing_a_budget_hold_no_more_than_it_together_and_a_forgotten_spool_gives_it_back(tmp_path):
    """`pulse consume --sink bigquery` has a spool per partition: one process-wide budget bounds them all."""
    from pulse.sinks.bigquery.schema import to_arrow
    from pulse.sinks.bigquery.spool import MemoryBudget, held_bytes

    one = held_bytes(to_arrow([_ev(1, Position(1, 0))]))
    budget = MemoryBudget(one * 10)
    spools = [Spool(tmp_path / f"p{k}", budget=budget) for k in range(4)]
    for i in range(1, 101):
        spools[i % 4]._remember(f"f{i}", to_arrow([_ev(i, Position(i, 0))]))
    assert sum(len(s._recent) for s in spools) <= 10 and budget.used <= budget.limit
    assert budget.used == sum(s._recent_bytes for s in spools)
    for s in spools:
        s.forget()
    assert budget.used == 0


def test_the_mode_is_chosen_once_with_its_row_limit_and_linger():
    from pulse.sinks.bigquery.sink import BatchMode, StreamMode

    batch = BigQuerySink(BigQueryConfig(mode="batch", write_linger_s=0.7))
    stream = BigQuerySink(BigQueryConfig(mode="stream", write_linger_s=0.7))
    assert (batch.mode, batch.linger_s, batch.max_row_bytes) == (BatchMode, 0.7, 99 * 1024 * 1024)
    assert (stream.mode, stream.linger_s, stream.max_row_bytes) == (StreamMode, 0.0, 9 * 1024 * 1024)
    assert BigQuerySink(BigQueryConfig(mode="stream", max_row_bytes=1_000_000)).max_row_bytes == 1_000_000
