"""The audit log: every security and trading event, append-only and hash-chained."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AuditEvent
from db.repositories import audit as repo

GENESIS_HASH = "0" * 64


async def record(
    session: AsyncSession,
    kind: str,
    *,
    user_id: uuid.UUID | None,
    entity: str,
    entity_id: str | uuid.UUID | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """Append an event in the caller's transaction, so it commits or rolls back with the act."""
    await repo.append(
        session,
        user_id=user_id,
        kind=kind,
        entity=entity,
        entity_id=None if entity_id is None else str(entity_id),
        payload=payload or {},
    )


async def events_for(
    session: AsyncSession, user_id: uuid.UUID, *, after_seq: int | None, limit: int
) -> Sequence[AuditEvent]:
    """The user's own events, newest first, older than `after_seq` when given."""
    return await repo.list_for_user(session, user_id, after_seq=after_seq, limit=limit)


@dataclass(frozen=True, slots=True)
class ChainReport:
    rows: int
    broken_at: int | None  # the first seq whose hash or link does not verify
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify_chain(owner_session: AsyncSession) -> ChainReport:
    """Walk the whole chain. Needs a session that can read every user's rows (the owner)."""
    previous = GENESIS_HASH
    rows = await repo.chain(owner_session)
    for row in rows:
        if row.prev_hash != previous:
            return ChainReport(len(rows), row.seq, "link to the previous row does not match")
        if row.hash != row.recomputed:
            return ChainReport(len(rows), row.seq, "row content does not match its hash")
        previous = row.hash
    return ChainReport(len(rows), None, None)
