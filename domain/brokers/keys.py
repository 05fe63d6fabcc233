"""Master-key rotation: re-wrap every stored data key under the ring's current master key.

Rotating is: put the new key first in KIANAX_MASTER_KEYS (keeping the old one), restart,
run `kianax rewrap-keys`, then drop the old key. Only the 32-byte data keys are
re-encrypted; the secrets' ciphertexts stay as they are (see `crypto.rewrap`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from db.repositories import keys as repo
from domain.brokers.crypto import DecryptionFailed, KeyRing, SealedSecret, rewrap

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RewrapCount:
    rewrapped: int
    already_current: int
    failed: int  # rows no key in the ring opens: an old key dropped too early, or tampering


async def rewrap_all(owner_session: AsyncSession, ring: KeyRing) -> dict[str, RewrapCount]:
    """Per table, what was done. Needs the owner role: it updates every user's rows."""
    report: dict[str, RewrapCount] = {}
    for table, rows in (
        ("broker_connections", await repo.sealed_broker_keys(owner_session)),
        ("totp_secrets", await repo.sealed_totp_secrets(owner_session)),
    ):
        rewrapped = current = failed = 0
        for row in rows:
            if row.key_id == ring.current_id:
                current += 1
                continue
            sealed = SealedSecret(row.key_id, row.wrapped_key, row.ciphertext)
            try:
                fresh = rewrap(ring, sealed, user_id=row.user_id, connection_id=row.binding_id)
            except DecryptionFailed:
                log.error("%s row %s: its data key does not unwrap", table, row.row_id)
                failed += 1
                continue
            await repo.store_wrapped_key(
                owner_session, row, key_id=fresh.key_id, wrapped_key=fresh.wrapped_key
            )
            rewrapped += 1
        report[table] = RewrapCount(rewrapped, current, failed)
    return report
