from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from domain.triggers.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerdict,
    replay_key,
    sign,
    signed_headers,
    verify,
)

SECRET = b"whsec_test_0123456789"
BODY = b'{"event":"earnings","symbol":"AAPL"}'
NOW = datetime(2025, 11, 25, 15, 0, tzinfo=UTC)
STAMP = int(NOW.timestamp())


def check(
    headers: dict[str, str], *, body: bytes = BODY, now: datetime = NOW, secret: bytes = SECRET
) -> WebhookVerdict:
    return verify(
        secret,
        signature_header=headers.get(SIGNATURE_HEADER),
        timestamp_header=headers.get(TIMESTAMP_HEADER),
        body=body,
        now=now,
    )


def test_the_signature_is_an_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{STAMP}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, STAMP, BODY) == expected
    assert signed_headers(SECRET, STAMP, BODY) == {
        "X-Kianax-Timestamp": str(STAMP),
        "X-Kianax-Signature": f"sha256={expected}",
    }


def test_a_good_signature_is_ok() -> None:
    assert check(signed_headers(SECRET, STAMP, BODY)) is WebhookVerdict.OK


def test_upper_case_hex_is_ok() -> None:
    headers = signed_headers(SECRET, STAMP, BODY)
    headers[SIGNATURE_HEADER] = "sha256=" + sign(SECRET, STAMP, BODY).upper()
    assert check(headers) is WebhookVerdict.OK


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "sha256=" + sign(b"another secret", STAMP, BODY),
        sign(SECRET, STAMP, BODY),  # no "sha256=" prefix
        "sha1=" + sign(SECRET, STAMP, BODY),
        "sha256=é" + sign(SECRET, STAMP, BODY)[1:],
        "sha256=",
    ],
)
def test_bad_signatures(signature: str) -> None:
    headers = {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: str(STAMP)}
    assert check(headers) is WebhookVerdict.BAD_SIGNATURE


def test_a_tampered_body_is_a_bad_signature() -> None:
    headers = signed_headers(SECRET, STAMP, BODY)
    assert check(headers, body=BODY.replace(b"AAPL", b"TSLA")) is WebhookVerdict.BAD_SIGNATURE
    assert check(headers, body=BODY + b" ") is WebhookVerdict.BAD_SIGNATURE


def test_a_changed_timestamp_is_a_bad_signature() -> None:
    headers = signed_headers(SECRET, STAMP, BODY)
    headers[TIMESTAMP_HEADER] = str(STAMP + 1)
    assert check(headers) is WebhookVerdict.BAD_SIGNATURE


@pytest.mark.parametrize("stamp", ["", "-5", "1.5", "soon", "١٢٣"])
def test_a_malformed_timestamp_is_a_bad_signature(stamp: str) -> None:
    headers = {SIGNATURE_HEADER: "sha256=" + "0" * 64, TIMESTAMP_HEADER: stamp}
    expected = WebhookVerdict.MISSING if stamp == "" else WebhookVerdict.BAD_SIGNATURE
    assert check(headers) is expected


@pytest.mark.parametrize(
    ("offset", "verdict"),
    [
        (-301, WebhookVerdict.STALE_TIMESTAMP),
        (-300, WebhookVerdict.OK),
        (300, WebhookVerdict.OK),
        (301, WebhookVerdict.STALE_TIMESTAMP),
        (-86_400, WebhookVerdict.STALE_TIMESTAMP),
    ],
)
def test_old_and_future_timestamps(offset: int, verdict: WebhookVerdict) -> None:
    stamp = STAMP + offset
    assert check(signed_headers(SECRET, stamp, BODY)) is verdict


def test_tolerance_is_configurable() -> None:
    headers = signed_headers(SECRET, STAMP - 60, BODY)
    assert (
        verify(
            SECRET,
            signature_header=headers[SIGNATURE_HEADER],
            timestamp_header=headers[TIMESTAMP_HEADER],
            body=BODY,
            now=NOW,
            tolerance_seconds=30,
        )
        is WebhookVerdict.STALE_TIMESTAMP
    )


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, TIMESTAMP_HEADER])
def test_missing_headers(missing: str) -> None:
    headers = signed_headers(SECRET, STAMP, BODY)
    del headers[missing]
    assert check(headers) is WebhookVerdict.MISSING
    assert check({}) is WebhookVerdict.MISSING


def test_replay_key_identifies_the_request() -> None:
    trigger_id = uuid.uuid4()
    signature = signed_headers(SECRET, STAMP, BODY)[SIGNATURE_HEADER]
    key = replay_key(trigger_id, signature)
    assert key == replay_key(trigger_id, signature.upper().replace("SHA256=", "sha256="))
    assert str(trigger_id) in key
    assert key != replay_key(uuid.uuid4(), signature)
    later = signed_headers(SECRET, STAMP + 1, BODY)[SIGNATURE_HEADER]
    assert key != replay_key(trigger_id, later)
    # The key is checked within the tolerance window only; a replay after that is stale.
    assert check(signed_headers(SECRET, STAMP, BODY), now=NOW + timedelta(minutes=6)) is (
        WebhookVerdict.STALE_TIMESTAMP
    )
