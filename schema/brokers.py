"""Broker connection types. A connection shows its key hint, never a key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from db.models import BrokerConnection as BrokerConnectionRow
from domain.brokers import types as b
from schema.auth import Node, TwoFactorRequired
from schema.errors import NotFound, RateLimited, UserError, ValidationError
from schema.trading import BrokerKind

BrokerEnvironment = strawberry.enum(b.BrokerEnvironment, name="BrokerEnvironment")


@strawberry.type
class BrokerConnection(Node):
    provider: BrokerKind  # type: ignore[valid-type]
    environment: BrokerEnvironment  # type: ignore[valid-type]
    status: str = strawberry.field(description="connected | error | disconnected")
    account_number: str | None
    key_hint: str = strawberry.field(
        description="The API key id's last four characters; secrets never leave the server."
    )
    last_synced_at: datetime | None
    last_error: str | None = strawberry.field(
        description="Why the connection is in error, or why the last sync could not reach "
        "the broker."
    )
    created_at: datetime

    @classmethod
    def from_row(cls, row: BrokerConnectionRow) -> BrokerConnection:
        return cls(
            id=strawberry.ID(str(row.id)),
            provider=row.provider,
            environment=row.environment,
            status=row.status.value,
            account_number=row.account_number,
            key_hint=row.key_hint,
            last_synced_at=row.last_synced_at,
            last_error=row.last_error,
            created_at=row.created_at,
        )


@strawberry.type
class BrokerConnected:
    connection: BrokerConnection


@strawberry.type
class BrokerRejectedCredentials(UserError):
    pass


@strawberry.type
class BrokerUnavailable(UserError):
    pass


@strawberry.input
class ConnectBrokerInput:
    provider: BrokerKind  # type: ignore[valid-type]
    environment: BrokerEnvironment  # type: ignore[valid-type]
    api_key_id: str
    api_secret: str
    totp_code: str | None = strawberry.field(
        default=None, description="Needed for a LIVE connection when two-factor auth is on."
    )


ConnectBrokerResult = Annotated[
    BrokerConnected
    | BrokerRejectedCredentials
    | BrokerUnavailable
    | TwoFactorRequired
    | ValidationError
    | RateLimited,
    strawberry.union("ConnectBrokerResult"),
]
# The sketch's `BrokerConnection!` cannot say "no such connection" or "the broker is down"
# as typed results; the connection itself stays the success member.
SyncBrokerResult = Annotated[
    BrokerConnection | NotFound | BrokerUnavailable | ValidationError,
    strawberry.union("SyncBrokerResult"),
]
