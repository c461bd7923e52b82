"""Standard Webhooks signing / verification and Retry-After parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

from pulse.errors import ConfigError
from pulse.sinks.external.signing import Signer, VerificationError, parse_retry_after, verify

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def test_signature_is_hmac_sha256_of_id_timestamp_body_as_the_spec_says():
    h = Signer(SECRET).headers("msg_1", b'{"a":1}', now=1_700_000_000)
    expected = base64.b64encode(hmac.new(KEY, b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()).decode()
    assert h == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1," + expected}


def test_verify_accepts_its_own_signature_and_one_of_several():
    h = Signer(SECRET).headers("msg_1", b"body", now=1000)
    assert verify(SECRET, h, b"body", now=1010) == "msg_1"
    h["webhook-signature"] = "v1,bm9wZQ== " + h["webhook-signature"]  # key rotation: space-separated
    assert verify(SECRET, h, b"body", now=1010) == "msg_1"


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "old", "missing"])
def test_verify_rejects_tampering_replays_and_missing_headers(change):
    h = Signer(SECRET).headers("msg_1", b"body", now=1000)
    body, now = b"body", 1010
    if change == "body":
        body = b"bodY"
    elif change == "id":
        h["webhook-id"] = "msg_2"
    elif change == "timestamp":
        h["webhook-timestamp"] = "1001"
    elif change == "old":
        now = 1000 + 301  # outside the 5-minute tolerance
    else:
        del h["webhook-signature"]
    with pytest.raises(VerificationError):
        verify(SECRET, h, body, now=now)


def test_a_malformed_secret_is_a_config_error_with_a_fix():
    with pytest.raises(ConfigError) as exc:
        Signer("whsec_***")
    assert exc.value.hint
    with pytest.raises(ConfigError):
        Signer("not-a-whsec")


def test_signer_never_shows_its_key():
    assert SECRET[6:] not in repr(Signer(SECRET))


def test_retry_after_seconds_and_http_date():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0  # in the past: no wait
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("") is None
    assert parse_retry_after((now + timedelta(minutes=2)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) == 120.0
