"""Trading types: portfolio, positions, orders, fills, risk limits and their results."""

from __future__ import annotations

import base64
import enum
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from db.models import Fill as FillRow
from db.models import RiskLimitsRow
from domain.trading import types as t
from domain.trading.service import PositionValue, Valuation
from schema.auth import Node, TwoFactorRequired
from schema.context import Info
from schema.errors import BadInput, NotFound, UserError, ValidationError
from schema.market import PageInfo, Security

if TYPE_CHECKING:
    from schema.agents import Agent, AgentExecution, AllocationSlice

OrderSide = strawberry.enum(t.OrderSide, name="OrderSide")
OrderType = strawberry.enum(t.OrderType, name="OrderType")
TimeInForce = strawberry.enum(t.TimeInForce, name="TimeInForce")
OrderStatus = strawberry.enum(t.OrderStatus, name="OrderStatus")
BrokerKind = strawberry.enum(t.BrokerKind, name="BrokerKind")


@strawberry.enum
class HistoryRange(enum.Enum):
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"
    ALL = "ALL"

    @property
    def span(self) -> timedelta | None:
        return {
            "DAY": timedelta(days=1),
            "WEEK": timedelta(days=7),
            "MONTH": timedelta(days=31),
            "YEAR": timedelta(days=366),
        }.get(self.value)


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


@strawberry.type
class Fill(Node):
    symbol: str
    side: OrderSide  # type: ignore[valid-type]
    quantity: Decimal
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal
    executed_at: datetime
    order_id: strawberry.Private[uuid.UUID]

    @classmethod
    def from_row(cls, row: FillRow) -> Fill:
        return cls(
            id=strawberry.ID(str(row.id)),
            symbol=row.symbol,
            side=row.side,
            quantity=row.quantity,
            price=row.price,
            commission=row.commission,
            realized_pnl=row.realized_pnl,
            executed_at=row.executed_at,
            order_id=row.order_id,
        )

    @strawberry.field
    async def order(self, info: Info) -> Order:
        row = await info.context.loaders.order_by_id.load(self.order_id)
        assert row is not None, "a fill's order belongs to the same user"
        return Order.from_snapshot(row)


@strawberry.type
class Order(Node):
    client_order_id: str
    symbol: str
    side: OrderSide  # type: ignore[valid-type]
    type: OrderType  # type: ignore[valid-type]
    time_in_force: TimeInForce  # type: ignore[valid-type]
    quantity: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    trail_percent: Decimal | None
    take_profit_price: Decimal | None
    stop_loss_price: Decimal | None
    status: OrderStatus  # type: ignore[valid-type]
    filled_quantity: Decimal
    average_fill_price: Decimal | None
    reject_reason: str | None
    broker: BrokerKind  # type: ignore[valid-type]
    agent_id: strawberry.ID | None
    submitted_at: datetime
    updated_at: datetime
    execution_id: strawberry.Private[uuid.UUID | None]

    @classmethod
    def from_snapshot(cls, d: dict[str, Any]) -> Order:
        """From `order_snapshot`: what an event carried, or a row as it is now."""
        return cls(
            id=strawberry.ID(d["id"]),
            client_order_id=d["clientOrderId"],
            symbol=d["symbol"],
            side=t.OrderSide(d["side"]),
            type=t.OrderType(d["type"]),
            time_in_force=t.TimeInForce(d["timeInForce"]),
            quantity=_dec(d["quantity"]),
            notional=_dec(d["notional"]),
            limit_price=_dec(d["limitPrice"]),
            stop_price=_dec(d["stopPrice"]),
            trail_percent=_dec(d["trailPercent"]),
            take_profit_price=_dec(d["takeProfitPrice"]),
            stop_loss_price=_dec(d["stopLossPrice"]),
            status=t.OrderStatus(d["status"]),
            filled_quantity=Decimal(d["filledQuantity"]),
            average_fill_price=_dec(d["averageFillPrice"]),
            reject_reason=d["rejectReason"],
            broker=t.BrokerKind(d.get("broker", "PAPER")),
            agent_id=None if d["agentId"] is None else strawberry.ID(d["agentId"]),
            submitted_at=datetime.fromisoformat(d["submittedAt"]),
            updated_at=datetime.fromisoformat(d["updatedAt"]),
            execution_id=None if d["executionId"] is None else uuid.UUID(d["executionId"]),
        )

    @strawberry.field
    async def fills(self, info: Info) -> list[Fill]:
        rows = await info.context.loaders.fills_by_order_id.load(uuid.UUID(self.id))
        return [Fill.from_row(r) for r in rows]

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="The agent that placed the order; null for orders a person placed."
    )
    async def agent(self, info: Info) -> Annotated[Agent, strawberry.lazy("schema.agents")] | None:
        from schema.agents import Agent

        if self.agent_id is None:
            return None
        row = await info.context.loaders.agent_by_id.load(uuid.UUID(self.agent_id))
        return None if row is None else Agent.of(row)

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="The agent run that decided on the order; null for orders a person placed."
    )
    async def execution(
        self, info: Info
    ) -> Annotated[AgentExecution, strawberry.lazy("schema.agents")] | None:
        from schema.agents import AgentExecution

        if self.execution_id is None:
            return None
        row = await info.context.loaders.execution_by_id.load(self.execution_id)
        return None if row is None else AgentExecution.of(row)


@strawberry.type
class Position(Node):
    symbol: str
    quantity: Decimal
    average_cost: Decimal
    market_price: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    unrealized_pnl_percent: Decimal | None
    realized_pnl: Decimal
    agent_id: strawberry.ID | None

    @classmethod
    def from_value(cls, value: PositionValue) -> Position:
        p = value.position
        unrealized = value.unrealized
        percent = (
            None
            if unrealized is None or not p.cost_basis
            else (unrealized / abs(p.cost_basis) * 100).quantize(Decimal("0.0001"))
        )
        return cls(
            id=strawberry.ID(str(p.id)),
            symbol=p.symbol,
            quantity=p.quantity,
            average_cost=value.average_cost.quantize(Decimal("0.0001")),
            market_price=value.price,
            market_value=value.market_value,
            unrealized_pnl=unrealized,
            unrealized_pnl_percent=percent,
            realized_pnl=p.realized_pnl,
            agent_id=None if p.agent_id is None else strawberry.ID(str(p.agent_id)),
        )

    @strawberry.field
    async def security(self, info: Info) -> Security | None:
        details = await info.context.market.details(self.symbol)
        return None if details is None else Security.from_model(details)


@strawberry.type
class EquityPoint:
    timestamp: datetime
    equity: Decimal


@strawberry.type
class Performance:
    total_return_percent: Decimal
    max_drawdown_percent: Decimal
    sharpe_ratio: Decimal | None
    win_rate: Decimal | None
    trades: int


@strawberry.type
class Portfolio:
    valuation: strawberry.Private[Valuation]

    @strawberry.field
    def cash(self) -> Decimal:
        return self.valuation.account.cash

    @strawberry.field
    def equity(self) -> Decimal:
        return self.valuation.equity

    @strawberry.field
    def buying_power(self) -> Decimal:
        return self.valuation.buying_power

    @strawberry.field
    def reserved(self) -> Decimal:
        return self.valuation.account.reserved

    @strawberry.field
    def market_value(self) -> Decimal:
        return self.valuation.market_value

    @strawberry.field
    def day_change(self) -> Decimal:
        return self.valuation.day_change

    @strawberry.field
    def day_change_percent(self) -> Decimal:
        return self.valuation.day_change_percent

    @strawberry.field
    def total_pnl(self) -> Decimal:
        return self.valuation.total_pnl

    @strawberry.field
    def broker(self) -> BrokerKind:  # type: ignore[valid-type]
        return self.valuation.account.broker

    @strawberry.field
    def positions(self) -> list[Position]:
        return [Position.from_value(p) for p in self.valuation.positions]

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="Each agent's share of this portfolio, then the user's own (agent null): "
        "its percent of equity, that amount, and how much of it is in use."
    )
    async def allocation(
        self, info: Info
    ) -> list[Annotated[AllocationSlice, strawberry.lazy("schema.agents")]]:
        from schema.agents import AllocationSlice

        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.db.transaction(actor.user_id) as uow:
            slices = await ctx.agents.portfolio_allocation(uow, self.valuation)
        return [AllocationSlice.of(*s) for s in slices]

    @strawberry.field
    async def history(
        self,
        info: Info,
        range: HistoryRange = HistoryRange.MONTH,
    ) -> list[EquityPoint]:
        ctx = info.context
        actor = ctx.require_actor()
        span = range.span
        async with ctx.db.transaction(actor.user_id) as uow:
            since = None if span is None else ctx.trading.clock() - span
            points = await ctx.trading.history(uow, since, self.valuation.account)
        return [EquityPoint(timestamp=at, equity=equity) for at, equity in points]

    @strawberry.field
    async def performance(self, info: Info) -> Performance:
        ctx = info.context
        actor = ctx.require_actor()
        async with ctx.db.transaction(actor.user_id) as uow:
            p = await ctx.trading.performance(uow, self.valuation.account)
        return Performance(
            total_return_percent=p.total_return_percent,
            max_drawdown_percent=p.max_drawdown_percent,
            sharpe_ratio=p.sharpe_ratio,
            win_rate=p.win_rate,
            trades=p.trades,
        )


@strawberry.type
class OrderEdge:
    cursor: str
    node: Order


@strawberry.type
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo


@strawberry.type
class FillEdge:
    cursor: str
    node: Fill


@strawberry.type
class FillConnection:
    edges: list[FillEdge]
    page_info: PageInfo


def make_cursor(at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode()


def parse_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    try:
        at, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput("after is not a cursor from this API") from exc


@strawberry.type
class RiskLimits:
    max_position_value: Decimal | None
    max_position_percent: Decimal | None
    max_daily_trades: int | None
    max_sector_percent: Decimal | None
    stop_loss_percent: Decimal | None
    allow_short: bool
    allow_extended_hours: bool

    @classmethod
    def from_row(cls, row: RiskLimitsRow) -> RiskLimits:
        return cls(
            max_position_value=row.max_position_value,
            max_position_percent=row.max_position_percent,
            max_daily_trades=row.max_daily_trades,
            max_sector_percent=row.max_sector_percent,
            stop_loss_percent=row.stop_loss_percent,
            allow_short=row.allow_short,
            allow_extended_hours=row.allow_extended_hours,
        )


@strawberry.input
class RiskLimitsInput:
    max_position_value: Decimal | None = strawberry.UNSET
    max_position_percent: Decimal | None = strawberry.UNSET
    max_daily_trades: int | None = strawberry.UNSET
    max_sector_percent: Decimal | None = strawberry.UNSET
    stop_loss_percent: Decimal | None = strawberry.UNSET
    allow_short: bool | None = strawberry.UNSET
    allow_extended_hours: bool | None = strawberry.UNSET


@strawberry.input
class PlaceOrderInput:
    symbol: str
    side: OrderSide  # type: ignore[valid-type]
    type: OrderType = t.OrderType.MARKET  # type: ignore[valid-type]
    time_in_force: TimeInForce = t.TimeInForce.DAY  # type: ignore[valid-type]
    quantity: Decimal | None = None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_percent: Decimal | None = None
    take_profit_price: Decimal | None = None
    stop_loss_price: Decimal | None = None
    extended_hours: bool = False
    client_order_id: str | None = strawberry.field(
        default=None, description="Idempotency key; generated when absent."
    )
    broker: BrokerKind = strawberry.field(  # type: ignore[valid-type]
        default=t.BrokerKind.PAPER,
        description="Where the order goes: PAPER unless the connected broker account is "
        "named, whichever portfolio is shown by default.",
    )


@strawberry.type
class OrderPlaced:
    order: Order


@strawberry.type
class OrderCanceled:
    order: Order


@strawberry.type
class InsufficientBuyingPower(UserError):
    required: Decimal
    available: Decimal


@strawberry.type
class RiskLimitExceeded(UserError):
    rule: str


@strawberry.type
class MarketClosed(UserError):
    next_open: datetime


@strawberry.type
class DuplicateClientOrderId(UserError):
    pass


@strawberry.type
class EmergencyResult:
    canceled_orders: int
    closed_positions: int
    paused_agents: int


@strawberry.type
class RiskLimitsUpdated:
    risk_limits: RiskLimits


PlaceOrderResult = Annotated[
    OrderPlaced
    | InsufficientBuyingPower
    | RiskLimitExceeded
    | MarketClosed
    | DuplicateClientOrderId
    | ValidationError
    | TwoFactorRequired,
    strawberry.union("PlaceOrderResult"),
]
CancelOrderResult = Annotated[
    OrderCanceled | NotFound | ValidationError, strawberry.union("CancelOrderResult")
]
LiquidateResult = Annotated[
    EmergencyResult | TwoFactorRequired, strawberry.union("LiquidateResult")
]
UpdateRiskLimitsResult = Annotated[
    RiskLimitsUpdated | ValidationError, strawberry.union("UpdateRiskLimitsResult")
]
