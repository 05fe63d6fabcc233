"""Signed webhook calls: how a caller signs a request to a WEBHOOK trigger, and how Kianax
checks it.

A caller sends two headers with the POST:

    X-Kianax-Timestamp: <unix seconds>
    X-Kianax-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body, keyed by the
                        trigger's secret>

Signing the timestamp with the body stops a captured request from being replayed later
than `tolerance_seconds`; within the tolerance, the receiver stores `replay_key` with
Redis `SET key 1 NX EX <tolerance_seconds>` and rejects the request when the key existed.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import uuid
from datetime import datetime

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "TIMESTAMP_HEADER",
    "WebhookVerdict",
    "replay_key",
    "sign",
    "signed_headers",
    "verify",
]

SIGNATURE_HEADER = "X-Kianax-Signature"
TIMESTAMP_HEADER = "X-Kianax-Timestamp"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerdict(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"  # a header is absent or empty
    BAD_SIGNATURE = "bad_signature"  # malformed headers, or a signature that does not match
    STALE_TIMESTAMP = "stale_timestamp"  # authentic, but outside the tolerance either way


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of f"{timestamp}." + body."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers a caller sends with `body` at `timestamp`."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: SIGNATURE_PREFIX + sign(secret, timestamp, body),
    }


def verify(
    secret: bytes,
    *,
    signature_header: str | None,
    timestamp_header: str | None,
    body: bytes,
    now: datetime,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> WebhookVerdict:
    """Check a request's headers against its raw body. The signature is checked before the
    timestamp, so STALE_TIMESTAMP is only ever said of a genuinely signed request."""
    if not signature_header or not timestamp_header:
        return WebhookVerdict.MISSING
    stamp = timestamp_header.strip()
    signature = signature_header.strip()
    if not (stamp.isascii() and stamp.isdigit()) or not signature.startswith(SIGNATURE_PREFIX):
        return WebhookVerdict.BAD_SIGNATURE
    given = signature[len(SIGNATURE_PREFIX) :].lower().encode("ascii", "replace")
    expected = sign(secret, int(stamp), body).encode("ascii")
    if not hmac.compare_digest(given, expected):
        return WebhookVerdict.BAD_SIGNATURE
    if abs(now.timestamp() - int(stamp)) > tolerance_seconds:
        return WebhookVerdict.STALE_TIMESTAMP
    return WebhookVerdict.OK


def replay_key(trigger_id: uuid.UUID | str, signature: str) -> str:
    """The Redis key that marks a verified request as seen. The signature covers the
    timestamp and body, so it identifies the request; one hex form keys all spellings."""
    digest = signature.strip().removeprefix(SIGNATURE_PREFIX).lower()
    return f"kianax:webhook:seen:{trigger_id}:{digest}"
