"""The payload marker, truncation, and the size checks of the Kafka and BigQuery sinks (no services)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import orjson

from pulse.bus.codec import decode, encode
from pulse.config import BigQueryConfig, KafkaConfig
from pulse.model import EnrichedEvent, Position
from pulse.sinks import dead_letter as dl
from pulse.sinks.external.delivery import truncated_row
from pulse.sinks.external.outbox import encode as outbox_encode
from tests.factories import make_event

NOW = datetime(2024, 8, 1, 12, 0, tzinfo=timezone.utc)


def event(raw: str | None, *, op: str = "insert", before: EnrichedEvent | None = None, seq: int = 1,
          problems: tuple[str, ...] = ()) -> EnrichedEvent:
    return make_event(
        7, Position(1 << 32, seq), at=NOW, op=op, content_id="c-1", duration_ms=5000, user_id="u-1",
        event_type="play", device="ios", raw_payload=raw, content_slug="s", content_title="t", content_type="podcast",
        length_seconds=100, engagement_seconds=5.0, engagement_pct=0.05, problems=problems, before=before)


class FakeStore:
    """Stands in for the dead-letter table: records what a sink adds."""

    def __init__(self) -> None:
        self.added: list[tuple[EnrichedEvent, bytes, str]] = []

    def add(self, items, reason, detail) -> int:
        self.added.extend((e, doc, reason) for e, doc in items)
        return len(items)


def test_the_marker_gives_size_and_digest_of_the_utf8_payload_and_nothing_of_its_content():
    raw = '{"note": "héllo"}'
    doc = orjson.loads(dl.marker(raw))
    assert doc == {"_pulse_truncated": True, "bytes": 18, "sha256": hashlib.sha256(raw.encode()).hexdigest()}
    assert "héllo" not in dl.marker(raw)


def test_truncate_replaces_both_payloads_adds_the_problem_once_and_keeps_everything_else():
    old = event('{"a": "' + "o" * 100 + '"}', seq=0)
    e = event('{"a": "' + "n" * 100 + '"}', op="update", before=old, problems=("content_missing",))
    t = dl.truncate(e)
    assert orjson.loads(t.raw_payload)["bytes"] == len(e.raw_payload)
    assert orjson.loads(t.before.raw_payload)["bytes"] == len(old.raw_payload)
    assert t.problems == ("content_missing", "payload_too_large")
    assert dl.truncate(t).problems == t.problems
    assert t._replace(raw_payload=e.raw_payload, problems=e.problems, before=old) == e
    assert dl.truncate(event(None)).raw_payload is None


def test_the_external_marker_row_keeps_its_id_and_attributes():
    row = outbox_encode(event('{"big": "' + "x" * 5000 + '"}'), "/pulse/test")
    t = truncated_row(row)
    data = orjson.loads(t.data)
    assert (t.ce_id, t.attrs, t.position) == (row.ce_id, row.attrs, row.position)
    assert orjson.loads(data["raw_payload"])["bytes"] == len(orjson.loads(row.data)["raw_payload"])
    assert data["problems"] == ["payload_too_large"]


def test_kafka_fit_truncates_an_update_whose_old_and_new_payloads_together_exceed_the_limit():
    from pulse.sinks.kafka.sink import KafkaSink

    sink = KafkaSink(KafkaConfig())
    sink.dead_letters = FakeStore()
    sink.max_value_bytes = 10_000
    before = (_metric("pulse_dead_letters_total", sink="kafka", reason="payload_too_large"),
              _metric("pulse_problems_total", problem="payload_too_large"))
    half = '{"p": "' + "x" * 6_000 + '"}'  # each alone fits, old + new do not
    small = event('{"k": 1}', seq=1)
    upd = event(half, op="update", before=event(half, seq=0), seq=2)
    out = sink._fit((small, upd), None)
    assert [len(value) <= sink.max_value_bytes for _k, value, _h, _e in out] == [True, True]
    assert decode(out[0][1]) == small
    sent = decode(out[1][1])
    assert sent.problems == ("payload_too_large",) and orjson.loads(sent.raw_payload)["bytes"] == len(half)
    [(kept, doc, reason)] = sink.dead_letters.added
    assert kept == upd and reason == "payload_too_large"
    assert doc == encode(upd)[1]  # the full value, `before` included
    assert sink.truncated == 1
    assert (_metric("pulse_dead_letters_total", sink="kafka", reason="payload_too_large"),
            _metric("pulse_problems_total", problem="payload_too_large")) == (before[0] + 1, before[1] + 1)


def _metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_kafka_truncates_an_event_the_broker_refused_twice_whatever_its_size():
    from pulse.sinks.kafka.sink import KafkaSink

    class Refused:
        def __init__(self, value: bytes) -> None:
            self._value = value

        def value(self) -> bytes:
            return self._value

    from confluent_kafka import KafkaError

    sink = KafkaSink(KafkaConfig())
    sink.dead_letters = FakeStore()
    e = event('{"k": 1}')
    refusal = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    sink._on_delivery(refusal, Refused(encode(e)[1]))
    assert sink._limit_stale
    [(_k, value, _h, sent)] = sink._fit((e,), None)
    assert sent == e  # refused once: maybe only its batch-mates were too large
    sink._on_delivery(refusal, Refused(encode(e)[1]))
    [(_k, value, _h, sent)] = sink._fit((e,), None)
    assert "payload_too_large" in decode(value).problems and sent.problems == ("payload_too_large",)


def test_bigquery_fit_uses_the_mode_default_and_counts_bytes_not_characters():
    from pulse.sinks.bigquery.sink import MAX_ROW_BYTES, BigQuerySink

    assert BigQuerySink(BigQueryConfig(mode="stream")).max_row_bytes == MAX_ROW_BYTES["stream"] < 10_000_000
    sink = BigQuerySink(BigQueryConfig(max_row_bytes=4096))
    sink.dead_letters = FakeStore()
    wide = event('"' + "é" * 1500 + '"', seq=1)  # 1,502 characters, 3,002 bytes: fits
    wider = event('"' + "é" * 2100 + '"', seq=2)  # 2,102 characters, 4,202 bytes: does not
    out = sink._fit((wide, wider))
    assert out[0] == wide
    assert out[1].problems == ("payload_too_large",) and [e for e, _d, _r in sink.dead_letters.added] == [wider]
