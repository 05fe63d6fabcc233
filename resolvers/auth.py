"""Thin: decode input, call domain/auth with the actor, map the outcome to schema types."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import strawberry

from db.engine import UnitOfWork
from domain import audit
from domain.auth import service as auth
from domain.auth.actor import Actor, AuthMethod, Scope
from schema import audit as audit_types
from schema import auth as types
from schema.context import Context, Info
from schema.errors import BadInput, Forbidden, RateLimited, UserError, ValidationError
from schema.market import PageInfo

T = TypeVar("T")


def to_user_error(exc: auth.AuthError) -> UserError:
    if isinstance(exc, auth.InvalidInput):
        return ValidationError(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, auth.RateLimited):
        return RateLimited(code=exc.code, message=exc.message, retry_after_seconds=exc.retry_after)
    kind: type[UserError] = {
        auth.EmailTaken: types.EmailTaken,
        auth.InvalidCredentials: types.InvalidCredentials,
        auth.InvalidToken: types.InvalidToken,
        auth.InvalidCode: types.InvalidCode,
        auth.TwoFactorRequired: types.TwoFactorRequired,
    }[type(exc)]
    return kind(code=exc.code, message=exc.message)


def payload(tokens: auth.Tokens) -> types.AuthPayload:
    return types.AuthPayload(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        expires_at=tokens.expires_at,
        user=types.User.from_row(tokens.user),
    )


def require_person(ctx: Context) -> Actor:
    """Credentials are managed by the signed-in person, never by an API token."""
    actor = ctx.require_actor()
    if actor.method is not AuthMethod.SESSION:
        raise Forbidden("API tokens cannot manage sign-in credentials")
    return actor


async def _run(
    ctx: Context, user_id: uuid.UUID | None, act: Callable[[UnitOfWork], Awaitable[T]]
) -> T | UserError:
    # Bad input rolls everything back. Other typed failures commit: a failed login's audit
    # row and the revocation of a session whose refresh token was reused must persist.
    try:
        async with ctx.db.transaction(user_id) as uow:
            try:
                return await act(uow)
            except auth.InvalidInput:
                raise
            except auth.AuthError as exc:
                return to_user_error(exc)
    except auth.InvalidInput as exc:
        return to_user_error(exc)


async def register(info: Info, input: types.RegisterInput) -> types.RegisterResult:
    ctx = info.context
    result = await _run(
        ctx, None, lambda uow: ctx.auth.register(uow, input.email, input.password, ctx.client)
    )
    return payload(result) if isinstance(result, auth.Tokens) else result  # type: ignore[return-value]


def _login_result(result: auth.Tokens | auth.Challenge | UserError) -> types.LoginResult:
    if isinstance(result, auth.Tokens):
        return payload(result)
    if isinstance(result, auth.Challenge):
        return types.TwoFactorChallenge(challenge_id=strawberry.ID(result.challenge_id))
    return result  # type: ignore[return-value]


async def login(info: Info, input: types.LoginInput) -> types.LoginResult:
    ctx = info.context
    return _login_result(
        await _run(
            ctx, None, lambda uow: ctx.auth.login(uow, input.email, input.password, ctx.client)
        )
    )


async def complete_two_factor_login(
    info: Info, challenge_id: strawberry.ID, code: str
) -> types.LoginResult:
    ctx = info.context
    return _login_result(
        await _run(
            ctx,
            None,
            lambda uow: ctx.auth.complete_two_factor(uow, str(challenge_id), code, ctx.client),
        )
    )


async def refresh_token(info: Info, refresh_token: str) -> types.RefreshResult:
    ctx = info.context
    result = await _run(ctx, None, lambda uow: ctx.auth.refresh(uow, refresh_token, ctx.client))
    return payload(result) if isinstance(result, auth.Tokens) else result  # type: ignore[return-value]


async def logout(info: Info) -> bool:
    ctx = info.context
    actor = require_person(ctx)
    async with ctx.db.transaction(actor.user_id) as uow:
        return await ctx.auth.logout(uow, actor)


def _parse_id(raw: strawberry.ID) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None


async def revoke_session(info: Info, id: strawberry.ID) -> bool:
    ctx = info.context
    actor = require_person(ctx)
    session_id = _parse_id(id)
    if session_id is None:
        return False
    async with ctx.db.transaction(actor.user_id) as uow:
        return await ctx.auth.revoke_session(uow, actor, session_id)


async def change_password(
    info: Info, current_password: str, new_password: str
) -> types.ChangePasswordResult:
    ctx = info.context
    actor = require_person(ctx)

    async def act(uow: UnitOfWork) -> types.PasswordChanged:
        await ctx.auth.change_password(uow, actor, current_password, new_password)
        return types.PasswordChanged(user=types.User.from_row(await ctx.auth.user(uow, actor)))

    return await _run(ctx, actor.user_id, act)  # type: ignore[return-value]


async def request_password_reset(info: Info, email: str) -> bool:
    ctx = info.context
    async with ctx.db.transaction(None) as uow:
        await ctx.auth.request_password_reset(uow, email, ctx.client)
    return True


async def reset_password(info: Info, token: str, new_password: str) -> types.ResetPasswordResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.PasswordChanged:
        user = await ctx.auth.reset_password(uow, token, new_password)
        return types.PasswordChanged(user=types.User.from_row(user))

    return await _run(ctx, None, act)  # type: ignore[return-value]


async def verify_email(info: Info, token: str) -> types.VerifyEmailResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.EmailVerified:
        return types.EmailVerified(
            user=types.User.from_row(await ctx.auth.verify_email(uow, token))
        )

    return await _run(ctx, None, act)  # type: ignore[return-value]


async def enroll_totp(info: Info) -> types.EnrollTotpResult:
    ctx = info.context
    actor = require_person(ctx)

    async def act(uow: UnitOfWork) -> types.TotpEnrollment:
        secret, uri = await ctx.auth.enroll_totp(uow, actor)
        return types.TotpEnrollment(secret=secret, otpauth_uri=uri)

    return await _run(ctx, actor.user_id, act)  # type: ignore[return-value]


async def confirm_totp(info: Info, code: str) -> types.ConfirmTotpResult:
    ctx = info.context
    actor = require_person(ctx)

    async def act(uow: UnitOfWork) -> types.TotpEnabled:
        return types.TotpEnabled(recovery_codes=await ctx.auth.confirm_totp(uow, actor, code))

    return await _run(ctx, actor.user_id, act)  # type: ignore[return-value]


async def disable_totp(info: Info, code: str) -> types.DisableTotpResult:
    ctx = info.context
    actor = require_person(ctx)

    async def act(uow: UnitOfWork) -> types.TotpDisabled:
        await ctx.auth.disable_totp(uow, actor, code)
        return types.TotpDisabled(user=types.User.from_row(await ctx.auth.user(uow, actor)))

    return await _run(ctx, actor.user_id, act)  # type: ignore[return-value]


async def create_api_token(
    info: Info, name: str, scopes: list[Scope], expires_at: datetime | None = None
) -> types.CreateApiTokenResult:
    ctx = info.context
    actor = require_person(ctx)

    async def act(uow: UnitOfWork) -> types.ApiTokenCreated:
        token, row = await ctx.auth.create_api_token(uow, actor, name, scopes, expires_at)
        return types.ApiTokenCreated(token=token, api_token=types.ApiToken.from_row(row))

    return await _run(ctx, actor.user_id, act)  # type: ignore[return-value]


async def revoke_api_token(info: Info, id: strawberry.ID) -> bool:
    ctx = info.context
    actor = require_person(ctx)
    token_id = _parse_id(id)
    if token_id is None:
        return False
    async with ctx.db.transaction(actor.user_id) as uow:
        return await ctx.auth.revoke_api_token(uow, actor, token_id)


async def me(info: Info) -> types.User | None:
    ctx = info.context
    if ctx.actor is None:
        return None
    actor = ctx.require_actor(Scope.READ)
    async with ctx.db.transaction(actor.user_id) as uow:
        user = await ctx.auth.me(uow, actor)
    return None if user is None else types.User.from_row(user)


async def sessions(info: Info) -> list[types.Session]:
    ctx = info.context
    actor = require_person(ctx)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await ctx.auth.sessions(uow, actor)
    return [types.Session.from_row(row, actor.session_id) for row in rows]


async def api_tokens(info: Info) -> list[types.ApiToken]:
    ctx = info.context
    actor = require_person(ctx)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await ctx.auth.api_tokens(uow, actor)
    return [types.ApiToken.from_row(row) for row in rows]


async def audit_log(
    info: Info, first: int = 50, after: str | None = None
) -> audit_types.AuditEventConnection:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    if not 1 <= first <= 100:
        raise BadInput("first must be between 1 and 100")
    try:
        after_seq = None if after is None else int(after)
    except ValueError:
        raise BadInput("after is not a cursor from this API") from None
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await audit.events_for(
            uow.session, actor.user_id, after_seq=after_seq, limit=first + 1
        )
    edges = [
        audit_types.AuditEventEdge(cursor=str(r.seq), node=audit_types.AuditEvent.from_row(r))
        for r in rows[:first]
    ]
    return audit_types.AuditEventConnection(
        edges=edges,
        page_info=PageInfo.of(edges, len(rows) > first),
    )
