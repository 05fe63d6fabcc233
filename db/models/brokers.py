from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, UserOwned
from domain.brokers.types import BrokerEnvironment, ConnectionStatus
from domain.trading.types import BrokerKind


def _enum(kind: type[enum.Enum], name: str) -> Enum:
    # Stored by value ("connected"), which is what the SQL in the migration compares with.
    return Enum(
        kind,
        name=name,
        native_enum=False,
        length=20,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class BrokerConnection(UserOwned, Base):
    """A user's API keys for one broker account, sealed (see domain/brokers/crypto.py).

    `key_id`, `wrapped_key` and `ciphertext` form one `SealedSecret` whose plaintext is a
    JSON object holding both the broker's key id and its secret; they are erased (NULL)
    when the connection is disconnected. `key_hint` is all a user is ever shown of them.
    """

    __tablename__ = "broker_connections"
    __table_args__ = (
        # One live connection per provider: orders name a provider (BrokerKind), so two
        # connected Alpaca accounts would leave "broker: ALPACA" ambiguous.
        Index(
            "uq_broker_connections_active",
            "user_id",
            "provider",
            unique=True,
            postgresql_where="status <> 'disconnected'",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    provider: Mapped[BrokerKind] = mapped_column(_enum(BrokerKind, "broker_kind"))
    environment: Mapped[BrokerEnvironment] = mapped_column(
        _enum(BrokerEnvironment, "broker_environment")
    )
    status: Mapped[ConnectionStatus] = mapped_column(_enum(ConnectionStatus, "connection_status"))
    account_number: Mapped[str | None] = mapped_column(String(64))
    key_hint: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str | None] = mapped_column(String(32))  # the master key's id
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_synced_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    disconnected_at: Mapped[datetime | None]
