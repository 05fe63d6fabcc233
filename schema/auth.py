"""Accounts and authentication types."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from db.models import ApiToken as ApiTokenRow
from db.models import AuthSession
from db.models import User as UserRow
from domain.auth.actor import Scope
from schema.context import Info
from schema.errors import RateLimited, UserError, ValidationError

if TYPE_CHECKING:
    from schema.trading import RiskLimits


@strawberry.interface
class Node:
    id: strawberry.ID


ApiScope = strawberry.enum(Scope, name="ApiScope")


@strawberry.type
class User(Node):
    email: str
    email_verified: bool
    two_factor_enabled: bool
    created_at: datetime

    @strawberry.field
    async def risk_limits(
        self, info: Info
    ) -> Annotated[RiskLimits, strawberry.lazy("schema.trading")]:
        from schema.trading import RiskLimits

        ctx = info.context
        async with ctx.db.transaction(uuid.UUID(self.id)) as uow:
            return RiskLimits.from_row(await ctx.trading.limits(uow))

    @classmethod
    def from_row(cls, row: UserRow) -> User:
        return cls(
            id=strawberry.ID(str(row.id)),
            email=row.email,
            email_verified=row.email_verified_at is not None,
            two_factor_enabled=row.two_factor_enabled_at is not None,
            created_at=row.created_at,
        )


@strawberry.type
class AuthPayload:
    access_token: str = strawberry.field(description="JWT, short-lived")
    refresh_token: str = strawberry.field(description="opaque, rotated on every refresh")
    expires_at: datetime
    user: User


@strawberry.type
class TwoFactorChallenge:
    challenge_id: strawberry.ID


@strawberry.type
class InvalidCredentials(UserError):
    pass


@strawberry.type
class EmailTaken(UserError):
    pass


@strawberry.type
class InvalidToken(UserError):
    pass


@strawberry.type
class InvalidCode(UserError):
    pass


@strawberry.type
class TwoFactorRequired(UserError):
    pass


@strawberry.type
class Session(Node):
    created_at: datetime
    last_used_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool

    @classmethod
    def from_row(cls, row: AuthSession, current_id: object) -> Session:
        return cls(
            id=strawberry.ID(str(row.id)),
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            user_agent=row.user_agent,
            ip=row.ip,
            current=row.id == current_id,
        )


@strawberry.type
class ApiToken(Node):
    name: str
    scopes: list[ApiScope]  # type: ignore[valid-type]
    last_used_at: datetime | None
    expires_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: ApiTokenRow) -> ApiToken:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            scopes=[Scope(s) for s in row.scopes],
            last_used_at=row.last_used_at,
            expires_at=row.expires_at,
            created_at=row.created_at,
        )


@strawberry.type
class ApiTokenCreated:
    token: str = strawberry.field(description="The secret, shown this once only.")
    api_token: ApiToken


@strawberry.type
class TotpEnrollment:
    secret: str
    otpauth_uri: str


@strawberry.type
class TotpEnabled:
    recovery_codes: list[str]


@strawberry.type
class PasswordChanged:
    user: User


@strawberry.type
class EmailVerified:
    user: User


@strawberry.type
class TotpDisabled:
    user: User


@strawberry.input
class RegisterInput:
    email: str
    password: str


@strawberry.input
class LoginInput:
    email: str
    password: str


RegisterResult = Annotated[
    AuthPayload | EmailTaken | ValidationError | RateLimited, strawberry.union("RegisterResult")
]
LoginResult = Annotated[
    AuthPayload
    | TwoFactorChallenge
    | InvalidCredentials
    | InvalidCode
    | InvalidToken
    | RateLimited,
    strawberry.union("LoginResult"),
]
RefreshResult = Annotated[AuthPayload | InvalidToken, strawberry.union("RefreshResult")]
ChangePasswordResult = Annotated[
    PasswordChanged | InvalidCredentials | ValidationError | RateLimited,
    strawberry.union("ChangePasswordResult"),
]
ResetPasswordResult = Annotated[
    PasswordChanged | InvalidToken | ValidationError, strawberry.union("ResetPasswordResult")
]
VerifyEmailResult = Annotated[EmailVerified | InvalidToken, strawberry.union("VerifyEmailResult")]
EnrollTotpResult = Annotated[TotpEnrollment | ValidationError, strawberry.union("EnrollTotpResult")]
ConfirmTotpResult = Annotated[
    TotpEnabled | InvalidCode | ValidationError, strawberry.union("ConfirmTotpResult")
]
DisableTotpResult = Annotated[
    TotpDisabled | InvalidCode | ValidationError, strawberry.union("DisableTotpResult")
]
CreateApiTokenResult = Annotated[
    ApiTokenCreated | ValidationError, strawberry.union("CreateApiTokenResult")
]
