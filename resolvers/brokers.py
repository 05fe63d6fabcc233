"""Thin broker-connection resolvers: decode input, call BrokerService with the actor, map."""

from __future__ import annotations

import uuid

import strawberry

from domain.auth import service as auth
from domain.auth.actor import Actor, AuthMethod, Scope
from domain.brokers import service as brokers
from schema import brokers as types
from schema.auth import TwoFactorRequired
from schema.context import Context, Info
from schema.errors import Forbidden, NotFound, RateLimited, UserError, ValidationError


def _person(ctx: Context) -> Actor:
    """Broker keys are given and taken away by the signed-in person, not by an API token."""
    actor = ctx.require_actor()
    if actor.method is not AuthMethod.SESSION:
        raise Forbidden("API tokens cannot manage broker connections")
    return actor


def _id(raw: strawberry.ID) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None


def to_user_error(exc: brokers.BrokerServiceError) -> UserError:
    if isinstance(exc, brokers.ConnectInvalid):
        return ValidationError(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, brokers.TooManyAttempts):
        return RateLimited(code=exc.code, message=exc.message, retry_after_seconds=exc.retry_after)
    kind: type[UserError] = {
        brokers.CredentialsRejected: types.BrokerRejectedCredentials,
        brokers.BrokerUnreachable: types.BrokerUnavailable,
        brokers.ConnectionNotFound: NotFound,
    }[type(exc)]
    return kind(code=exc.code, message=exc.message)


async def broker_connections(info: Info) -> list[types.BrokerConnection]:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await ctx.brokers.connections(uow)
    return [types.BrokerConnection.from_row(row) for row in rows]


async def connect_broker(info: Info, input: types.ConnectBrokerInput) -> types.ConnectBrokerResult:
    ctx = info.context
    actor = _person(ctx)
    request = brokers.ConnectRequest(
        provider=input.provider,
        environment=input.environment,
        api_key_id=input.api_key_id,
        api_secret=input.api_secret,
        totp_code=input.totp_code,
    )
    try:
        row = await ctx.brokers.connect(actor, request)
    except brokers.BrokerServiceError as exc:
        return to_user_error(exc)  # type: ignore[return-value]
    except auth.TwoFactorRequired as exc:
        return TwoFactorRequired(code=exc.code, message=exc.message)
    return types.BrokerConnected(connection=types.BrokerConnection.from_row(row))


async def disconnect_broker(info: Info, id: strawberry.ID) -> bool:
    ctx = info.context
    actor = _person(ctx)
    connection_id = _id(id)
    if connection_id is None:
        return False
    return await ctx.brokers.disconnect(actor, connection_id)


async def sync_broker(info: Info, id: strawberry.ID) -> types.SyncBrokerResult:
    ctx = info.context
    actor = ctx.require_actor(Scope.TRADE)
    connection_id = _id(id)
    if connection_id is None:
        return NotFound(code=brokers.ConnectionNotFound.code, message="no such broker connection")
    try:
        result = await ctx.brokers.sync(actor, connection_id)
    except brokers.BrokerServiceError as exc:
        return to_user_error(exc)  # type: ignore[return-value]
    if result.unreachable is not None:
        return types.BrokerUnavailable(
            code=brokers.BrokerUnreachable.code, message=result.unreachable
        )
    return types.BrokerConnection.from_row(result.connection)
