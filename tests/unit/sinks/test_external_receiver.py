"""The receiver's bookkeeping (duplicates, conflicts, order) and body parsing, without a socket."""

from __future__ import annotations

import orjson
import pytest

from pulse.receiver import Faults, ReceiverState, parse_body


def ce(i: str, lsn: int, content: str = "c", payload: int = 0) -> dict:
    return {"specversion": "1.0", "id": i, "source": "s", "type": "t", "partitionkey": content,
            "data": {"content_id": content, "source_lsn": lsn, "source_seq": 0, "v": payload}}


def test_duplicates_conflicts_and_order_are_counted():
    s = ReceiverState()
    s.record([("a", ce("a", 1)), ("b", ce("b", 2))])
    s.record([("a", ce("a", 1))])  # a retry: duplicate
    s.record([("b", ce("b", 2, payload=9))])  # same id, other payload: conflict
    s.record([("c", ce("c", 1, content="other")), ("d", ce("d", 0))])  # d older than b for content c
    st = s.stats()
    assert (st["unique"], st["received"], st["duplicates"], st["conflicts"]) == (4, 6, 2, 1)
    assert st["conflicting_ids"] == ["b"] and st["order_violations"] == 1
    assert [e["id"] for e in s.events_doc()] == ["a", "b", "c", "d"]


def test_parse_body_in_each_mode():
    batch = orjson.dumps([ce("a", 1), ce("b", 2)])
    assert [i for i, _ in parse_body("application/cloudevents-batch+json", batch)] == ["a", "b"]
    assert [i for i, _ in parse_body("application/cloudevents+json; charset=utf-8", orjson.dumps(ce("x", 1)))] == ["x"]
    plain = orjson.dumps([{"event_id": 5, "op": "insert", "source_lsn": 7, "source_seq": 1}])
    assert parse_body("application/json", plain)[0][0] == "plain-5-insert-7-1"
    with pytest.raises(ValueError):
        parse_body("application/cloudevents-batch+json", b'[{"specversion": "1.0"}]')


def test_faults_update_rejects_unknown_knobs():
    f = Faults()
    f.update({"error_500": 0.5})
    assert f.error_500 == 0.5
    with pytest.raises(ValueError):
        f.update({"explode": 1})
