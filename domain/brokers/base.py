"""The Broker interface: where an order goes once every risk check has passed.

The paper broker (inside Kianax) and Alpaca implement it. Kianax's own order row is the
source of truth for what the user asked; a broker reports what happened to it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from domain.trading.types import BrokerKind, OrderRequest, OrderSide, OrderStatus


class BrokerError(Exception):
    """A broker refused or failed. `retryable` tells the caller whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BrokerRejected(BrokerError):
    """The broker said no to this order (bad parameters, insufficient funds at the broker...)."""


class BrokerUnavailable(BrokerError):
    """Unreachable, timed out or rate limited: the order's fate is unknown or it was not sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class BrokerAuthError(BrokerError):
    """The stored credentials were refused."""


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    account_number: str
    cash: Decimal
    equity: Decimal
    buying_power: Decimal
    currency: str = "USD"
    pattern_day_trader: bool = False
    trading_blocked: bool = False


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    symbol: str
    quantity: Decimal  # negative for a short
    average_cost: Decimal
    market_value: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """The broker's view of one order."""

    broker_order_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    status: OrderStatus
    quantity: Decimal | None
    notional: Decimal | None
    filled_quantity: Decimal
    average_fill_price: Decimal | None
    submitted_at: datetime | None
    updated_at: datetime | None
    reject_reason: str | None = None


class TradeEventKind(enum.StrEnum):
    NEW = "new"
    FILL = "fill"
    PARTIAL_FILL = "partial_fill"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class TradeEvent:
    """One event from a broker's trade-updates stream."""

    kind: TradeEventKind
    order: BrokerOrder
    at: datetime
    # For fills: this execution's own quantity and price (not the order's cumulative ones).
    execution_id: str | None = None
    fill_quantity: Decimal | None = None
    fill_price: Decimal | None = None


class Broker(Protocol):
    kind: BrokerKind

    async def account(self) -> BrokerAccount: ...

    async def positions(self) -> list[BrokerPosition]: ...

    async def submit(self, request: OrderRequest, client_order_id: str) -> BrokerOrder:
        """Send an order. Must be safe to call again with the same client_order_id."""
        ...

    async def cancel(self, broker_order_id: str) -> None: ...

    async def replace(
        self,
        broker_order_id: str,
        *,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> BrokerOrder: ...

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None: ...

    async def orders(
        self, *, open_only: bool, after: datetime | None = None
    ) -> list[BrokerOrder]: ...

    def trade_events(self) -> AsyncIterator[TradeEvent]:
        """The broker's stream of order events; reconnects until the caller stops iterating."""
        ...
