from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from resolvers import trading
from schema import trading as types
from schema.context import Info


@strawberry.type
class TradingQuery:
    portfolio: types.Portfolio = strawberry.field(resolver=trading.portfolio)
    orders: types.OrderConnection = strawberry.field(resolver=trading.orders)
    order: types.Order | None = strawberry.field(resolver=trading.order)
    fills: types.FillConnection = strawberry.field(resolver=trading.fills)
    risk_limits: types.RiskLimits = strawberry.field(resolver=trading.risk_limits)


@strawberry.type
class TradingMutation:
    place_order: types.PlaceOrderResult = strawberry.mutation(resolver=trading.place_order)
    cancel_order: types.CancelOrderResult = strawberry.mutation(resolver=trading.cancel_order)
    cancel_all_orders: types.EmergencyResult = strawberry.mutation(
        resolver=trading.cancel_all_orders
    )
    close_position: types.PlaceOrderResult = strawberry.mutation(resolver=trading.close_position)
    liquidate_all: types.LiquidateResult = strawberry.mutation(
        resolver=trading.liquidate_all,
        description="Cancel every open order and close every position. Needs a current "
        "two-factor code when 2FA is on.",
    )
    update_risk_limits: types.UpdateRiskLimitsResult = strawberry.mutation(
        resolver=trading.update_risk_limits
    )


@strawberry.type
class TradingSubscription:
    @strawberry.subscription(description="This user's orders, on every change.")  # type: ignore[untyped-decorator]
    async def order_events(self, info: Info) -> AsyncGenerator[types.Order, None]:
        async for order in trading.order_events(info):
            yield order

    @strawberry.subscription(description="This user's portfolio, after fills.")  # type: ignore[untyped-decorator]
    async def portfolio_updates(
        self,
        info: Info,
        broker: types.BrokerKind | None = None,  # type: ignore[valid-type]
    ) -> AsyncGenerator[types.Portfolio, None]:
        async for portfolio in trading.portfolio_updates(info, broker):
            yield portfolio
