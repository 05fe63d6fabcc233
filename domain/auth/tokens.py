"""Access tokens: short-lived JWTs, HS256 pinned, `kid` selects the key for rotation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

ALGORITHM = "HS256"
ISSUER = "kianax"
AUDIENCE = "kianax-api"


class InvalidAccessToken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


def issue_access_token(
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    keys: dict[str, str],
    signing_kid: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> tuple[str, datetime]:
    issued = now or datetime.now(UTC)
    expires = issued + ttl
    token = jwt.encode(
        {
            "sub": str(user_id),
            "sid": str(session_id),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": issued,
            "exp": expires,
        },
        keys[signing_kid],
        algorithm=ALGORITHM,
        headers={"kid": signing_kid},
    )
    return token, expires


def decode_access_token(token: str, *, keys: dict[str, str]) -> AccessClaims:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str) or kid not in keys:
            raise InvalidAccessToken("unknown signing key")
        claims = jwt.decode(
            token,
            keys[kid],
            algorithms=[ALGORITHM],  # pinned: never trust the token's own `alg`
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "sid"]},
        )
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            session_id=uuid.UUID(claims["sid"]),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidAccessToken("access token expired") from exc
    except (jwt.InvalidTokenError, ValueError, KeyError) as exc:
        raise InvalidAccessToken("invalid access token") from exc
