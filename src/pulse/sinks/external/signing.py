"""Standard Webhooks signing and verification, and `Retry-After` parsing.

Standard Webhooks (standardwebhooks.com): the secret is `whsec_<base64>`;
the key is the base64-decoded part. Every request carries

- `webhook-id`: the message id, the same on every retry of that message;
- `webhook-timestamp`: seconds since the epoch of this attempt;
- `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`,
  several space-separated when keys are rotated.

The receiver recomputes the HMAC over the raw body bytes, compares in
constant time, and rejects timestamps outside a tolerance (5 minutes) so a
captured request cannot be replayed later. Used by the external sink (sign)
and by `pulse receiver` (verify).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from pulse.errors import ConfigError

PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    if not secret.startswith(PREFIX):
        raise ConfigError("webhook secret must look like whsec_<base64>",
                          hint="set PULSE_EXTERNAL_SECRET to whsec_ followed by base64 of 24-64 random bytes")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except ValueError as exc:
        raise ConfigError("webhook secret is not valid base64 after whsec_",
                          hint="generate one with: python -c \"import base64,os;"
                               "print('whsec_'+base64.b64encode(os.urandom(32)).decode())\"") from exc
    if not key:
        raise ConfigError("webhook secret is empty", hint="use at least 24 random bytes")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>` for one message."""
    mac = hmac.new(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Signer:
    """Signs request bodies with one secret (the sink side)."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        self._key = decode_secret(secret)

    def headers(self, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        ts = int(now if now is not None else time.time())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature(self._key, msg_id, ts, body),
        }

    def __repr__(self) -> str:  # never show the key
        return "Signer(<secret>)"


class VerificationError(ValueError):
    """A request whose signature, timestamp or headers do not verify."""


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> str:
    """Check a request's Standard Webhooks headers; return its webhook-id or raise VerificationError."""
    key = decode_secret(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    ts_text = lower.get("webhook-timestamp")
    sigs = lower.get("webhook-signature")
    if not msg_id or not ts_text or not sigs:
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError as exc:
        raise VerificationError("webhook-timestamp is not an integer") from exc
    current = now if now is not None else time.time()
    if abs(current - ts) > tolerance_s:
        raise VerificationError(f"webhook-timestamp outside the {tolerance_s:.0f}s tolerance")
    expected = signature(key, msg_id, ts, body).encode()
    for candidate in sigs.split(" "):
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise VerificationError("no webhook-signature matches")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date, RFC 9110 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now or datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())
