"""Request building, outcome classification, retry policy, circuit breaker and the retry helper."""

from __future__ import annotations

import threading

import orjson
import pytest

from pulse.sinks.external.delivery import (
    CircuitBreaker,
    Outcome,
    RetryPolicy,
    build_request,
    classify,
    deliver,
    message_id,
)
from pulse.sinks.external.outbox import OutboxRow


def rows(n: int, size: int = 10) -> list[OutboxRow]:
    return [OutboxRow(100 + i, 0, 1, "c", i, f"pulse-{i}-insert-x", '{"specversion":"1.0","id":"pulse-%d"}' % i,
                      '{"event_id":%d,"pad":"%s"}' % (i, "x" * size), 0, 0.0) for i in range(n)]


def test_batch_body_is_a_json_array_of_cloudevents_within_the_limits():
    req = build_request(rows(10), "cloudevents-batch", 4, 1_000_000)
    assert req.content_type == "application/cloudevents-batch+json"
    body = orjson.loads(req.body)
    assert [e["data"]["event_id"] for e in body] == [0, 1, 2, 3] and len(req.rows) == 4
    small = build_request(rows(10, size=100), "cloudevents-batch", 100, 400)
    assert 1 <= len(small.rows) < 10 and len(small.body) <= 400
    huge = build_request(rows(1, size=5000), "cloudevents-batch", 100, 1024)
    assert len(huge.rows) == 1  # one oversized event still goes, alone


def test_single_and_json_array_modes():
    single = build_request(rows(3), "single", 100, 10**6)
    assert single.content_type == "application/cloudevents+json" and len(single.rows) == 1
    assert orjson.loads(single.body)["id"] == "pulse-0" and single.msg_id == rows(1)[0].ce_id
    plain = build_request(rows(3), "json-array", 100, 10**6)
    assert plain.content_type == "application/json"
    assert orjson.loads(plain.body) == [{"event_id": i, "pad": "x" * 10} for i in range(3)]


def test_message_id_is_stable_for_the_same_events_and_differs_otherwise():
    r = rows(5)
    assert message_id(r[:3]) == message_id(list(r[:3])) != message_id(r[:4])
    assert message_id(r[:3]).startswith("msg_")


@pytest.mark.parametrize("status,kind,down", [
    (200, "ok", False), (204, "ok", False), (500, "retry", True), (502, "retry", True), (503, "retry", True),
    (408, "retry", False), (409, "retry", False), (425, "retry", False), (429, "retry", False),
    (400, "terminal", False), (401, "terminal", False), (404, "terminal", False), (422, "terminal", False),
    (301, "terminal", False),
])
def test_classification(status, kind, down):
    out = classify(status, None)
    assert (out.kind, out.endpoint_down) == (kind, down)


def test_retry_after_is_read_on_429_and_503_only():
    assert classify(429, "3").retry_after == 3.0
    assert classify(503, "4").retry_after == 4.0
    assert classify(500, "5").retry_after is None


def test_backoff_is_full_jitter_exponential_capped_and_honours_retry_after():
    top = RetryPolicy(0.5, 8.0, 60.0, 10, 100.0, rng=lambda: 1.0)
    assert [top.wait(n, None) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert RetryPolicy(0.5, 8.0, 60.0, 10, 100.0, rng=lambda: 0.0).wait(5, None) == 0.0
    assert top.wait(1, 30.0) == 30.0 and top.wait(1, 600.0) == 60.0  # Retry-After honoured, clipped


def test_exhaustion_by_attempts_and_by_age():
    p = RetryPolicy(0.1, 1, 1, max_attempts=3, max_age_s=60, clock=lambda: 1000.0)
    assert p.exhausted(2, 990.0) is None
    assert p.exhausted(3, 990.0) == "max_attempts"
    assert p.exhausted(0, 940.0) == "max_age"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_consecutive_failures_probes_and_closes():
    clock = Clock()
    b = CircuitBreaker(3, open_s=10, open_max_s=40, clock=clock)
    stop = threading.Event()
    down = Outcome("retry", None, "refused", endpoint_down=True)
    for _ in range(3):
        assert b.acquire(stop) is False
        b.record(down, False)
    assert b.state == "open" and b.opened == 1
    stop.set()
    with pytest.raises(Exception):  # still open: acquire waits, and shutdown interrupts it
        b.acquire(stop)
    stop.clear()
    clock.t = 10.0
    assert b.acquire(stop) is True and b.state == "half-open"  # the probe
    b.record(down, True)
    assert b.state == "open" and b._open_until == 30.0  # doubled
    clock.t = 30.0
    assert b.acquire(stop) is True
    b.record(Outcome("ok", 200, ""), True)
    assert b.state == "closed" and b.consecutive == 0


def test_answers_from_the_endpoint_do_not_open_the_breaker_but_retry_after_pauses_everyone():
    clock = Clock()
    b = CircuitBreaker(1, 10, 40, clock=clock)
    b.record(Outcome("retry", 429, "slow down", retry_after=5.0), False)
    b.record(Outcome("terminal", 422, "bad"), False)
    assert b.state == "closed"
    stop = threading.Event()
    stop.set()
    with pytest.raises(Exception):  # paused for 5 s
        b.acquire(stop)
    clock.t = 5.0
    assert b.acquire(stop) is False


def fast_policy(**kw) -> RetryPolicy:
    args = dict(initial_s=0.001, max_s=0.002, retry_after_max_s=0.01, max_attempts=5, max_age_s=1000)
    args.update(kw)
    return RetryPolicy(**args)


def scripted(outcomes: list[Outcome]):
    sent = []

    def send() -> Outcome:
        sent.append(1)
        return outcomes[min(len(sent), len(outcomes)) - 1]
    return send, sent


def test_deliver_retries_until_success():
    send, sent = scripted([Outcome("retry", 500, "e", endpoint_down=True), Outcome("retry", 429, "e"),
                           Outcome("ok", 200, "")])
    failures = []
    v = deliver(send, fast_policy(), CircuitBreaker(100, 1, 1), threading.Event(), on_failure=failures.append)
    assert v.kind == "delivered" and len(sent) == 3 and len(failures) == 2


def test_deliver_dead_letters_a_terminal_answer_at_once():
    send, sent = scripted([Outcome("terminal", 422, "HTTP 422: nope")])
    v = deliver(send, fast_policy(), CircuitBreaker(100, 1, 1), threading.Event())
    assert (v.kind, v.status, v.reason, len(sent)) == ("dead", 422, "terminal", 1)


def test_deliver_dead_letters_after_max_attempts_counting_earlier_processes():
    send, sent = scripted([Outcome("retry", 500, "HTTP 500", endpoint_down=True)])
    v = deliver(send, fast_policy(max_attempts=5), CircuitBreaker(100, 1, 1), threading.Event(), prior_attempts=2)
    assert (v.kind, v.reason, v.status, len(sent)) == ("dead", "max_attempts", 500, 3)


def test_deliver_dead_letters_on_age():
    send, sent = scripted([Outcome("retry", None, "timeout", endpoint_down=True)])
    v = deliver(send, fast_policy(max_age_s=10, clock=lambda: 1000.0), CircuitBreaker(100, 1, 1),
                threading.Event(), oldest_enqueued=980.0)
    assert (v.kind, v.reason, len(sent)) == ("dead", "max_age", 1)


def test_deliver_stops_on_shutdown_without_dead_lettering():
    stop = threading.Event()

    def send() -> Outcome:
        stop.set()
        return Outcome("retry", 503, "HTTP 503", endpoint_down=True)
    v = deliver(send, fast_policy(), CircuitBreaker(100, 1, 1), stop)
    assert v.kind == "stopped"


def test_failed_probes_do_not_count_towards_max_attempts():
    clock = Clock()
    b = CircuitBreaker(1, open_s=0.0001, open_max_s=0.0001)
    send, sent = scripted([Outcome("retry", None, "refused", endpoint_down=True)] * 6 + [Outcome("ok", 200, "")])
    v = deliver(send, fast_policy(max_attempts=3), b, threading.Event())
    # 1 counted failure opens the circuit; the next 5 are probes; then the 7th attempt succeeds.
    assert v.kind == "delivered" and len(sent) == 7
    del clock
