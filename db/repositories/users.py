"""Users and their credentials. Row-level security scopes every query to the acting user."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import (
    ApiToken,
    AuthSession,
    EmailOutbox,
    OneTimeToken,
    RecoveryCode,
    RefreshToken,
    TotpSecret,
    User,
)


async def user_id_by_email(session: AsyncSession, email: str) -> uuid.UUID | None:
    found = await session.scalar(text("SELECT auth_user_id_by_email(:email)"), {"email": email})
    return found if isinstance(found, uuid.UUID) else None


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def get_session(session: AsyncSession, session_id: uuid.UUID) -> AuthSession | None:
    return await session.get(AuthSession, session_id)


async def active_sessions(
    session: AsyncSession, user_id: uuid.UUID, now: datetime
) -> Sequence[AuthSession]:
    result = await session.scalars(
        select(AuthSession)
        .where(
            AuthSession.user_id == user_id,
            AuthSession.revoked_at.is_(None),
            AuthSession.expires_at > now,
        )
        .order_by(AuthSession.last_used_at.desc())
    )
    return result.all()


async def revoke_sessions(
    session: AsyncSession,
    user_id: uuid.UUID,
    now: datetime,
    reason: str,
    *,
    only: uuid.UUID | None = None,
    keep: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    statement = (
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .returning(AuthSession.id)
    )
    if only is not None:
        statement = statement.where(AuthSession.id == only)
    if keep is not None:
        statement = statement.where(AuthSession.id != keep)
    return list((await session.scalars(statement)).all())


async def refresh_token_by_hash(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    return await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash).with_for_update()
    )


async def api_token_by_hash(session: AsyncSession, token_hash: str) -> ApiToken | None:
    return await session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))


async def api_tokens(session: AsyncSession, user_id: uuid.UUID) -> Sequence[ApiToken]:
    result = await session.scalars(
        select(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.created_at.desc())
    )
    return result.all()


async def revoke_api_token(
    session: AsyncSession, user_id: uuid.UUID, token_id: uuid.UUID, now: datetime
) -> bool:
    result = await session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(ApiToken.id)
    )
    return result.first() is not None


async def one_time_token_by_hash(
    session: AsyncSession, token_hash: str, purpose: str
) -> OneTimeToken | None:
    return await session.scalar(
        select(OneTimeToken)
        .where(OneTimeToken.token_hash == token_hash, OneTimeToken.purpose == purpose)
        .with_for_update()
    )


async def unused_recovery_codes(
    session: AsyncSession, user_id: uuid.UUID
) -> Sequence[RecoveryCode]:
    result = await session.scalars(
        select(RecoveryCode)
        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        .with_for_update()
    )
    return result.all()


async def delete_recovery_codes(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        RecoveryCode.__table__.delete().where(RecoveryCode.user_id == user_id)  # type: ignore[attr-defined]
    )


async def totp_secret(session: AsyncSession, user_id: uuid.UUID) -> TotpSecret | None:
    return await session.scalar(
        select(TotpSecret).where(TotpSecret.user_id == user_id).with_for_update()
    )


async def outbox_message(session: AsyncSession, message_id: uuid.UUID) -> EmailOutbox | None:
    return await session.scalar(
        select(EmailOutbox).where(EmailOutbox.id == message_id).with_for_update()
    )


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)
