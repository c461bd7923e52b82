"""The local outbox's frames, segments, state and request bodies (no network, no database)."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest

from pulse.errors import TerminalError
from pulse.model import EnrichedEvent, Position
from pulse.sinks.external.sink import encode_event
from pulse.sinks.external.delivery import build_request, message_id
from pulse.sinks.external.local import (Ledger, LocalLog, OutboxState, build_frame, list_segments, message_id_of,
                                        parse_frame, read_state, scan_segment, write_state)
from pulse.sinks.external.outbox import encode
from pulse.sinks.external.stream import Slices, StreamLane, body_of, outbox_row
from tests.factories import make_event

TS = datetime(2024, 8, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)


def event(i: int, content: str | None = None, payload: str = '{"a": 1}') -> EnrichedEvent:
    return make_event(i, Position(1000 + i, i % 3), at=TS, content_id=content if content is not None else f"c-{i % 7}",
                      duration_ms=1000 + i, user_id="u", event_type="play", device="ios", raw_payload=payload,
                      content_slug="s", content_title='T "q" é', content_type="podcast", length_seconds=100,
                      engagement_seconds=1.0, engagement_pct=0.01)


def encoded(n: int, start: int = 0):
    return [encode_event(event(i), "/src") for i in range(start, start + n)]


def test_a_frame_round_trips_and_a_lane_body_is_the_sinks_request_body_byte_for_byte():
    evs = encoded(50)
    frame = build_frame(evs, Position(5000, 0), 123.5, 4)
    info, chunks = parse_frame(frame[12:], 4, None)
    assert info.last == Position(5000, 0) and info.enqueued_at == 123.5
    assert sorted(info.event_ids.tolist()) == list(range(50))
    assert info.open_parts == len(chunks) == 4
    for lane, cs in chunks.items():
        (c,) = cs
        mine = [e for e in evs if e.lane_key % 4 == lane]
        assert len(c) == len(mine)
        s = Slices([(c, 0, len(c))])
        rows = [encode(event(e.event_id), "/src") for e in mine]
        # The same body and webhook-id as the PostgreSQL outbox's lanes build from rows.
        req = build_request(rows, "cloudevents-batch", 10_000, 10_000_000)
        assert body_of(s, "cloudevents-batch") == req.body
        assert message_id_of(s.runs) == message_id(rows) == req.msg_id
        assert body_of(s, "json-array") == build_request(rows, "json-array", 10_000, 10_000_000).body
        assert [outbox_row(c, k)._replace(enqueued_at=0.0) for k in range(len(c))] == rows
        orjson.loads(body_of(Slices([(c, 1, 3)]), "cloudevents-batch"))  # a slice is valid JSON


def test_a_frame_written_for_other_lanes_is_regrouped_by_content():
    evs = encoded(40)
    frame = build_frame(evs, Position(9, 9), 1.0, 2)
    _info, chunks = parse_frame(frame[12:], 5, None)
    for lane, cs in chunks.items():
        for c in cs:
            assert set((c.meta["lane_key"] % 5).tolist()) == {lane}
    assert sum(len(c) for cs in chunks.values() for c in cs) == 40


def test_take_respects_events_and_bytes_and_sends_a_large_event_alone():
    lane = StreamLane.__new__(StreamLane)
    lane._lock = threading.Lock()
    from collections import deque

    evs = [encode_event(event(i, "same"), "/src") for i in range(10)]
    big = [encode_event(event(99, "same", payload="x" * 5000), "/src")]
    frames = [build_frame(evs[:6], Position(1, 0), 1.0, 1), build_frame(big + evs[6:], Position(2, 0), 1.0, 1)]
    lane.chunks = deque(parse_frame(f[12:], 1, None)[1][0][0] for f in frames)
    lane.head, lane.events = 0, 11
    s = lane.take(4, 1_000_000)
    assert s.n == 4 and len(s.runs) == 1
    s = lane.take(100, 1_000_000)
    assert s.n == 11 and len(s.runs) == 2  # across frames
    s = lane.take(100, 5000)
    assert s.n == 6  # the first frame fits, the big event does not
    lane.head = 0
    lane.chunks.popleft()
    s = lane.take(100, 5000)
    assert s.n == 1  # the big one goes alone
    assert len(body_of(s, "cloudevents-batch")) > 5000


def test_segments_append_roll_and_cut_a_torn_tail(tmp_path):
    out = LocalLog(tmp_path, segment_bytes=64 * 1024)
    assert out.open() == Position(0, 0)
    for k in range(30):
        out.append(build_frame(encoded(20, k * 20), Position(1000 + k, 0), 1.0, 2), Position(1000 + k, 0))
    assert len(out.segments) > 1  # rolled
    out.close()
    newest = list_segments(tmp_path)[-1][0]
    with open(newest, "ab") as fh:
        fh.write(b"PXF1\x00\x10")  # a torn frame: a crash mid-write
    again = LocalLog(tmp_path, segment_bytes=64 * 1024)
    assert again.open() == Position(1029, 0)
    frames = []
    while (item := again.read_next()) is not None:
        frames.append(parse_frame(item[0], 2, None)[0].last)
    assert frames == [Position(1000 + k, 0) for k in range(30)]
    # Another process cannot open the same folder.
    with pytest.raises(TerminalError, match="in use"):
        LocalLog(tmp_path, 64 * 1024).open()
    again.close()


def test_a_damaged_frame_in_an_older_segment_is_an_error_with_the_fix(tmp_path):
    out = LocalLog(tmp_path, segment_bytes=64 * 1024)
    out.open()
    for k in range(30):
        out.append(build_frame(encoded(20, k * 20), Position(1000 + k, 0), 1.0, 2), Position(1000 + k, 0))
    out.close()
    oldest = list_segments(tmp_path)[0][0]
    data = bytearray(oldest.read_bytes())
    data[100] ^= 0xFF
    oldest.write_bytes(bytes(data))
    with pytest.raises(TerminalError, match="damaged") as err:
        LocalLog(tmp_path, 64 * 1024).open()
    assert "pulse verify" in err.value.hint


def test_resolved_segments_are_deleted_and_the_position_survives_in_state(tmp_path):
    out = LocalLog(tmp_path, segment_bytes=64 * 1024)
    out.open()
    for k in range(30):
        out.append(build_frame(encoded(20, k * 20), Position(1000 + k, 0), 1.0, 2), Position(1000 + k, 0))
    ledger = Ledger()
    ledger.add(np.arange(600))
    write_state(tmp_path, OutboxState(Position(1029, 0), Position(1029, 0), ledger))
    out.resolved(Position(1029, 0))
    assert list_segments(tmp_path) == [] and out.bytes() == 0
    out.close()
    again = LocalLog(tmp_path, 64 * 1024)
    assert again.open() == Position(1029, 0)  # from state: nothing is handed twice
    assert again.read_next() is None
    again.append(build_frame(encoded(1, 600), Position(1030, 0), 1.0, 2), Position(1030, 0))
    assert again.read_next() is not None
    again.close()


def test_ledger_keeps_ranges_and_answers_membership():
    led = Ledger()
    led.add(np.array([5, 6, 7, 1, 2, 10]))
    led.add(np.array([3, 4, 8]))
    assert led.ranges.tolist() == [[1, 8], [10, 10]]
    assert led.contains(np.array([0, 1, 8, 9, 10, 11])).tolist() == [False, True, True, False, True, False]
    assert led.count() == 9


def test_state_round_trips(tmp_path):
    led = Ledger()
    led.add(np.array([1, 2, 3, 100]))
    write_state(tmp_path, OutboxState(Position(7, 1), Position(9, 2), led))
    st = read_state(tmp_path)
    assert st.delivered == Position(7, 1) and st.appended == Position(9, 2)
    assert st.ledger.ranges.tolist() == [[1, 3], [100, 100]]
    (tmp_path / "state").write_bytes(b"junk")
    with pytest.raises(TerminalError):
        read_state(tmp_path)


def test_scan_without_repair_refuses_a_torn_tail(tmp_path):
    p = tmp_path / "0000000000000001-0000000000.seg"
    p.write_bytes(build_frame(encoded(2), Position(1, 0), 1.0, 1) + b"PXF1")
    assert scan_segment(p, Position(1, 0), repair=True).frames == 1
    assert os.path.getsize(p) == len(build_frame(encoded(2), Position(1, 0), 1.0, 1))


def test_message_id_digest_is_sha256_of_ids():
    evs = encoded(3)
    frame = build_frame(evs, Position(1, 0), 1.0, 1)
    c = parse_frame(frame[12:], 1, None)[1][0][0]
    ids = "\n".join(e.ce_id for e in evs)
    assert message_id_of([(c, 0, 3)]) == "msg_" + hashlib.sha256(ids.encode()).hexdigest()[:32]
    assert message_id_of([(c, 1, 2)]) == evs[1].ce_id
