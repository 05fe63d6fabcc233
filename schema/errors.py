"""Tier 2 errors (top-level, with extensions.code) and the UserError types of tier 1."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError


class PublicError(GraphQLError):
    """An error whose message is meant for the client; never masked."""

    code = "BAD_REQUEST"

    def __init__(self, message: str, **extensions: object) -> None:
        super().__init__(message, extensions={"code": self.code, **extensions})


class Unauthenticated(PublicError):
    code = "UNAUTHENTICATED"


class Forbidden(PublicError):
    code = "FORBIDDEN"


class RateLimitedError(PublicError):
    code = "RATE_LIMITED"


class BadInput(PublicError):
    code = "BAD_USER_INPUT"


class SubscriptionLost(PublicError):
    """The stream fell behind or lost events: the client resubscribes and refetches."""

    code = "SUBSCRIPTION_LOST"


@strawberry.interface
class UserError:
    code: str
    message: str


@strawberry.type
class ValidationError(UserError):
    field: str | None = None


@strawberry.type
class NotFound(UserError):
    pass


@strawberry.type
class RateLimited(UserError):
    retry_after_seconds: int
