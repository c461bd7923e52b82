"""Secrets never reach the output: log fields and messages, tracebacks, safe URLs, CLI errors.

Each case is a way a password escaped before (issue 14): `sslpassword=`, a
password with an unencoded '/' or '#', a quoted key=value password, an error
text embedding the DSN, a traceback.
"""

from __future__ import annotations

import io
import json
import logging

import pytest

from pulse import log as pulse_log
from pulse.config import DatabaseConfig, load_settings, redact_url
from pulse.errors import ConfigError
from pulse.log import ConsoleFormatter, JsonFormatter, get_logger, redact_text

PW = "Zq7secretPW"


@pytest.fixture
def capture():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pulse.tests.redaction")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield get_logger("pulse.tests.redaction"), stream, handler
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(autouse=True)
def no_known_secrets(monkeypatch):
    """Each test starts without registered secrets, so the patterns alone are tested."""
    monkeypatch.setattr(pulse_log, "_KNOWN_SECRETS", set())


LEAKS = [
    # (text, the secret part that must disappear)
    (f"host=db sslpassword={PW} sslmode=verify-full", PW),
    (f"postgresql://pulse@db/src?sslmode=verify-full&sslpassword={PW}", PW),
    (f"postgresql://pulse:ab/{PW}@db:5432/src", PW),  # unencoded '/'
    (f"postgresql://pulse:ab#{PW}@db:5432/src", PW),  # unencoded '#'
    (f"postgresql://pulse:ab?{PW}@db:5432/src", PW),  # unencoded '?'
    (f"host=db password='two {PW}' dbname=src", PW),  # quoted key=value
    (f"host=db password = 'it\\'s {PW}' dbname=src", PW),  # libpq escape inside quotes
    (f"PGPASSWORD={PW} psql", PW),
    (f'{{"sasl.password={PW}"}}', PW),
    (f"signing with whsec_{PW}", PW),
]


@pytest.mark.parametrize(("text", "secret"), LEAKS)
def test_redact_text_hides_the_secret(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert "***" in out


@pytest.mark.parametrize(("text", "secret"), LEAKS)
def test_log_fields_and_messages_hide_the_secret(capture, text: str, secret: str) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter())
    log.info("connect", dsn=text)
    logging.getLogger("pulse.tests.redaction").warning("library said %s", text)  # a client library's message
    handler.setFormatter(ConsoleFormatter())
    log.info("connect", dsn=text)
    assert secret not in stream.getvalue()


def test_what_is_not_a_secret_stays() -> None:
    kept = ["postgresql://pulse@db:5432/src?sslmode=require", "http://127.0.0.1:8080/hook",
            'FATAL: password authentication failed for user "pulse"', "someone@example.com"]
    assert [redact_text(t) for t in kept] == kept
    assert redact_text("postgresql://pulse@db/src?password=x&sslmode=require") == \
        "postgresql://pulse@db/src?password=***&sslmode=require"
    assert redact_text("host=db password='a b' dbname=src") == "host=db password=*** dbname=src"


@pytest.mark.parametrize("url", [f"postgresql://pulse:ab#{PW}@db:5432/src", f"postgresql://pulse:ab@{PW}@db/src",
                                 f"postgresql://pulse@db/src?sslpassword={PW}&sslmode=require"])
def test_safe_url_hides_the_whole_password(url: str) -> None:
    assert PW not in redact_url(url)
    assert PW not in DatabaseConfig(url=url).safe_url()


def test_a_password_with_an_unencoded_slash_is_refused_without_echoing_it(monkeypatch) -> None:
    # libpq would read the part after '/' as the database and the part before it as a port,
    # and echo that part of the password in its error ('invalid integer value "ab" ...').
    monkeypatch.setenv("PULSE_DATABASE_URL", f"postgresql://pulse:{PW}/x@db:5432/src")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert PW not in str(info.value)
    assert "%2F" in str(info.value)
    # Percent-encoded, it is accepted.
    monkeypatch.setenv("PULSE_DATABASE_URL", f"postgresql://pulse:{PW}%2Fx@db:5432/src")
    assert load_settings().database.dsn().endswith("%2Fx@db:5432/src")


def _raise_with_dsn(dsn: str) -> None:
    raise RuntimeError(f"could not connect to {dsn}")


@pytest.mark.parametrize("fmt", [JsonFormatter, ConsoleFormatter])
def test_log_exception_tracebacks_hide_the_secret(capture, fmt) -> None:
    log, stream, handler = capture
    handler.setFormatter(fmt())
    try:
        try:
            _raise_with_dsn(f"postgresql://pulse:ab/{PW}@db/src")
        except RuntimeError as inner:
            raise ValueError(f"wrapped: host=db sslpassword={PW}") from inner
    except ValueError:
        log.exception("sink.failed")
    text = stream.getvalue()
    assert "RuntimeError" in text and "ValueError" in text  # the traceback is there ...
    assert PW not in text  # ... without the password, in the cause too


def test_registered_secrets_are_hidden_anywhere(capture) -> None:
    # psycopg2 echoes a fragment of a malformed DSN in words that match no pattern.
    log, stream, handler = capture
    handler.setFormatter(ConsoleFormatter())
    pulse_log.register_url_secrets(f"postgresql://pulse:{PW}%21@db/src")
    log.error("db.failed", error=f'invalid integer value "{PW}!" for connection option "port"')
    assert PW not in stream.getvalue()


def test_a_short_registered_password_does_not_hide_ordinary_words(capture) -> None:
    # A dev password like "pulse" must not turn every "pulse" of the output into ***; its URL form still is.
    log, stream, handler = capture
    handler.setFormatter(ConsoleFormatter())
    pulse_log.register_url_secrets("postgresql://pulse:pulse@db/src")
    log.info("run.starting", database="postgresql://pulse:pulse@db/src", note="pulse run")
    text = stream.getvalue()
    assert "postgresql://pulse:***@db/src" in text and "note='pulse run'" in text
