"""For any sequence of orders, fills and cancels the books reconcile to the cent."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from starlette.applications import Starlette

from db.models import Fill, Order, Position, User
from domain.market.models import Quote
from domain.trading.service import TradingError
from domain.trading.types import OrderRequest, OrderSide, OrderType

SYMBOL = "PG"
prices = st.decimals(min_value=Decimal("50"), max_value=Decimal("150"), places=2)
quantities = st.integers(min_value=1, max_value=40).map(Decimal)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), quantities, prices),
        st.tuples(st.just("sell"), quantities, prices),
        st.tuples(st.just("rest"), quantities, prices),
        st.tuples(st.just("cancel"), st.just(Decimal(0)), st.just(Decimal(0))),
    ),
    min_size=1,
    max_size=12,
)


def quote_at(price: Decimal, now: datetime) -> Quote:
    return Quote(SYMBOL, price - Decimal("0.01"), price + Decimal("0.01"), price, Decimal(1), now)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=steps)
async def test_cash_cost_basis_and_realized_pnl_reconcile(
    app: Starlette, clock: Callable[[], datetime], sequence: list[tuple[str, Decimal, Decimal]]
) -> None:
    svc = app.state.services
    trading, db = svc.trading, svc.db
    user_id = uuid.uuid4()
    async with db.transaction(user_id) as uow:
        uow.session.add(User(id=user_id, email=f"{user_id}@example.com", password_hash="x"))
    open_orders: list[uuid.UUID] = []
    for action, quantity, price in sequence:
        try:
            async with db.transaction(user_id) as uow:
                if action == "cancel":
                    if open_orders:
                        await trading.cancel_order(uow, open_orders.pop())
                    continue
                side = OrderSide.SELL if action == "sell" else OrderSide.BUY
                request: dict[str, Any] = {"symbol": SYMBOL, "side": side, "quantity": quantity}
                if action == "rest":  # a limit far below the market: it rests
                    request |= {"type": OrderType.LIMIT, "limit_price": Decimal("1.00")}
                order = await trading.place_order(uow, OrderRequest(**request))
                if action == "rest":
                    open_orders.append(order.id)
                else:
                    await trading.match_order(uow, order.id, quote_at(price, clock()))
        except TradingError:
            pass  # a refusal (short sale, buying power) changes nothing; the books must agree

    async with db.transaction(user_id) as uow:
        account = await trading.account(uow)
        positions = (await uow.session.scalars(select(Position))).all()
        orders = (await uow.session.scalars(select(Order))).all()
        fills = (await uow.session.scalars(select(Fill))).all()
    # Every market buy filled (the prices and sizes never exceed buying power).
    assert len([f for f in fills if f.side is OrderSide.BUY]) == sum(
        1 for step in sequence if step[0] == "buy"
    )
    cost_basis = sum((p.cost_basis for p in positions), Decimal(0))
    realized = sum((p.realized_pnl for p in positions), Decimal(0))
    assert account.cash + cost_basis - realized == account.starting_cash
    assert account.reserved >= 0
    assert account.reserved == sum((o.reserved for o in orders if o.status.is_open), Decimal(0))
    assert all(o.reserved == 0 for o in orders if not o.status.is_open)
