"""Unit tests of the sink's control flow with fakes (no BigQuery)."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from google.api_core import exceptions as g

from pulse.config import BigQueryConfig
from pulse.errors import TerminalError, TransientError
from pulse.model import Batch, EnrichedEvent, Position
from pulse.sinks import bigquery_load as L
from pulse.sinks.bigquery import BigQuerySink
from pulse.sinks.bigquery_spool import Spool

NOW = datetime(2024, 8, 1, tzinfo=timezone.utc)


def _ev(i, pos):
    return EnrichedEvent(i, None, None, "play", NOW, 1, None, None, None, None, None, None, 0.001, None, "insert",
                         pos, NOW, NOW)


def test_classify_sorts_errors():
    assert isinstance(L.classify(g.ServiceUnavailable("down"), "x"), TransientError)
    assert isinstance(L.classify(ConnectionError("refused"), "x"), TransientError)
    assert isinstance(L.classify(g.Forbidden("no"), "x"), TerminalError)
    assert isinstance(L.classify(g.BadRequest("bad"), "x"), TerminalError)


class FakeTables:
    def __init__(self, fail=None):
        self.applied = []
        self.fail = fail
        self.client = SimpleNamespace(delete_table=lambda *a, **k: None)
        self.retry = None
        self.timeout = 1

    def staging(self, key):
        return "stage_" + key

    def ref(self, t):
        return t

    def id(self, t):
        return t


class FakeLoader(L.Loader):
    def _load_staging(self, staging, path):
        if self.tables.fail:
            raise self.tables.fail
        return 1

    def _apply(self, group):
        if self.tables.fail:
            raise self.tables.fail
        self.tables.applied.append([f.last for f in group])
        super()._apply(group)


def _spool_with(tmp_path, n):
    from pulse.sinks.bigquery_schema import to_arrow

    s = Spool(tmp_path)
    for i in range(1, n + 1):
        s.append(to_arrow([_ev(i, Position(i, 0))]), Position(i, 0), Position(i, 0))
    return s


def test_loader_applies_files_in_order_records_position_then_deletes(tmp_path):
    spool = _spool_with(tmp_path, 3)
    tables = FakeTables()
    tables.apply = lambda src, pos: tables.applied.append(("apply", pos))
    loader = FakeLoader(tables, spool, BigQueryConfig(load_max_bytes=10**9))
    assert loader.drain() == 3
    assert spool.files() == [] and spool.read_position() == Position(3, 0)


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


def test_batch_write_touches_only_the_spool(tmp_path):
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path))
    sink.spool = Spool(tmp_path)
    batch = Batch((_ev(1, Position(5, 0)), _ev(2, Position(5, 1))))
    assert sink.write(batch) == Position(5, 1)
    assert sink.write(batch) == Position(5, 1)  # retried batch: idempotent
    assert [f.last for f in sink.spool.files()] == [Position(5, 1)]


def test_open_without_bigquery_uses_the_spool_position(tmp_path, monkeypatch):
    _spool_with(tmp_path, 2)

    def down(self, changelog=False):
        raise TransientError("emulator down")

    monkeypatch.setattr(L.Tables, "ensure", down)
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path, upload_in_process=False),
                        client=SimpleNamespace(project="p", close=lambda: None))
    assert sink.open() == Position(2, 0)
    sink.close()


def test_open_without_bigquery_and_without_a_spool_is_transient(tmp_path, monkeypatch):
    def down(self, changelog=False):
        raise TransientError("emulator down")

    monkeypatch.setattr(L.Tables, "ensure", down)
    sink = BigQuerySink(BigQueryConfig(spool_dir=tmp_path), client=SimpleNamespace(project="p", close=lambda: None))
    with pytest.raises(TransientError):
        sink.open()
