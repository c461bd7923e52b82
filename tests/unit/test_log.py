"""Unit tests for pulse.log: event + fields, both formats, URL passwords redacted."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pulse.log import ConsoleFormatter, JsonFormatter, configure_logging, get_logger

PW = "hunter2pw"
DB_URL = f"postgresql://pulse:{PW}@db.example:5432/src"


@pytest.fixture
def capture():
    """(StructLogger, stream, handler) on a private logger that does not propagate."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pulse.tests.log")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield get_logger("pulse.tests.log"), stream, handler
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_has_event_and_fields(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.info("slot.created", slot="pulse", lag_bytes=123, ratio=0.5, ok=True, nothing=None)
    (line,) = lines(stream)
    doc = json.loads(line)
    assert doc["event"] == "slot.created"
    assert doc["level"] == "info"
    assert doc["logger"] == "pulse.tests.log"
    assert isinstance(doc["ts"], float)
    assert (doc["slot"], doc["lag_bytes"], doc["ratio"], doc["ok"], doc["nothing"]) == ("pulse", 123, 0.5, True,
                                                                                         None)


def test_json_levels(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.debug("a")
    log.warning("b")
    log.error("c")
    assert [json.loads(x)["level"] for x in lines(stream)] == ["debug", "warning", "error"]


def test_json_non_serialisable_values_become_text(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())

    class Thing:
        def __str__(self) -> str:
            return "thing!"

    log.info("odd", thing=Thing(), items=(1, 2))
    doc = json.loads(lines(stream)[0])
    assert doc["thing"] == "thing!"
    assert doc["items"] == [1, 2]


def test_json_exception(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        log.exception("sink.failed", sink="redis")
    (line,) = lines(stream)  # one JSON line even with a traceback
    doc = json.loads(line)
    assert doc["level"] == "error"
    assert doc["sink"] == "redis"
    assert "RuntimeError: kaput" in doc["exception"]


def test_json_redacts_url_passwords(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.info("connect", url=DB_URL, redis="redis://:" + PW + "@cache:6379/0")
    text = stream.getvalue()
    assert PW not in text
    doc = json.loads(text)
    assert doc["url"] == "postgresql://pulse:***@db.example:5432/src"
    assert doc["redis"] == "redis://:***@cache:6379/0"


def test_console_line_has_event_and_fields(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(ConsoleFormatter())
    log.warning("ack.stalled", seconds=61, waiting_on="external", note="two words")
    (line,) = lines(stream)
    parts = line.split(" ")
    assert parts[1] == "warning"
    assert "ack.stalled" in parts
    assert "seconds=61" in parts
    assert "waiting_on=external" in parts
    assert line.endswith("note='two words'")  # values with spaces are quoted


def test_console_redacts_url_passwords(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(ConsoleFormatter())
    log.info("connect", url=DB_URL)
    text = stream.getvalue()
    assert PW not in text
    assert "url=postgresql://pulse:***@db.example:5432/src" in text


def test_urls_without_passwords_are_left_alone(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.info("post", url="http://127.0.0.1:8080/hook", email="someone@example.com")
    doc = json.loads(stream.getvalue())
    assert doc["url"] == "http://127.0.0.1:8080/hook"
    assert doc["email"] == "someone@example.com"


def test_disabled_levels_are_not_rendered(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    logging.getLogger("pulse.tests.log").setLevel(logging.INFO)
    log.debug("hidden", x=1)
    assert stream.getvalue() == ""
    assert not log.is_debug()


def test_url_inside_a_longer_value_is_redacted(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.error("connect.failed", error=f"could not connect to {DB_URL}: timeout")
    assert PW not in stream.getvalue()


def test_fields_do_not_overwrite_the_record_keys(capture) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.warning("x", level=3, logger="other")
    doc = json.loads(stream.getvalue())
    assert doc["level"] == "warning"
    assert doc["logger"] == "pulse.tests.log"


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    noisy = {name: logging.getLogger(name).level for name in ("urllib3", "google", "httpx", "httpcore", "kafka",
                                                                "faker")}
    try:
        yield root
    finally:
        root.handlers[:], root.level = saved
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def test_configure_logging_is_idempotent_and_picks_the_format(restore_root) -> None:
    configure_logging("debug", "json")
    configure_logging("warning", "json")
    assert len(restore_root.handlers) == 1
    assert isinstance(restore_root.handlers[0].formatter, JsonFormatter)
    assert restore_root.level == logging.WARNING
    configure_logging("info", "console")
    assert len(restore_root.handlers) == 1
    assert isinstance(restore_root.handlers[0].formatter, ConsoleFormatter)
    assert logging.getLogger("urllib3").level == logging.WARNING


def test_positions_render_in_their_text_form(capture) -> None:
    from pulse.model import Position

    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.info("ack", position=Position(0x16_B374_D848, 3))
    handler.setFormatter(ConsoleFormatter())
    log.info("ack", position=Position(0x16_B374_D848, 3))
    json_line, console_line = lines(stream)
    assert json.loads(json_line)["position"] == "16/B374D848#3"
    assert console_line.endswith("position=16/B374D848#3")


def test_json_line_has_severity_and_iso_time(capture) -> None:
    """The keys Cloud Logging reads: `severity` in capitals and `time` in ISO 8601 UTC, agreeing with `ts`."""
    from datetime import datetime

    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.warning("sink.retry", time="a field may not overwrite it", severity="nor this")
    doc = json.loads(lines(stream)[0])
    assert doc["severity"] == "WARNING"
    assert doc["time"].endswith("Z")
    parsed = datetime.fromisoformat(doc["time"].replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - doc["ts"]) < 0.001
