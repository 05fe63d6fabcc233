"""The trading engine. Every order -- a person's, an agent's, a workflow's -- comes through here:
validated, made idempotent, risk-checked, reserved against buying power, then handed to the
broker. Fills update positions (FIFO), cash and the equity curve. Domain code flushes; the
caller's unit of work commits, and events are published only after that commit.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from db.engine import UnitOfWork
from db.models import Account, Fill, Order, PortfolioSnapshot, Position, RiskLimitsRow
from db.repositories import brokers as broker_repo
from db.repositories import trading as repo
from domain import audit, notifications
from domain.brokers.types import ConnectionStatus
from domain.market.calendar import is_open, next_close, next_open, sessions_between
from domain.market.models import Quote
from domain.market.service import MarketDataError, MarketService, normalize_symbol
from domain.trading import ledger, risk
from domain.trading.matching import PaperConfig, RestingOrder, bracket_children, match
from domain.trading.orders import Commission, can_transition, transition, validate_order
from domain.trading.types import (
    BrokerKind,
    FillEvent,
    OrderRequest,
    OrderSide,
    OrderStatus,
    TimeInForce,
)

ZERO = Decimal(0)
# Every accepted paper order, for the worker's matcher to pick up at once.
NEW_ORDERS_CHANNEL = "paper:new-orders"


class Publisher(Protocol):
    async def publish(self, channel: str, message: Any) -> None: ...


class BrokerOrderQueue(Protocol):
    """Hands orders for an outside broker to the worker, which talks to the broker: a
    request's transaction never waits on one. Called only after the order has committed."""

    async def submit(self, user_id: uuid.UUID, order_id: uuid.UUID) -> None: ...

    async def cancel(self, user_id: uuid.UUID, order_id: uuid.UUID) -> None: ...


def orders_channel(user_id: uuid.UUID) -> str:
    return f"user:{user_id}:orders"


def portfolio_channel(user_id: uuid.UUID) -> str:
    return f"user:{user_id}:portfolio"


# ------------------------------------------------------------------ expected failures


class TradingError(Exception):
    code = "TRADING_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OrderInvalid(TradingError):
    code = "VALIDATION_ERROR"

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class DuplicateClientOrderId(TradingError):
    code = "DUPLICATE_CLIENT_ORDER_ID"


class InsufficientBuyingPower(TradingError):
    code = "INSUFFICIENT_BUYING_POWER"

    def __init__(self, required: Decimal, available: Decimal) -> None:
        super().__init__(
            f"this order needs ${required:,.2f} of buying power; ${available:,.2f} is available"
        )
        self.required = required
        self.available = available


class RiskRejected(TradingError):
    code = "RISK_LIMIT_EXCEEDED"

    def __init__(self, rule: str, message: str, checks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rule = rule
        self.checks = checks


class MarketClosed(TradingError):
    code = "MARKET_CLOSED"

    def __init__(self, next_open_at: datetime) -> None:
        super().__init__(f"the market is closed; it opens at {next_open_at.isoformat()}")
        self.next_open = next_open_at


class OrderNotFound(TradingError):
    code = "NOT_FOUND"


# ------------------------------------------------------------------ snapshots for events


def order_snapshot(order: Order) -> dict[str, Any]:
    """The order as it is now, JSON-able: events carry the state of the moment they describe."""

    def dec(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "id": str(order.id),
        "userId": str(order.user_id),
        "clientOrderId": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "timeInForce": order.time_in_force.value,
        "quantity": dec(order.quantity),
        "notional": dec(order.notional),
        "limitPrice": dec(order.limit_price),
        "stopPrice": dec(order.stop_price),
        "trailPercent": dec(order.trail_percent),
        "takeProfitPrice": dec(order.take_profit_price),
        "stopLossPrice": dec(order.stop_loss_price),
        "status": order.status.value,
        "filledQuantity": str(order.filled_quantity),
        "averageFillPrice": dec(order.average_fill_price),
        "rejectReason": order.reject_reason,
        "broker": order.broker.value,
        "agentId": None if order.agent_id is None else str(order.agent_id),
        "executionId": None if order.execution_id is None else str(order.execution_id),
        "submittedAt": order.submitted_at.isoformat(),
        "updatedAt": order.updated_at.isoformat(),
    }


def request_of(order: Order) -> OrderRequest:
    return OrderRequest(
        symbol=order.symbol,
        side=order.side,
        type=order.type,
        time_in_force=order.time_in_force,
        quantity=order.quantity,
        notional=order.notional,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        trail_percent=order.trail_percent,
        take_profit_price=order.take_profit_price,
        stop_loss_price=order.stop_loss_price,
        extended_hours=order.extended_hours,
        client_order_id=order.client_order_id,
        agent_id=order.agent_id,
    )


def _request_hash(req: OrderRequest) -> str:
    fields = {k: str(v) for k, v in vars_of(req).items() if k != "client_order_id"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def vars_of(req: OrderRequest) -> dict[str, Any]:
    return {name: getattr(req, name) for name in req.__slots__}


def _lots_json(state: ledger.PositionState) -> list[list[str]]:
    return [[str(lot.quantity), str(lot.price)] for lot in state.lots]


def _state_of(position: Position) -> ledger.PositionState:
    return ledger.PositionState(
        tuple(ledger.Lot(Decimal(q), Decimal(p)) for q, p in position.lots),
        position.realized_pnl,
    )


# ------------------------------------------------------------------ valuation


@dataclass(frozen=True, slots=True)
class PositionValue:
    position: Position
    price: Decimal | None
    prev_close: Decimal | None

    @property
    def market_value(self) -> Decimal | None:
        return None if self.price is None else self.position.quantity * self.price

    @property
    def unrealized(self) -> Decimal | None:
        value = self.market_value
        return None if value is None else value - self.position.cost_basis

    @property
    def average_cost(self) -> Decimal:
        quantity = self.position.quantity
        return self.position.cost_basis / quantity if quantity else ZERO


@dataclass(frozen=True, slots=True)
class Valuation:
    account: Account
    positions: list[PositionValue]

    @property
    def market_value(self) -> Decimal:
        return sum((p.market_value or p.position.cost_basis for p in self.positions), ZERO)

    @property
    def equity(self) -> Decimal:
        return self.account.cash + self.market_value

    @property
    def buying_power(self) -> Decimal:
        return self.account.cash - self.account.reserved

    @property
    def day_change(self) -> Decimal:
        # Held positions' move since the previous close; intraday trades are not separated.
        return sum(
            (
                p.position.quantity * (p.price - p.prev_close)
                for p in self.positions
                if p.price is not None and p.prev_close is not None
            ),
            ZERO,
        )

    @property
    def day_change_percent(self) -> Decimal:
        base = self.equity - self.day_change
        return (self.day_change / base * 100).quantize(Decimal("0.0001")) if base else ZERO

    @property
    def total_pnl(self) -> Decimal:
        return self.equity - self.account.starting_cash


# ------------------------------------------------------------------ the engine


@dataclass(frozen=True, slots=True)
class Placement:
    order: Order
    checks: tuple[risk.RiskCheck, ...]  # every rule evaluated, agent's first
    reduced_from: OrderRequest | None = None  # an agent's BUY shrunk to fit its allocation


@dataclass
class TradingService:
    market: MarketService
    publisher: Publisher
    starting_cash: Decimal
    paper: PaperConfig = field(default_factory=PaperConfig)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Where orders for an outside broker go; None where no process submits them.
    broker_orders: BrokerOrderQueue | None = None

    # --- accounts and limits

    async def account(self, uow: UnitOfWork, broker: BrokerKind = BrokerKind.PAPER) -> Account:
        """The paper account (opened on first use), or the account of the user's active
        connection to `broker` -- OrderInvalid when there is none."""
        user_id = _user(uow)
        if broker is not BrokerKind.PAPER:
            found = await broker_repo.active_account(uow.session, user_id, broker)
            if found is None:
                raise OrderInvalid("broker", f"no {broker.value.title()} account is connected")
            return found[0]
        account = await repo.paper_account(uow.session, user_id)
        if account is None:
            account = await repo.ensure_paper_account(uow.session, user_id, self.starting_cash)
        return account

    async def portfolio_account(self, uow: UnitOfWork, broker: BrokerKind | None) -> Account:
        """The account a portfolio shows: `broker`'s; by default an active broker
        connection's when there is one (the money the user trades), else paper."""
        if broker is not None:
            return await self.account(uow, broker)
        found = await broker_repo.default_account(uow.session, _user(uow))
        return found or await self.account(uow)

    async def _order_account(
        self, uow: UnitOfWork, broker: BrokerKind, *, exit_leg: bool
    ) -> Account:
        if broker is BrokerKind.PAPER:
            return await self.account(uow)
        found = await broker_repo.active_account(uow.session, _user(uow), broker)
        if found is None:
            raise OrderInvalid("broker", f"no {broker.value.title()} account is connected")
        account, connection = found
        # An exit leg protects shares the broker already holds, so it is sent regardless;
        # a new order through keys that do not work would only come back rejected.
        if connection.status is not ConnectionStatus.CONNECTED and not exit_leg:
            raise OrderInvalid(
                "broker",
                f"the {broker.value.title()} connection needs attention: "
                f"{connection.last_error or 'reconnect it'}",
            )
        return account

    async def limits(self, uow: UnitOfWork) -> RiskLimitsRow:
        user_id = _user(uow)
        row = await repo.risk_limits(uow.session, user_id)
        return row or RiskLimitsRow(user_id=user_id, allow_short=False, allow_extended_hours=False)

    async def update_limits(self, uow: UnitOfWork, changes: dict[str, Any]) -> RiskLimitsRow:
        user_id = _user(uow)
        current = await self.limits(uow)
        merged = {**vars_of_limits(self.limits_of(current)), **changes}
        try:
            risk.RiskLimits(**merged)  # the rules' own validation, messages written for users
        except ValueError as exc:
            field_name = next((name for name in changes if name in str(exc)), None)
            raise OrderInvalid(field_name, str(exc)) from None
        row = await repo.risk_limits(uow.session, user_id)
        if row is None:
            row = RiskLimitsRow(user_id=user_id, allow_short=False, allow_extended_hours=False)
            uow.session.add(row)
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = self.clock()
        await uow.session.flush()
        await audit.record(
            uow.session,
            "risk.limits_updated",
            user_id=user_id,
            entity="risk_limits",
            entity_id=user_id,
            payload={k: None if v is None else str(v) for k, v in changes.items()},
        )
        return row

    @staticmethod
    def limits_of(row: RiskLimitsRow) -> risk.RiskLimits:
        return risk.RiskLimits(
            max_position_value=row.max_position_value,
            max_position_percent=row.max_position_percent,
            max_daily_trades=row.max_daily_trades,
            max_sector_percent=row.max_sector_percent,
            stop_loss_percent=row.stop_loss_percent,
            allow_short=row.allow_short,
            allow_extended_hours=row.allow_extended_hours,
        )

    async def valuation(self, uow: UnitOfWork, account: Account | None = None) -> Valuation:
        account = account or await self.account(uow)
        rows = await repo.positions(uow.session, account.id)
        quotes = await self.market.quotes(sorted({p.symbol for p in rows}))
        return Valuation(
            account,
            [
                PositionValue(
                    p,
                    quotes[p.symbol].last if p.symbol in quotes else None,
                    quotes[p.symbol].prev_close if p.symbol in quotes else None,
                )
                for p in rows
            ],
        )

    # --- placing

    async def place_order(
        self,
        uow: UnitOfWork,
        req: OrderRequest,
        *,
        queue_when_closed: bool = True,
        execution_id: uuid.UUID | None = None,
        parent_id: uuid.UUID | None = None,
        broker: BrokerKind = BrokerKind.PAPER,
    ) -> Order:
        placement = await self.place(
            uow,
            req,
            queue_when_closed=queue_when_closed,
            execution_id=execution_id,
            parent_id=parent_id,
            broker=broker,
        )
        return placement.order

    async def place(
        self,
        uow: UnitOfWork,
        req: OrderRequest,
        *,
        queue_when_closed: bool = True,
        execution_id: uuid.UUID | None = None,
        parent_id: uuid.UUID | None = None,
        agent_limits: risk.AgentLimits | None = None,
        broker: BrokerKind = BrokerKind.PAPER,
    ) -> Placement:
        """Validate, dedupe by clientOrderId, risk-check, reserve, and accept one order.

        `broker` says where the order goes, and the checks run against that account. The
        paper broker accepts at once; an order for an outside broker stays NEW until the
        worker has submitted it (`BrokerOrderQueue`), after this transaction commits.

        An agent's order (`agent_limits` given) passes the agent's own limits first -- a BUY
        beyond its allocation is shrunk to fit, or refused when nothing fits -- and then the
        user's. Exit legs (`parent_id` set: bracket children and protective stops) protect a
        position the parent's checks already approved; they are validated but not checked
        again, and the pair counts once as an open sell.
        """
        user_id = _user(uow)
        try:
            symbol = normalize_symbol(req.symbol)
        except MarketDataError as exc:
            raise OrderInvalid("symbol", str(exc)) from None
        req = _with_symbol(req, symbol)
        quote = await self.market.quote(symbol)
        problems = validate_order(req, quote.last if quote else None)
        if problems:
            raise OrderInvalid(_camel(problems[0].field), problems[0].message)
        client_order_id = req.client_order_id or f"kx-{uuid.uuid4().hex}"
        request_hash = _request_hash(req)
        existing = await repo.order_by_client_id(uow.session, user_id, client_order_id)
        if existing is not None:
            return Placement(self._same_or_duplicate(existing, request_hash, broker), ())
        details = await self.market.details(symbol)
        if quote is None:
            raise OrderInvalid("symbol", f"there is no current price for {symbol}")

        account = await self._order_account(uow, broker, exit_leg=parent_id is not None)
        now = self.clock()
        snapshot = await self._account_snapshot(uow, account, now)
        ctx = risk.OrderContext(
            request=req,
            reference_price=quote.last,
            tradable=details is not None,
            market_open=is_open(now),
            sector=details.sector if details else None,
            closes_day_trade=await self._closes_day_trade(uow, req, now),
            queue_when_closed=queue_when_closed,
            # Alpaca charges no commission on equities; the paper broker's is configurable.
            commission=self.paper.commission if broker is BrokerKind.PAPER else Commission(),
        )
        agent_checks: tuple[risk.RiskCheck, ...] = ()
        reduced_from: OrderRequest | None = None
        if agent_limits is not None and req.agent_id is not None and parent_id is None:
            agent = await self._agent_snapshot(uow, req.agent_id, snapshot.equity, now, account)
            fitted = risk.shrink_to_allocation(ctx, agent, agent_limits)
            if fitted is not None and fitted != req:
                reduced_from, req = req, fitted
                ctx = replace(ctx, request=req)
            agent_decision = risk.check_agent(ctx, agent, agent_limits)
            agent_checks = agent_decision.checks
            if not agent_decision.approved:
                await self._reject(uow, req, agent_decision, snapshot, now)
        limits = self.limits_of(await self.limits(uow))
        decision = risk.check(ctx, snapshot, limits)
        decision = replace(decision, checks=agent_checks + decision.checks)
        if parent_id is not None:
            decision = risk.RiskDecision(True, None, "exit leg", decision.checks, ZERO)
        elif not decision.approved:
            await self._reject(uow, req, decision, snapshot, now)

        order = Order(
            id=uuid.uuid4(),
            user_id=user_id,
            account_id=account.id,
            client_order_id=client_order_id,
            request_hash=request_hash,
            symbol=symbol,
            side=req.side,
            type=req.type,
            time_in_force=req.time_in_force,
            quantity=req.quantity,
            notional=req.notional,
            limit_price=req.limit_price,
            stop_price=req.stop_price,
            trail_percent=req.trail_percent,
            take_profit_price=req.take_profit_price,
            stop_loss_price=req.stop_loss_price,
            extended_hours=req.extended_hours,
            parent_id=parent_id,
            status=OrderStatus.NEW,
            filled_quantity=ZERO,
            reserved=decision.cost,
            agent_id=req.agent_id,
            execution_id=execution_id,
            submitted_at=now,
            updated_at=now,
            triggered=False,
            # An outside broker expires its own DAY orders and reports it.
            expires_at=_expiry(req, now) if broker is BrokerKind.PAPER else None,
            broker=account.broker,
        )
        try:
            async with uow.session.begin_nested():
                if decision.cost > 0 and not await repo.reserve(
                    uow.session, account.id, decision.cost
                ):
                    raise InsufficientBuyingPower(
                        decision.cost, await self._available(uow, account)
                    )
                uow.session.add(order)
                await uow.session.flush()
        except IntegrityError:
            # The same clientOrderId raced in from another request: that one won.
            raced = await repo.order_by_client_id(uow.session, user_id, client_order_id)
            if raced is None:
                raise
            return Placement(self._same_or_duplicate(raced, request_hash, broker), ())
        await audit.record(
            uow.session,
            "order.placed",
            user_id=user_id,
            entity="order",
            entity_id=order.id,
            payload={
                "symbol": symbol,
                "side": req.side.value,
                "type": req.type.value,
                "quantity": None if req.quantity is None else str(req.quantity),
                "notional": None if req.notional is None else str(req.notional),
                "reserved": str(decision.cost),
                "agent_id": None if req.agent_id is None else str(req.agent_id),
            },
        )
        self._emit(uow, order)
        if broker is not BrokerKind.PAPER:
            user, placed = order.user_id, order.id
            queue = self._broker_queue()
            uow.after_commit(lambda: queue.submit(user, placed))
            return Placement(order, decision.checks, reduced_from)
        # The paper broker accepts at once; it fills from the quote stream in the worker.
        self._set_status(order, OrderStatus.ACCEPTED, now)
        self._emit(uow, order)
        accepted = order_snapshot(order)
        uow.after_commit(lambda: self.publisher.publish(NEW_ORDERS_CHANNEL, accepted))
        return Placement(order, decision.checks, reduced_from)

    def _broker_queue(self) -> BrokerOrderQueue:
        if self.broker_orders is None:
            raise RuntimeError("this process has no queue for broker orders")
        return self.broker_orders

    def _same_or_duplicate(self, existing: Order, request_hash: str, broker: BrokerKind) -> Order:
        if existing.request_hash != request_hash or existing.broker is not broker:
            raise DuplicateClientOrderId(
                f"clientOrderId {existing.client_order_id} was already used for a different order"
            )
        return existing

    async def _available(self, uow: UnitOfWork, account: Account) -> Decimal:
        await uow.session.refresh(account)
        return account.cash - account.reserved

    async def _reject(
        self,
        uow: UnitOfWork,
        req: OrderRequest,
        decision: risk.RiskDecision,
        snapshot: risk.AccountSnapshot,
        now: datetime,
    ) -> None:
        checks = [
            {"rule": c.rule.value, "passed": c.passed, "detail": c.detail} for c in decision.checks
        ]
        await audit.record(
            uow.session,
            "order.risk_rejected",
            user_id=_user(uow),
            entity="order",
            payload={
                "symbol": req.symbol,
                "side": req.side.value,
                "rule": None if decision.rule is None else decision.rule.value,
                "message": decision.message,
                "checks": checks,
            },
        )
        if decision.rule is risk.Rule.MARKET_HOURS:
            raise MarketClosed(next_open(now))
        if decision.rule is risk.Rule.BUYING_POWER:
            raise InsufficientBuyingPower(decision.cost, snapshot.buying_power)
        assert decision.rule is not None
        raise RiskRejected(decision.rule.value, decision.message, checks)

    async def _account_snapshot(
        self, uow: UnitOfWork, account: Account, now: datetime
    ) -> risk.AccountSnapshot:
        valuation = await self.valuation(uow, account)
        holdings: dict[str, risk.Holding] = {}
        for p in valuation.positions:
            held = holdings.get(p.position.symbol, risk.Holding(ZERO, ZERO))
            value = p.market_value if p.market_value is not None else p.position.cost_basis
            holdings[p.position.symbol] = risk.Holding(
                held.quantity + p.position.quantity, held.market_value + value
            )
        open_buys: dict[str, Decimal] = {}
        open_sells: dict[str, Decimal] = {}
        exit_groups: dict[uuid.UUID, Order] = {}
        for order in await repo.open_orders(uow.session, _user(uow)):
            if order.account_id != account.id:
                continue  # another account's orders neither spend nor free this one's shares
            if order.parent_id is not None:
                # One-cancels-other legs close the same shares: count each group once.
                exit_groups.setdefault(order.parent_id, order)
                continue
            _add_open(open_buys, open_sells, order)
        for order in exit_groups.values():
            _add_open(open_buys, open_sells, order)
        session_start = _session_start(now)
        five_sessions_ago = _sessions_back(now, 5)
        sectors = {
            symbol: details.sector
            for symbol, details in (await self.market.details_many(holdings)).items()
            if details and details.sector
        }
        return risk.AccountSnapshot(
            buying_power=account.cash - account.reserved,
            equity=valuation.equity,
            positions=holdings,
            open_buy_quantity=open_buys,
            open_sell_quantity=open_sells,
            sectors=sectors,
            trades_today=await repo.orders_placed_since(uow.session, _user(uow), session_start),
            day_trades_last_5_sessions=await repo.day_trades_since(
                uow.session, _user(uow), five_sessions_ago
            ),
        )

    async def _agent_snapshot(
        self, uow: UnitOfWork, agent_id: uuid.UUID, equity: Decimal, now: datetime, account: Account
    ) -> risk.AgentSnapshot:
        holdings = {
            p.symbol: risk.AgentHolding(p.quantity, p.cost_basis)
            for p in await repo.positions(uow.session, account.id)
            if p.agent_id == agent_id
        }
        mine = [
            o
            for o in await repo.open_orders(uow.session, _user(uow))
            if o.agent_id == agent_id and o.account_id == account.id
        ]
        open_buys: dict[str, Decimal] = {}
        for order in mine:
            if order.side is OrderSide.BUY:
                _add_open(open_buys, {}, order)
        return risk.AgentSnapshot(
            equity=equity,
            positions=holdings,
            reserved=sum((o.reserved for o in mine), ZERO),
            open_buy_quantity=open_buys,
            trades_today=await repo.agent_orders_since(
                uow.session, _user(uow), agent_id, _session_start(now)
            ),
        )

    async def _closes_day_trade(self, uow: UnitOfWork, req: OrderRequest, now: datetime) -> bool:
        if req.side is not OrderSide.SELL:
            return False
        return await repo.bought_since(uow.session, _user(uow), req.symbol, _session_start(now))

    # --- canceling

    async def cancel_order(self, uow: UnitOfWork, order_id: uuid.UUID) -> Order:
        order = await repo.order_by_id(uow.session, _user(uow), order_id, lock=True)
        if order is None:
            raise OrderNotFound("no such order")
        if not order.status.is_open:
            raise OrderInvalid(None, f"the order is {order.status.value} and cannot be canceled")
        await self._cancel(uow, order, "canceled by request")
        return order

    async def cancel_all(self, uow: UnitOfWork) -> int:
        orders = await repo.open_orders(uow.session, _user(uow), lock=True)
        for order in orders:
            await self._cancel(uow, order, "canceled with all open orders")
        return len(orders)

    async def _cancel(self, uow: UnitOfWork, order: Order, reason: str) -> None:
        """Cancel a paper order, or one the broker has not been sent yet; ask the broker to
        cancel any other. That order stays open until the broker reports it canceled --
        it may fill first, and what the broker says is what happened."""
        if order.broker is BrokerKind.PAPER or (
            order.status is OrderStatus.NEW and order.broker_order_id is None
        ):
            # The submitting job sends only NEW orders, and one that was already on its
            # way is canceled by that job as soon as the broker names it.
            await self._close(uow, order, OrderStatus.CANCELED, reason)
            return
        await audit.record(
            uow.session,
            "order.cancel_requested",
            user_id=order.user_id,
            entity="order",
            entity_id=order.id,
            payload={"reason": reason},
        )
        user, requested = order.user_id, order.id
        queue = self._broker_queue()
        uow.after_commit(lambda: queue.cancel(user, requested))

    async def _close(self, uow: UnitOfWork, order: Order, status: OrderStatus, reason: str) -> None:
        now = self.clock()
        await self._release(uow, order, order.reserved)
        self._set_status(order, status, now)
        if status is not OrderStatus.CANCELED or reason != "canceled by request":
            order.reject_reason = reason
        await audit.record(
            uow.session,
            f"order.{status.value.lower()}",
            user_id=order.user_id,
            entity="order",
            entity_id=order.id,
            payload={"reason": reason},
        )
        self._emit(uow, order)

    async def _release(self, uow: UnitOfWork, order: Order, amount: Decimal) -> None:
        amount = min(amount, order.reserved)
        if amount <= 0:
            return
        account = await repo.lock_account(uow.session, order.account_id)
        account.reserved -= amount
        order.reserved -= amount

    async def close_position(self, uow: UnitOfWork, symbol: str) -> Order:
        try:
            symbol = normalize_symbol(symbol)
        except MarketDataError as exc:
            raise OrderInvalid("symbol", str(exc)) from None
        account = await self.account(uow)
        rows = [p for p in await repo.positions(uow.session, account.id) if p.symbol == symbol]
        if not rows:
            raise OrderNotFound(f"you hold no {symbol}")
        placed = [await self._closing_order(uow, row) for row in rows]
        return max(placed, key=lambda o: o.quantity or ZERO)

    async def _closing_order(
        self, uow: UnitOfWork, row: Position, broker: BrokerKind = BrokerKind.PAPER
    ) -> Order:
        side = OrderSide.SELL if row.quantity > 0 else OrderSide.BUY
        return await self.place_order(
            uow,
            OrderRequest(
                symbol=row.symbol,
                side=side,
                quantity=abs(row.quantity),
                agent_id=row.agent_id,
            ),
            broker=broker,
        )

    async def liquidate(self, uow: UnitOfWork) -> tuple[int, int]:
        canceled = await self.cancel_all(uow)
        account = await self.account(uow)
        closed = 0
        for row in await repo.positions(uow.session, account.id):
            await self._closing_order(uow, row)
            closed += 1
        return canceled, closed + await self._liquidate_brokers(uow)

    async def _liquidate_brokers(self, uow: UnitOfWork) -> int:
        """Close the positions of every connected broker account too. Their open orders are
        only being canceled (the broker confirms later), so a position whose shares an open
        order still holds may be refused -- here or by the broker; the refusal is audited
        and the count says how many closing orders went out."""
        closed = 0
        for kind in BrokerKind:
            if kind is BrokerKind.PAPER:
                continue
            found = await broker_repo.active_account(uow.session, _user(uow), kind)
            if found is None or found[1].status is not ConnectionStatus.CONNECTED:
                continue
            for row in await repo.positions(uow.session, found[0].id):
                try:
                    async with uow.session.begin_nested():
                        await self._closing_order(uow, row, kind)
                except TradingError as exc:
                    await audit.record(
                        uow.session,
                        "order.liquidation_refused",
                        user_id=row.user_id,
                        entity="position",
                        entity_id=row.id,
                        payload={"symbol": row.symbol, "reason": exc.message},
                    )
                    continue
                closed += 1
        return closed

    # --- fills (the worker, or a broker's trade events)

    async def broker_reported(
        self, uow: UnitOfWork, order: Order, status: OrderStatus, reason: str | None = None
    ) -> bool:
        """Apply a status an outside broker reported for `order` (fills go through
        `record_fill`). Reports arrive late, twice and out of order: one the status table
        does not allow from where the order is now is stale, skipped, and returns False."""
        if status in (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED):
            raise ValueError("a fill is recorded with record_fill, with its quantity and price")
        if order.status is status or not can_transition(order.status, status):
            return False
        if status is OrderStatus.ACCEPTED:
            self._set_status(order, status, self.clock())
            self._emit(uow, order)
        else:
            default = f"{status.value.lower()} by the broker"
            await self._close(uow, order, status, reason or default)
        return True

    async def match_order(self, uow: UnitOfWork, order_id: uuid.UUID, quote: Quote) -> None:
        """Let one quote act on one paper order: fill, trail, trigger, cancel or expire it."""
        order = await repo.order_by_id(uow.session, _user(uow), order_id, lock=True)
        if order is None or not order.status.is_open:
            return
        now = self.clock()
        if order.expires_at is not None and now >= order.expires_at:
            await self._close(uow, order, OrderStatus.EXPIRED, "a DAY order expires at the close")
            return
        result = match(
            RestingOrder(request_of(order), order.trail_mark, order.triggered),
            quote,
            config=self.paper,
            market_open=is_open(quote.timestamp),
        )
        if result is None:
            return
        order.trail_mark, order.triggered = result.water_mark, result.triggered
        if result.cancel_reason is not None:
            await self._close(uow, order, OrderStatus.CANCELED, result.cancel_reason)
        elif result.fill is not None:
            await self.record_fill(uow, order, result.fill)

    async def expire_due(self, uow: UnitOfWork) -> int:
        now = self.clock()
        due = [
            o
            for o in await repo.open_orders(uow.session, _user(uow), lock=True)
            if o.expires_at is not None and now >= o.expires_at
        ]
        for order in due:
            await self._close(uow, order, OrderStatus.EXPIRED, "a DAY order expires at the close")
        return len(due)

    async def record_fill(
        self, uow: UnitOfWork, order: Order, fill: FillEvent, *, execution_id: str | None = None
    ) -> Fill | None:
        """Apply one execution: order, position (FIFO), cash, reservation, audit, events."""
        account = await repo.lock_account(uow.session, order.account_id)
        position = await repo.lock_position(uow.session, account.id, order.symbol, order.agent_id)
        if position is None:
            position = Position(
                id=uuid.uuid4(),
                user_id=order.user_id,
                account_id=account.id,
                symbol=order.symbol,
                agent_id=order.agent_id,
                quantity=ZERO,
                cost_basis=ZERO,
                realized_pnl=ZERO,
                lots=[],
            )
            uow.session.add(position)
        before = _state_of(position)
        after, realized = ledger.apply_fill(
            before, order.side, fill.quantity, fill.price, fill.commission
        )
        closes = before.quantity != 0 and (before.quantity > 0) != (order.side is OrderSide.BUY)
        filled = order.filled_quantity + fill.quantity
        complete = order.quantity is None or filled >= order.quantity
        # A buy releases what it reserved for this part; the last fill releases the rest.
        release = (
            order.reserved
            if complete
            else min(order.reserved, fill.quantity * fill.price + fill.commission)
        )
        try:
            async with uow.session.begin_nested():
                account.cash += ledger.cash_flow(
                    order.side, fill.quantity, fill.price, fill.commission
                )
                account.reserved -= release
                order.reserved -= release
                await uow.session.flush()
        except IntegrityError:
            # The fill would cost more cash than the account has (a gap far past the reserve
            # buffer): the paper broker refuses it, as a real broker would.
            await uow.session.refresh(account)
            await uow.session.refresh(order)
            await self._close(uow, order, OrderStatus.CANCELED, "not enough cash at the fill price")
            return None
        position.lots = _lots_json(after)
        position.quantity = after.quantity
        position.cost_basis = after.cost_basis
        position.realized_pnl = after.realized_pnl
        position.updated_at = fill.executed_at
        if before.quantity == 0:
            position.opened_at = fill.executed_at
        row = Fill(
            id=uuid.uuid4(),
            user_id=order.user_id,
            order_id=order.id,
            account_id=account.id,
            symbol=order.symbol,
            side=order.side,
            quantity=fill.quantity,
            price=fill.price,
            commission=fill.commission,
            realized_pnl=realized,
            closes_position=closes,
            agent_id=order.agent_id,
            broker_execution_id=execution_id,
            executed_at=fill.executed_at,
        )
        uow.session.add(row)
        previous_value = order.filled_quantity * (order.average_fill_price or ZERO)
        order.average_fill_price = (previous_value + fill.quantity * fill.price) / filled
        order.filled_quantity = filled
        self._set_status(
            order, OrderStatus.FILLED if complete else OrderStatus.PARTIALLY_FILLED, self.clock()
        )
        await uow.session.flush()
        await audit.record(
            uow.session,
            "order.filled" if complete else "order.partially_filled",
            user_id=order.user_id,
            entity="order",
            entity_id=order.id,
            payload={
                "fill_id": str(row.id),
                "quantity": str(fill.quantity),
                "price": str(fill.price),
                "commission": str(fill.commission),
                "realized_pnl": str(realized),
            },
        )
        self._emit(uow, order)
        if complete:
            await self._after_complete(uow, order, fill, opened=not closes)
        await self._snapshot(uow, account, fill.executed_at)
        uow.after_commit(
            lambda: self.publisher.publish(portfolio_channel(order.user_id), {"reason": "fill"})
        )
        return row

    async def _after_complete(
        self, uow: UnitOfWork, order: Order, fill: FillEvent, *, opened: bool
    ) -> None:
        if order.agent_id is not None:
            await notifications.agent_order_filled(uow, self.publisher, order, self.clock())
        if order.parent_id is not None:
            # One-cancels-other: the first exit leg to fill cancels its sibling.
            for sibling in await repo.open_orders(uow.session, order.user_id, lock=True):
                if sibling.parent_id == order.parent_id and sibling.id != order.id:
                    await self._cancel(uow, sibling, "the other exit leg filled")
            return
        filled_request = _with_quantity(request_of(order), order.filled_quantity)
        children = bracket_children(filled_request)
        if not children and opened:
            stop = risk.protective_stop(
                filled_request,
                order.filled_quantity,
                fill.price,
                self.limits_of(await self.limits(uow)),
            )
            children = [stop] if stop is not None else []
        for index, child in enumerate(children):
            leg = _with_client_id(child, f"{order.client_order_id[:56]}-x{index}")
            if order.broker is BrokerKind.PAPER:
                await self.place_order(
                    uow, leg, parent_id=order.id, execution_id=order.execution_id
                )
                continue
            # A broker's fill has happened whatever becomes of the exit legs: a leg that
            # cannot be placed is recorded, never allowed to undo the fill.
            try:
                async with uow.session.begin_nested():
                    await self.place_order(
                        uow,
                        leg,
                        parent_id=order.id,
                        execution_id=order.execution_id,
                        broker=order.broker,
                    )
            except TradingError as exc:
                await audit.record(
                    uow.session,
                    "order.exit_leg_failed",
                    user_id=order.user_id,
                    entity="order",
                    entity_id=order.id,
                    payload={"leg": index, "reason": exc.message},
                )

    async def _snapshot(self, uow: UnitOfWork, account: Account, at: datetime) -> None:
        valuation = await self.valuation(uow, account)
        uow.session.add(
            PortfolioSnapshot(
                id=uuid.uuid4(),
                user_id=account.user_id,
                account_id=account.id,
                taken_at=at,
                cash=account.cash,
                market_value=valuation.market_value,
                equity=valuation.equity,
            )
        )

    async def snapshot_account(self, uow: UnitOfWork, account_id: uuid.UUID, at: datetime) -> bool:
        """One equity point between fills (prices move without them); False when the
        account is not the acting user's."""
        account = await repo.account(uow.session, account_id)
        if account is None:
            return False
        await self._snapshot(uow, account, at)
        return True

    # --- reads

    async def history(
        self, uow: UnitOfWork, since: datetime | None, account: Account | None = None
    ) -> list[tuple[datetime, Decimal]]:
        account = account or await self.account(uow)
        points = [
            (s.taken_at, s.equity) for s in await repo.snapshots(uow.session, account.id, since)
        ]
        points.append((self.clock(), (await self.valuation(uow, account)).equity))
        return points

    async def performance(
        self, uow: UnitOfWork, account: Account | None = None
    ) -> ledger.Performance:
        account = account or await self.account(uow)
        points = await self.history(uow, None, account)
        pnls = await repo.closed_trade_pnls(uow.session, account.id)
        return ledger.performance(points, pnls, account.starting_cash)

    async def list_orders(
        self,
        uow: UnitOfWork,
        *,
        statuses: Sequence[OrderStatus] | None,
        symbol: str | None,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[Order]:
        return await repo.list_orders(
            uow.session, _user(uow), statuses=statuses, symbol=symbol, before=before, limit=limit
        )

    async def list_fills(
        self,
        uow: UnitOfWork,
        *,
        symbol: str | None,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[Fill]:
        return await repo.list_fills(
            uow.session, _user(uow), symbol=symbol, before=before, limit=limit
        )

    # --- helpers

    def _set_status(self, order: Order, status: OrderStatus, now: datetime) -> None:
        if order.status is not status or status is OrderStatus.PARTIALLY_FILLED:
            order.status = transition(order.status, status)
        order.updated_at = now

    def _emit(self, uow: UnitOfWork, order: Order) -> None:
        snapshot = order_snapshot(order)
        channel = orders_channel(order.user_id)
        uow.after_commit(lambda: self.publisher.publish(channel, snapshot))


def vars_of_limits(limits: risk.RiskLimits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__slots__}


def _user(uow: UnitOfWork) -> uuid.UUID:
    assert uow.user_id is not None, "trading always acts for a user"
    return uow.user_id


def _add_open(buys: dict[str, Decimal], sells: dict[str, Decimal], order: Order) -> None:
    remaining = max((order.quantity or ZERO) - order.filled_quantity, ZERO)
    book = buys if order.side is OrderSide.BUY else sells
    book[order.symbol] = book.get(order.symbol, ZERO) + remaining


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _with_symbol(req: OrderRequest, symbol: str) -> OrderRequest:
    return OrderRequest(**{**vars_of(req), "symbol": symbol})


def _with_quantity(req: OrderRequest, quantity: Decimal) -> OrderRequest:
    return OrderRequest(**{**vars_of(req), "quantity": quantity, "notional": None})


def _with_client_id(req: OrderRequest, client_order_id: str) -> OrderRequest:
    return OrderRequest(**{**vars_of(req), "client_order_id": client_order_id})


def _expiry(req: OrderRequest, now: datetime) -> datetime | None:
    if req.time_in_force is not TimeInForce.DAY:
        return None
    close = next_close(now)
    return close + timedelta(hours=4) if req.extended_hours else close


def _session_start(now: datetime) -> datetime:
    """Midnight New York of the current day: 'today' for daily trade counts."""
    from zoneinfo import ZoneInfo

    local = now.astimezone(ZoneInfo("America/New_York"))
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _sessions_back(now: datetime, count: int) -> datetime:
    days = sessions_between((now - timedelta(days=14)).date(), now.date())
    start = days[-count] if len(days) >= count else (now - timedelta(days=7)).date()
    return datetime(start.year, start.month, start.day, tzinfo=UTC)
