"""Turns a presented credential into an Actor. The only place credentials are read."""

from __future__ import annotations

from dataclasses import dataclass

from domain.auth.actor import ALL_SCOPES, Actor, AuthMethod
from domain.auth.tokens import InvalidAccessToken, decode_access_token
from kianax.wiring import Services

API_TOKEN_PREFIX = "kx_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True, slots=True)
class Authentication:
    actor: Actor | None
    error: str | None = None  # set when a credential was presented but refused


ANONYMOUS = Authentication(None)


def bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(services: Services, credential: str | None) -> Authentication:
    if credential is None:
        return ANONYMOUS
    if credential.startswith(API_TOKEN_PREFIX):
        async with services.db.transaction(None) as uow:
            actor = await services.auth.actor_for_api_token(uow, credential)
        return Authentication(actor) if actor else Authentication(None, "invalid API token")
    try:
        claims = decode_access_token(credential, keys=services.settings.jwt_key_ring)
    except InvalidAccessToken as exc:
        return Authentication(None, exc.reason)
    if await services.auth.session_revoked(claims.session_id):
        return Authentication(None, "this session has ended; sign in again")
    return Authentication(
        Actor(
            user_id=claims.user_id,
            scopes=ALL_SCOPES,
            method=AuthMethod.SESSION,
            session_id=claims.session_id,
        )
    )
