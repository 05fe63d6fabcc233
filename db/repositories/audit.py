from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import AuditEvent


async def append(
    session: AsyncSession,
    *,
    user_id: uuid.UUID | None,
    kind: str,
    entity: str,
    entity_id: str | None,
    payload: dict[str, Any],
) -> None:
    await session.execute(
        insert(AuditEvent).values(
            id=uuid.uuid4(),
            user_id=user_id,
            kind=kind,
            entity=entity,
            entity_id=entity_id,
            payload=payload,
        )
    )


async def list_for_user(
    session: AsyncSession, user_id: uuid.UUID, *, after_seq: int | None, limit: int
) -> Sequence[AuditEvent]:
    statement = select(AuditEvent).where(AuditEvent.user_id == user_id)
    if after_seq is not None:
        statement = statement.where(AuditEvent.seq < after_seq)
    result = await session.scalars(statement.order_by(AuditEvent.seq.desc()).limit(limit))
    return result.all()


@dataclass(frozen=True, slots=True)
class ChainRow:
    seq: int
    prev_hash: str
    hash: str
    recomputed: str


async def chain(session: AsyncSession) -> list[ChainRow]:
    """The whole chain with each row's hash recomputed by the database (owner session only)."""
    rows = await session.execute(
        text(
            "SELECT seq, prev_hash, hash, "
            "encode(sha256(convert_to(audit_canonical(a), 'UTF8')), 'hex') "
            "FROM audit_events a ORDER BY seq"
        )
    )
    return [ChainRow(*row) for row in rows]
