"""Structured logging on top of the standard library.

`get_logger(__name__).info("slot.created", slot="pulse")` logs an event name
with fields, rendered as `key=value` for a console or as JSON lines
(`PULSE_LOG__FORMAT=json`, with `time` in ISO 8601 UTC and `severity`, the
keys Cloud Logging and most collectors read) for a log pipeline. Passwords are hidden before
rendering, in fields, messages and tracebacks alike (`redact_text`).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson


_FIELDS = "pulse_fields"


class StructLogger:
    """A thin adapter: an event name plus keyword fields."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={_FIELDS: fields}, exc_info=exc_info, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=True)

    def is_debug(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)


def get_logger(name: str) -> StructLogger:
    return StructLogger(logging.getLogger(name))


# scheme://user:PASSWORD@host: the password runs to the LAST '@' of the
# token, so an unencoded '@', '/', '#', '?' or ':' inside it is hidden too
# (over-hiding a path that holds an '@' is the price; a leak is not).
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)\S*@", re.IGNORECASE)
# A password in a URL query: ?password=...&, ?sslpassword=... (up to the next '&').
_QUERY_PASSWORD = re.compile(r"([?&][a-z_]*password=)[^&\s]*", re.IGNORECASE)
# libpq key=value (and environment-style) passwords: password=x, sslpassword = 'a b',
# PGPASSWORD=x, sasl.password=x. A quoted value ends at its closing quote
# (backslash escapes as libpq reads them), an unquoted one at whitespace.
_KV_PASSWORD = re.compile(
    r"""(?<![?&])(\b[a-z_]*password\s*[=:]\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|\S*)""",
    re.IGNORECASE,
)
# A Standard Webhooks signing secret, wherever it appears.
_WHSEC = re.compile(r"\bwhsec_[A-Za-z0-9+/=]+")

# Exact secret values known to this process (the configured passwords),
# hidden wherever they appear, even in a message that does not look like a URL.
_KNOWN_SECRETS: set[str] = set()
_MIN_KNOWN_SECRET = 8  # shorter ones (a dev password "pulse") would hide ordinary words; patterns still cover them


def register_secret(value: str | None) -> None:
    """Hide `value` in every later redaction (configured passwords; call with the secret itself)."""
    if value and len(value) >= _MIN_KNOWN_SECRET:
        _KNOWN_SECRETS.add(value)


def register_url_secrets(url: str) -> None:
    """Register the password of `url` (authority or query), raw and percent-decoded."""
    from urllib.parse import unquote

    match = _URL_CREDENTIALS.search(url)
    if match:
        password = url[match.end(1):match.end() - 1]
        register_secret(password)
        register_secret(unquote(password))
    for query in _QUERY_PASSWORD.finditer(url):
        value = query.group(0)[len(query.group(1)):]
        register_secret(value)
        register_secret(unquote(value))


def redact_text(text: str) -> str:
    """Hide passwords anywhere in `text`: URL credentials, `password=` values (quoted or not,
    `sslpassword`, `PGPASSWORD`), webhook secrets and the registered secrets.

    Used on every log field and message, on tracebacks and on the CLI's error
    output: an error message may embed a DSN.
    """
    for secret in _KNOWN_SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    return _WHSEC.sub("whsec_***", text)


_MARKERS = ("://", "password", "whsec_")


def _needs_redaction(text: str) -> bool:
    if _KNOWN_SECRETS and any(secret in text for secret in _KNOWN_SECRETS):
        return True
    lowered = text.lower()
    return any(marker in lowered for marker in _MARKERS)


def _safe(value: Any) -> Any:
    if isinstance(value, str) and _needs_redaction(value):
        return redact_text(value)
    return value


def safe_text(text: str) -> str:
    """`text` with every secret hidden (cheap when there is nothing to hide)."""
    return redact_text(text) if _needs_redaction(text) else text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _safe(v) for k, v in getattr(record, _FIELDS, {}).items()}


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [ts, f"{record.levelname.lower():7}", safe_text(record.getMessage())]
        for key, value in _fields(record).items():
            text = str(value)
            parts.append(f"{key}={text!r}" if " " in text else f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + safe_text(self.formatException(record.exc_info))
        return line


def _iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 in UTC with milliseconds: 2026-12-02T15:09:43.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Fields first, the record's own keys last: a field cannot overwrite them.
        doc: dict[str, Any] = _fields(record)
        # `time` (ISO 8601, UTC) and `severity` (DEBUG, INFO, WARNING, ERROR, CRITICAL) are what Cloud
        # Logging and most collectors read; `ts` (epoch seconds) and `level` stay for existing readers.
        doc.update(time=_iso(record.created), severity=record.levelname, ts=record.created,
                   level=record.levelname.lower(), logger=record.name, event=safe_text(record.getMessage()))
        if record.exc_info:
            doc["exception"] = safe_text(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Route all logging to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries are chatty at info; their warnings still show.
    for noisy in ("urllib3", "google", "httpx", "httpcore", "kafka", "faker"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
