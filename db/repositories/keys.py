"""SQL over every sealed secret, for master-key rotation. Owner session only: it reads and
updates every user's rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import BrokerConnection, TotpSecret


@dataclass(frozen=True, slots=True)
class SealedRow:
    """One sealed secret and the two ids its encryption is bound to."""

    table: str
    row_id: uuid.UUID
    user_id: uuid.UUID
    binding_id: uuid.UUID  # the "connection id" half of the associated data
    key_id: str
    wrapped_key: bytes
    ciphertext: bytes


async def sealed_broker_keys(session: AsyncSession) -> Sequence[SealedRow]:
    rows = await session.execute(
        select(
            BrokerConnection.id,
            BrokerConnection.user_id,
            BrokerConnection.key_id,
            BrokerConnection.wrapped_key,
            BrokerConnection.ciphertext,
        )
        .where(BrokerConnection.key_id.isnot(None))
        .order_by(BrokerConnection.id)
        .with_for_update()
    )
    return [
        SealedRow("broker_connections", row_id, user_id, row_id, key_id, wrapped, ciphertext)
        for row_id, user_id, key_id, wrapped, ciphertext in rows
        if key_id is not None and wrapped is not None and ciphertext is not None
    ]


async def sealed_totp_secrets(session: AsyncSession) -> Sequence[SealedRow]:
    # A TOTP secret is sealed with the user id in both halves of the associated data.
    rows = await session.execute(
        select(TotpSecret.user_id, TotpSecret.key_id, TotpSecret.wrapped_key, TotpSecret.ciphertext)
        .order_by(TotpSecret.user_id)
        .with_for_update()
    )
    return [
        SealedRow("totp_secrets", user_id, user_id, user_id, key_id, wrapped, ciphertext)
        for user_id, key_id, wrapped, ciphertext in rows
    ]


async def store_wrapped_key(
    session: AsyncSession, row: SealedRow, *, key_id: str, wrapped_key: bytes
) -> None:
    if row.table == "broker_connections":
        await session.execute(
            update(BrokerConnection)
            .where(BrokerConnection.id == row.row_id)
            .values(key_id=key_id, wrapped_key=wrapped_key)
        )
    else:
        await session.execute(
            update(TotpSecret)
            .where(TotpSecret.user_id == row.row_id)
            .values(key_id=key_id, wrapped_key=wrapped_key)
        )
