"""The JSON-lines sink's own edges (its contract is in tests/contract)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import orjson

from pulse.model import ZERO
from pulse.sinks import REGISTRY, Registration
from pulse.sinks.jsonl.sink import JsonLinesSink, segment_name
from tests.factories import make_batch


def lines(folder) -> list[dict]:
    return [orjson.loads(x) for p in sorted(folder.glob("*.jsonl")) for x in p.read_bytes().splitlines()]


def test_each_event_is_one_line_of_its_contract_form_in_position_order(tmp_path) -> None:
    sink = JsonLinesSink(tmp_path)
    sink.open()
    batch = make_batch(1, 3, lsn=77)
    assert sink.write(batch) == batch.last
    got = lines(tmp_path)
    assert [d["event_id"] for d in got] == [1, 2, 3]
    assert got[0] == {**batch.events[0].to_dict(), "before": None}


def test_a_line_torn_by_a_crash_is_cut_and_the_position_is_the_last_whole_line(tmp_path) -> None:
    sink = JsonLinesSink(tmp_path)
    sink.open()
    batch = make_batch(1, 3, lsn=77)
    sink.write(batch)
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as fh:
        fh.write(b'{"event_id": 4, "source_l')  # the process died mid-line
    reopened = JsonLinesSink(tmp_path)
    assert reopened.open() == batch.last
    assert [d["event_id"] for d in lines(tmp_path)] == [1, 2, 3]


def test_segments_rotate_by_size_and_the_position_survives_an_empty_newest_segment(tmp_path) -> None:
    sink = JsonLinesSink(tmp_path, segment_bytes=1024)
    sink.open()
    batches = [make_batch(1 + 10 * k, 10, lsn=100 + k) for k in range(4)]
    for b in batches:
        sink.write(b)
    segments = sorted(tmp_path.glob("*.jsonl"))
    assert len(segments) == 4 and segments[0].name == segment_name(batches[0].first)
    (tmp_path / segment_name(batches[-1].last._replace(seq=99))).touch()  # created, then the crash
    assert JsonLinesSink(tmp_path).open() == batches[-1].last
    assert len(lines(tmp_path)) == 40


def test_a_new_folder_opens_at_zero(tmp_path) -> None:
    assert JsonLinesSink(tmp_path / "a" / "b").open() == ZERO


def test_the_docs_worked_example_is_this_folder_as_registered() -> None:
    """docs/writing-a-sink.md quotes the registry row and the sink's length: both as they are."""
    page = (Path(__file__).resolve().parents[3] / "docs" / "writing-a-sink.md").read_text()
    row = re.search(r'^"jsonl": Registration(\(.*\)),$', page, flags=re.MULTILINE)
    assert row and Registration(*ast.literal_eval(row.group(1))) == REGISTRY["jsonl"]
    claimed = re.search(r"`src/pulse/sinks/jsonl/`,\s+its\s+`sink\.py`\s+(\d+)\s+lines", page)
    length = len(Path(inspect.getsourcefile(JsonLinesSink)).read_text().splitlines())
    assert claimed and int(claimed.group(1)) == length < 150
