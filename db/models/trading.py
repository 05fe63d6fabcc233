from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, Numeric, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, UserOwned
from domain.trading.types import BrokerKind, OrderSide, OrderStatus, OrderType, TimeInForce

MONEY = Numeric(20, 4)
QUANTITY = Numeric(24, 9)


def _enum(kind: type[Any], name: str) -> Enum:
    return Enum(kind, name=name, native_enum=False, length=20, validate_strings=True)


class Account(UserOwned, Base):
    """A portfolio: the built-in paper account or one connected broker account."""

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint(
            "user_id", "broker", "broker_connection_id", postgresql_nulls_not_distinct=True
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    broker: Mapped[BrokerKind] = mapped_column(_enum(BrokerKind, "broker_kind"))
    broker_connection_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("broker_connections.id")
    )
    starting_cash: Mapped[Decimal] = mapped_column(MONEY)
    cash: Mapped[Decimal] = mapped_column(MONEY)
    # Cash promised to open buy orders. The CHECK in the migration keeps it within cash.
    reserved: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Order(UserOwned, Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("user_id", "client_order_id"),
        Index("ix_orders_user_submitted", "user_id", "submitted_at"),
        Index(
            "ix_orders_open_symbol",
            "symbol",
            postgresql_where="status IN ('NEW', 'ACCEPTED', 'PARTIALLY_FILLED')",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_order_id: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(16))
    side: Mapped[OrderSide] = mapped_column(_enum(OrderSide, "order_side"))
    type: Mapped[OrderType] = mapped_column(_enum(OrderType, "order_type"))
    time_in_force: Mapped[TimeInForce] = mapped_column(_enum(TimeInForce, "time_in_force"))
    quantity: Mapped[Decimal | None] = mapped_column(QUANTITY)
    notional: Mapped[Decimal | None] = mapped_column(MONEY)
    limit_price: Mapped[Decimal | None] = mapped_column(MONEY)
    stop_price: Mapped[Decimal | None] = mapped_column(MONEY)
    trail_percent: Mapped[Decimal | None] = mapped_column(Numeric(8, 4))
    trail_mark: Mapped[Decimal | None] = mapped_column(MONEY)
    triggered: Mapped[bool] = mapped_column(server_default="false")
    take_profit_price: Mapped[Decimal | None] = mapped_column(MONEY)
    stop_loss_price: Mapped[Decimal | None] = mapped_column(MONEY)
    extended_hours: Mapped[bool] = mapped_column(server_default="false")
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("orders.id"))
    status: Mapped[OrderStatus] = mapped_column(_enum(OrderStatus, "order_status"))
    filled_quantity: Mapped[Decimal] = mapped_column(QUANTITY, server_default="0")
    average_fill_price: Mapped[Decimal | None] = mapped_column(MONEY)
    reserved: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    reject_reason: Mapped[str | None] = mapped_column(String(500))
    broker_order_id: Mapped[str | None] = mapped_column(String(64))
    # The account's broker, copied here because an order never changes account: where it
    # goes (paper matcher or a broker job) and what the API shows, without a join.
    broker: Mapped[BrokerKind] = mapped_column(
        _enum(BrokerKind, "broker_kind"), default=BrokerKind.PAPER, server_default="PAPER"
    )
    agent_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    execution_id: Mapped[uuid.UUID | None]
    submitted_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None]


class Fill(UserOwned, Base):
    """One execution. Immutable: positions and P&L are derived from these."""

    __tablename__ = "fills"
    __table_args__ = (Index("ix_fills_user_executed", "user_id", "executed_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    symbol: Mapped[str] = mapped_column(String(16))
    side: Mapped[OrderSide] = mapped_column(_enum(OrderSide, "order_side"))
    quantity: Mapped[Decimal] = mapped_column(QUANTITY)
    price: Mapped[Decimal] = mapped_column(MONEY)
    commission: Mapped[Decimal] = mapped_column(MONEY)
    realized_pnl: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    closes_position: Mapped[bool] = mapped_column(server_default="false")
    agent_id: Mapped[uuid.UUID | None]
    broker_execution_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    executed_at: Mapped[datetime]


class Position(UserOwned, Base):
    """The running state derived from fills, kept so reads need no replay. One per agent."""

    __tablename__ = "positions"
    __table_args__ = (
        UniqueConstraint("account_id", "symbol", "agent_id", postgresql_nulls_not_distinct=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    symbol: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[uuid.UUID | None]
    quantity: Mapped[Decimal] = mapped_column(QUANTITY)
    cost_basis: Mapped[Decimal] = mapped_column(MONEY)
    realized_pnl: Mapped[Decimal] = mapped_column(MONEY, server_default="0")
    lots: Mapped[list[list[str]]] = mapped_column(JSONB, server_default="[]")
    opened_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class PortfolioSnapshot(UserOwned, Base):
    __tablename__ = "portfolio_snapshots"
    __table_args__ = (Index("ix_snapshots_account_taken", "account_id", "taken_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    taken_at: Mapped[datetime]
    cash: Mapped[Decimal] = mapped_column(MONEY)
    market_value: Mapped[Decimal] = mapped_column(MONEY)
    equity: Mapped[Decimal] = mapped_column(MONEY)


class RiskLimitsRow(UserOwned, Base):
    __tablename__ = "risk_limits"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    max_position_value: Mapped[Decimal | None] = mapped_column(MONEY)
    max_position_percent: Mapped[Decimal | None] = mapped_column(Numeric(8, 4))
    max_daily_trades: Mapped[int | None]
    max_sector_percent: Mapped[Decimal | None] = mapped_column(Numeric(8, 4))
    stop_loss_percent: Mapped[Decimal | None] = mapped_column(Numeric(8, 4))
    allow_short: Mapped[bool] = mapped_column(server_default="false")
    allow_extended_hours: Mapped[bool] = mapped_column(server_default="false")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
