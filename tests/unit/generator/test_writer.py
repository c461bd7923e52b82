"""COPY text encoding, timestamps, the run spec and the CLI's argument checks (no database)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from typer.testing import CliRunner

from pulse.errors import ConfigError
from pulse.generator.anomalies import ODD_DEVICES, huge_debug_dump
from pulse.generator.events import Event
from pulse.generator.runner import GenerateSpec, Streams, Summary, _ms
from pulse.generator.writer import COLUMNS, TimestampText, copy_escape, encode_copy

_UNESCAPE = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def decode_copy_line(line: str) -> list[str | None]:
    """An independent reader of COPY text format (the escapes Pulse emits)."""
    out: list[str | None] = []
    for field in line.split("\t"):
        if field == "\\N":
            out.append(None)
        else:
            out.append(re.sub(r"\\[\\tnr]", lambda m: _UNESCAPE[m.group(0)], field))
    return out


def test_roundtrip_of_plain_and_odd_rows():
    events = [
        Event("c1", "u1", "pause", 1_722_470_400_123, 42_000, "ios", {"seq": 1, "country": "DE"}),
        Event(None, "u2", "click", 1_722_470_400_000, None, "web-chrome", {"anomaly": "null_content"}),
        Event("c3", "u3", "pause", 0, -5, "x", {"note": 'tab\there "quoted" back\\slash', "ar": "مرحبا"}),
    ] + [Event("c4", "u4", "play", 1, None, device, {"i": i}) for i, device in enumerate(ODD_DEVICES)]
    lines = encode_copy(events).decode().split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == len(events)
    for ev, line in zip(events, lines):
        fields = decode_copy_line(line)
        assert len(fields) == len(COLUMNS)
        content_id, user_id, event_type, ts, duration, device, payload = fields
        assert content_id == ev.content_id
        assert user_id == ev.user_id and event_type == ev.event_type
        assert datetime.fromisoformat(ts.replace("+00", "+00:00")) == datetime.fromtimestamp(
            ev.event_ts_ms / 1000, timezone.utc
        )
        assert duration == (None if ev.duration_ms is None else str(ev.duration_ms))
        assert device == ev.device
        assert orjson.loads(payload) == ev.raw_payload


def test_huge_payload_stays_one_line():
    ev = Event("c", "u", "pause", 0, 1, "ios", {"debug_dump": huge_debug_dump()})
    data = encode_copy([ev])
    assert data.count(b"\n") == 1 and len(data) > 1_000_000
    assert orjson.loads(decode_copy_line(data.decode()[:-1])[6]) == ev.raw_payload


@pytest.mark.parametrize(
    "ms",
    [0, 999, 1_722_470_400_000, 1_722_470_459_999, 1_722_470_460_001, 1_735_689_599_999, 4_102_444_800_000],
)
def test_timestamp_text_matches_datetime(ms):
    text = TimestampText()(ms)
    expected = datetime.fromtimestamp(ms / 1000, timezone.utc)
    assert datetime.fromisoformat(text.replace("+00", "+00:00")) == expected
    assert text.endswith("+00") and len(text) == len("2024-08-01 00:00:00.000+00")


def test_copy_escape():
    assert copy_escape("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"


def test_spec_window_defaults_and_validation():
    now = datetime(2024, 8, 8, tzinfo=timezone.utc)
    since, until = GenerateSpec(mode="bulk", count=1).window(now)
    assert until == now and since == now - timedelta(days=7)
    naive = GenerateSpec(mode="bulk", count=1, since=datetime(2024, 8, 1), until=datetime(2024, 8, 2))
    assert naive.window()[0].tzinfo == timezone.utc
    with pytest.raises(ConfigError):
        GenerateSpec(mode="bulk", count=1, since=datetime(2024, 8, 2), until=datetime(2024, 8, 1)).validate()
    with pytest.raises(ConfigError):
        GenerateSpec(anomalies=2.0).validate()
    with pytest.raises(ConfigError):
        GenerateSpec(mode="live", rate=0).validate()
    GenerateSpec(mode="live", rate=5, duration_s=1).validate()


def test_ms_is_exact():
    t = datetime(2024, 8, 1, 0, 0, 0, 1, tzinfo=timezone.utc)
    assert _ms(t) == 1_722_470_400_000
    assert _ms(t, ceil=True) == 1_722_470_400_001


def test_streams_are_independent_and_reproducible():
    a, b = Streams.from_seed(3), Streams.from_seed(3)
    assert [s.random() for s in vars(a).values()] == [s.random() for s in vars(b).values()]
    assert len({s.random() for s in vars(Streams.from_seed(4)).values()}) == 4


def test_summary_dict():
    s = Summary(mode="bulk", seed=1, rows_written=100, elapsed_s=2.0)
    assert s.rows_per_s == 50.0
    assert s.as_dict()["rows_per_s"] == 50.0


@pytest.fixture
def keep_logging():
    """The CLI points logging at CliRunner's stream, closed afterwards: put the handlers back."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    "args",
    [
        ["--count", "10", "--rate", "5"],
        ["--since", "2024-08-01"],
        ["--count", "10", "--since", "not-a-date"],
        ["--anomalies", "1.5"],
    ],
)
def test_cli_rejects_bad_combinations_before_connecting(args, keep_logging):
    from pulse.cli.main import app

    result = CliRunner().invoke(app, ["generate", "--database-url", "postgresql://nobody@127.0.0.1:1/x", *args])
    assert result.exit_code == 2, result.output


def test_cli_help_shows_the_env_var(keep_logging):
    from pulse.cli.main import app

    result = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "PULSE_DATABASE_URL" in result.output
    for flag in ("--count", "--since", "--until", "--rate", "--duration", "--seed", "--anomalies"):
        assert flag in result.output
