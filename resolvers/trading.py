"""Thin trading resolvers: decode input, call the engine with the actor, map the outcome."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import strawberry

from db.engine import UnitOfWork
from domain.auth import service as auth
from domain.auth.actor import Scope
from domain.trading import service as engine
from domain.trading import types as t
from kianax.broadcast import SubscriptionLost
from schema import trading as types
from schema.auth import TwoFactorRequired
from schema.context import Context, Info
from schema.errors import BadInput, NotFound, UserError, ValidationError
from schema.errors import SubscriptionLost as Resubscribe
from schema.market import PageInfo

T = TypeVar("T")
MAX_PAGE = 100


def to_user_error(exc: engine.TradingError) -> UserError:
    if isinstance(exc, engine.OrderInvalid):
        return ValidationError(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, engine.InsufficientBuyingPower):
        return types.InsufficientBuyingPower(
            code=exc.code, message=exc.message, required=exc.required, available=exc.available
        )
    if isinstance(exc, engine.RiskRejected):
        return types.RiskLimitExceeded(code=exc.code, message=exc.message, rule=exc.rule)
    if isinstance(exc, engine.MarketClosed):
        return types.MarketClosed(code=exc.code, message=exc.message, next_open=exc.next_open)
    if isinstance(exc, engine.DuplicateClientOrderId):
        return types.DuplicateClientOrderId(code=exc.code, message=exc.message)
    return NotFound(code=exc.code, message=exc.message)


async def _run(
    ctx: Context, scope: Scope, act: Callable[[UnitOfWork], Awaitable[T]]
) -> T | UserError:
    """One unit of work. Bad input rolls back; a refusal still commits its audit record."""
    actor = ctx.require_actor(scope)
    try:
        async with ctx.db.transaction(actor.user_id) as uow:
            try:
                return await act(uow)
            except engine.OrderInvalid:
                raise
            except engine.TradingError as exc:
                return to_user_error(exc)
            except auth.TwoFactorRequired as exc:
                return TwoFactorRequired(code=exc.code, message=exc.message)
    except engine.OrderInvalid as exc:
        return to_user_error(exc)


def _request(input: types.PlaceOrderInput) -> t.OrderRequest:
    return t.OrderRequest(
        symbol=input.symbol,
        side=input.side,
        type=input.type,
        time_in_force=input.time_in_force,
        quantity=input.quantity,
        notional=input.notional,
        limit_price=input.limit_price,
        stop_price=input.stop_price,
        trail_percent=input.trail_percent,
        take_profit_price=input.take_profit_price,
        stop_loss_price=input.stop_loss_price,
        extended_hours=input.extended_hours,
        client_order_id=input.client_order_id,
    )


def _placed(order: Any) -> types.OrderPlaced:
    return types.OrderPlaced(order=types.Order.from_snapshot(engine.order_snapshot(order)))


async def place_order(info: Info, input: types.PlaceOrderInput) -> types.PlaceOrderResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.OrderPlaced:
        return _placed(await ctx.trading.place_order(uow, _request(input), broker=input.broker))

    return await _run(ctx, Scope.TRADE, act)  # type: ignore[return-value]


def _parse_id(raw: strawberry.ID) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None


async def cancel_order(info: Info, id: strawberry.ID) -> types.CancelOrderResult:
    ctx = info.context
    order_id = _parse_id(id)

    async def act(uow: UnitOfWork) -> types.OrderCanceled:
        if order_id is None:
            raise engine.OrderNotFound("no such order")
        order = await ctx.trading.cancel_order(uow, order_id)
        return types.OrderCanceled(order=types.Order.from_snapshot(engine.order_snapshot(order)))

    return await _run(ctx, Scope.TRADE, act)  # type: ignore[return-value]


async def cancel_all_orders(info: Info) -> types.EmergencyResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.EmergencyResult:
        canceled = await ctx.trading.cancel_all(uow)
        return types.EmergencyResult(canceled_orders=canceled, closed_positions=0, paused_agents=0)

    return await _run(ctx, Scope.TRADE, act)  # type: ignore[return-value]


async def pause_all_agents(info: Info) -> types.EmergencyResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.EmergencyResult:
        paused = await ctx.agents.pause_all(uow)
        return types.EmergencyResult(canceled_orders=0, closed_positions=0, paused_agents=paused)

    return await _run(ctx, Scope.AGENTS, act)  # type: ignore[return-value]


async def close_position(info: Info, symbol: str) -> types.PlaceOrderResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.OrderPlaced:
        try:
            return _placed(await ctx.trading.close_position(uow, symbol))
        except engine.OrderNotFound as exc:
            raise engine.OrderInvalid("symbol", exc.message) from None

    return await _run(ctx, Scope.TRADE, act)  # type: ignore[return-value]


async def liquidate_all(info: Info, totp_code: str | None = None) -> types.LiquidateResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.EmergencyResult:
        actor = ctx.require_actor(Scope.TRADE)
        await ctx.auth.require_fresh_code(uow, actor, totp_code)
        # Agents first, in the same transaction, so none buys back what is being sold.
        paused = await ctx.agents.pause_all(uow)
        canceled, closed = await ctx.trading.liquidate(uow)
        return types.EmergencyResult(
            canceled_orders=canceled, closed_positions=closed, paused_agents=paused
        )

    return await _run(ctx, Scope.TRADE, act)  # type: ignore[return-value]


async def update_risk_limits(
    info: Info, input: types.RiskLimitsInput
) -> types.UpdateRiskLimitsResult:
    ctx = info.context
    changes = {k: v for k, v in vars(input).items() if v is not strawberry.UNSET}
    for flag in ("allow_short", "allow_extended_hours"):
        if flag in changes and changes[flag] is None:
            return ValidationError(
                code="VALIDATION_ERROR", message=f"{flag} must be true or false", field=flag
            )

    async def act(uow: UnitOfWork) -> types.RiskLimitsUpdated:
        row = await ctx.trading.update_limits(uow, changes)
        return types.RiskLimitsUpdated(risk_limits=types.RiskLimits.from_row(row))

    return await _run(ctx, Scope.TRADE, act)  # type: ignore[return-value]


async def _valuation(
    ctx: Context,
    uow: UnitOfWork,
    broker: t.BrokerKind | None,
) -> engine.Valuation:
    try:
        account = await ctx.trading.portfolio_account(uow, broker)
    except engine.OrderInvalid as exc:
        raise BadInput(exc.message) from None
    return await ctx.trading.valuation(uow, account)


async def portfolio(
    info: Info,
    broker: Annotated[
        types.BrokerKind | None,  # type: ignore[valid-type]
        strawberry.argument(
            description="Which account; by default the connected broker's when there is "
            "one, else the paper portfolio."
        ),
    ] = None,
) -> types.Portfolio:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    async with ctx.db.transaction(actor.user_id) as uow:
        valuation = await _valuation(ctx, uow, broker)
    return types.Portfolio(valuation=valuation)


async def risk_limits(info: Info) -> types.RiskLimits:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    async with ctx.db.transaction(actor.user_id) as uow:
        return types.RiskLimits.from_row(await ctx.trading.limits(uow))


def _page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first must be between 1 and {MAX_PAGE}")
    return first


async def orders(
    info: Info,
    status: list[types.OrderStatus] | None = None,  # type: ignore[valid-type]
    symbol: str | None = None,
    first: int = 20,
    after: str | None = None,
) -> types.OrderConnection:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    size = _page_size(first)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await ctx.trading.list_orders(
            uow,
            statuses=status,
            symbol=symbol.strip().upper() if symbol else None,
            before=types.parse_cursor(after),
            limit=size + 1,
        )
    edges = [
        types.OrderEdge(
            cursor=types.make_cursor(r.submitted_at, r.id),
            node=types.Order.from_snapshot(engine.order_snapshot(r)),
        )
        for r in rows[:size]
    ]
    return types.OrderConnection(
        edges=edges,
        page_info=PageInfo.of(edges, len(rows) > size),
    )


async def order(info: Info, id: strawberry.ID) -> types.Order | None:
    ctx = info.context
    ctx.require_actor(Scope.READ)
    order_id = _parse_id(id)
    if order_id is None:
        return None
    found = await ctx.loaders.order_by_id.load(order_id)
    return None if found is None else types.Order.from_snapshot(found)


async def fills(
    info: Info, symbol: str | None = None, first: int = 50, after: str | None = None
) -> types.FillConnection:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    size = _page_size(first)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await ctx.trading.list_fills(
            uow,
            symbol=symbol.strip().upper() if symbol else None,
            before=types.parse_cursor(after),
            limit=size + 1,
        )
    edges = [
        types.FillEdge(cursor=types.make_cursor(r.executed_at, r.id), node=types.Fill.from_row(r))
        for r in rows[:size]
    ]
    return types.FillConnection(
        edges=edges,
        page_info=PageInfo.of(edges, len(rows) > size),
    )


async def order_events(info: Info) -> AsyncIterator[types.Order]:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    # The channel comes from the actor, never from a client argument.
    async with ctx.broadcast.subscribe(engine.orders_channel(actor.user_id)) as sub:
        try:
            async for message in sub:
                yield types.Order.from_snapshot(message.data)
        except SubscriptionLost as exc:
            raise Resubscribe(f"{exc}; resubscribe and refetch orders") from exc


async def portfolio_updates(
    info: Info, broker: t.BrokerKind | None = None
) -> AsyncIterator[types.Portfolio]:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    async with ctx.broadcast.subscribe(engine.portfolio_channel(actor.user_id)) as sub:
        try:
            async for _ in sub:
                async with ctx.db.transaction(actor.user_id) as uow:
                    valuation = await _valuation(ctx, uow, broker)
                yield types.Portfolio(valuation=valuation)
        except SubscriptionLost as exc:
            raise Resubscribe(f"{exc}; resubscribe and refetch the portfolio") from exc
