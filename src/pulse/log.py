"""Structured logging on top of the standard library.

`get_logger(__name__).info("slot.created", slot="pulse")` logs an event name
with fields, rendered as `key=value` for a console or as JSON lines
(`PULSE_LOG__FORMAT=json`) for a log pipeline. Values that look like URLs
with a password are redacted before rendering.
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


_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(\bpassword=)[^&\s]*", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Hide URL passwords anywhere in `text` (an error message may embed a DSN)."""
    return _PASSWORD_PARAM.sub(r"\1***", _URL_CREDENTIALS.sub(r"\1***@", text))


def _safe(value: Any) -> Any:
    if isinstance(value, str) and ("://" in value or "password=" in value.lower()):
        return redact_text(value)
    return value


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _safe(v) for k, v in getattr(record, _FIELDS, {}).items()}


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [ts, f"{record.levelname.lower():7}", record.getMessage()]
        for key, value in _fields(record).items():
            text = str(value)
            parts.append(f"{key}={text!r}" if " " in text else f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Fields first, the record's own keys last: a field cannot overwrite them.
        doc: dict[str, Any] = _fields(record)
        doc.update(ts=record.created, level=record.levelname.lower(), logger=record.name,
                   event=record.getMessage())
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
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
