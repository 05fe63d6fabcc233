from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.trading.orders import (
    Commission,
    IllegalTransition,
    OrderProblem,
    can_transition,
    estimate_cost,
    to_tick,
    transition,
    validate_order,
)
from domain.trading.types import (
    OPEN_STATUSES,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    TimeInForce,
)

S = OrderStatus
D = Decimal
BUY, SELL = OrderSide.BUY, OrderSide.SELL

EXPECTED_EDGES = {
    (S.NEW, S.ACCEPTED),
    (S.NEW, S.REJECTED),
    (S.NEW, S.CANCELED),
    (S.NEW, S.PARTIALLY_FILLED),
    (S.NEW, S.FILLED),
    (S.ACCEPTED, S.PARTIALLY_FILLED),
    (S.ACCEPTED, S.FILLED),
    (S.ACCEPTED, S.CANCELED),
    (S.ACCEPTED, S.EXPIRED),
    (S.ACCEPTED, S.REJECTED),
    (S.PARTIALLY_FILLED, S.PARTIALLY_FILLED),
    (S.PARTIALLY_FILLED, S.FILLED),
    (S.PARTIALLY_FILLED, S.CANCELED),
    (S.PARTIALLY_FILLED, S.EXPIRED),
}


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("new", list(S))
def test_transition_table_is_exactly_the_documented_one(current: S, new: S) -> None:
    allowed = (current, new) in EXPECTED_EDGES
    assert can_transition(current, new) is allowed
    if allowed:
        assert transition(current, new) is new
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(current, new)
        assert info.value.current is current
        assert info.value.new is new


@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_no_transition_ever_leaves_a_terminal_state(attempts: list[S]) -> None:
    status = S.NEW
    for new in attempts:
        was_terminal = status not in OPEN_STATUSES
        try:
            status = transition(status, new)
        except IllegalTransition:
            continue
        assert not was_terminal, f"left terminal state via {new}"


def req(**kwargs: object) -> OrderRequest:
    base: dict[str, object] = {"symbol": "AAPL", "side": BUY, "quantity": D(10)}
    base.update(kwargs)
    return OrderRequest(**base)  # type: ignore[arg-type]


def fields(problems: list[OrderProblem]) -> set[str]:
    return {p.field for p in problems}


@pytest.mark.parametrize(
    "order",
    [
        req(),
        req(quantity=D("0.123456789")),
        req(quantity=None, notional=D("250.50")),
        req(type=OrderType.LIMIT, limit_price=D("189.99"), time_in_force=TimeInForce.GTC),
        req(type=OrderType.LIMIT, limit_price=D("0.1234")),
        req(type=OrderType.STOP, stop_price=D("200")),
        req(type=OrderType.STOP_LIMIT, stop_price=D("200"), limit_price=D("201")),
        req(type=OrderType.TRAILING_STOP, trail_percent=D("50"), side=SELL),
        req(type=OrderType.LIMIT, limit_price=D("10"), time_in_force=TimeInForce.IOC),
        req(time_in_force=TimeInForce.FOK),
        req(type=OrderType.LIMIT, limit_price=D("10"), extended_hours=True),
        req(symbol="BRK.B", client_order_id="my-order_1:a.b"),
        req(take_profit_price=D("110"), stop_loss_price=D("90")),
        req(side=SELL, take_profit_price=D("90"), stop_loss_price=D("110")),
        req(quantity=D(10_000_000), type=OrderType.LIMIT, limit_price=D(1_000_000)),
    ],
)
def test_well_formed_orders_have_no_problems(order: OrderRequest) -> None:
    assert validate_order(order, D(100)) == []


@pytest.mark.parametrize(
    ("order", "field"),
    [
        (req(symbol="aapl"), "symbol"),
        (req(symbol=""), "symbol"),
        (req(symbol="AAPL;DROP"), "symbol"),
        (req(symbol="ABCDEFGHIJKLM"), "symbol"),
        (req(quantity=None), "quantity"),
        (req(notional=D(100)), "quantity"),
        (req(quantity=D(0)), "quantity"),
        (req(quantity=D(-1)), "quantity"),
        (req(quantity=D("0.0000000001")), "quantity"),
        (req(quantity=D(10_000_001)), "quantity"),
        (req(quantity=None, notional=D(0)), "notional"),
        (req(quantity=None, notional=D("10.001")), "notional"),
        (req(quantity=None, notional=D(10), time_in_force=TimeInForce.GTC), "notional"),
        (req(quantity=None, notional=D(10), type=OrderType.LIMIT, limit_price=D(1)), "notional"),
        (req(quantity=D("1.5"), time_in_force=TimeInForce.GTC), "quantity"),
        (req(quantity=D("1.5"), type=OrderType.STOP, stop_price=D(1)), "quantity"),
        (req(type=OrderType.LIMIT), "limit_price"),
        (req(type=OrderType.STOP), "stop_price"),
        (req(type=OrderType.STOP_LIMIT, stop_price=D(10)), "limit_price"),
        (req(type=OrderType.STOP_LIMIT, limit_price=D(10)), "stop_price"),
        (req(type=OrderType.TRAILING_STOP), "trail_percent"),
        (req(type=OrderType.TRAILING_STOP, trail_percent=D(0)), "trail_percent"),
        (req(type=OrderType.TRAILING_STOP, trail_percent=D("50.01")), "trail_percent"),
        (req(limit_price=D(10)), "limit_price"),
        (req(stop_price=D(10)), "stop_price"),
        (req(trail_percent=D(1)), "trail_percent"),
        (req(type=OrderType.LIMIT, limit_price=D("10.005")), "limit_price"),
        (req(type=OrderType.LIMIT, limit_price=D("0.12345")), "limit_price"),
        (req(type=OrderType.LIMIT, limit_price=D(0)), "limit_price"),
        (req(type=OrderType.LIMIT, limit_price=D("1000000.01")), "limit_price"),
        (req(type=OrderType.STOP, stop_price=D(5), time_in_force=TimeInForce.IOC), "time_in_force"),
        (
            req(type=OrderType.TRAILING_STOP, trail_percent=D(1), time_in_force=TimeInForce.FOK),
            "time_in_force",
        ),
        (req(extended_hours=True), "extended_hours"),
        (
            req(
                type=OrderType.LIMIT,
                limit_price=D(1),
                extended_hours=True,
                time_in_force=TimeInForce.GTC,
            ),
            "extended_hours",
        ),
        (req(quantity=None, notional=D(100), take_profit_price=D(110)), "take_profit_price"),
        (req(quantity=D("1.5"), stop_loss_price=D(90)), "stop_loss_price"),
        (req(type=OrderType.STOP, stop_price=D(100), stop_loss_price=D(90)), "stop_loss_price"),
        (req(time_in_force=TimeInForce.IOC, take_profit_price=D(110)), "take_profit_price"),
        (req(take_profit_price=D(100)), "take_profit_price"),  # not above the entry
        (req(stop_loss_price=D(100)), "stop_loss_price"),  # not below the entry
        (req(side=SELL, take_profit_price=D(110)), "take_profit_price"),
        (req(side=SELL, stop_loss_price=D(90)), "stop_loss_price"),
        (req(take_profit_price=D("1000000.01"), stop_loss_price=D(90)), "take_profit_price"),
        (req(client_order_id=""), "client_order_id"),
        (req(client_order_id="a" * 65), "client_order_id"),
        (req(client_order_id="has space"), "client_order_id"),
        (req(quantity=D("NaN")), "quantity"),
        (req(type=OrderType.LIMIT, limit_price=D("Infinity")), "limit_price"),
    ],
)
def test_each_malformed_order_names_its_field(order: OrderRequest, field: str) -> None:
    problems = validate_order(order, D(100))
    assert field in fields(problems), problems
    assert all(p.message for p in problems)


def test_bracket_legs_are_checked_against_the_limit_price_rather_than_the_quote() -> None:
    order = req(type=OrderType.LIMIT, limit_price=D(80), take_profit_price=D(90))
    assert validate_order(order, D(100)) == []
    order = req(type=OrderType.LIMIT, limit_price=D(95), stop_loss_price=D(96))
    assert fields(validate_order(order, D(100))) == {"stop_loss_price"}


def test_without_a_quote_market_bracket_legs_are_checked_against_each_other() -> None:
    assert validate_order(req(take_profit_price=D(50), stop_loss_price=D(40)), None) == []
    problems = validate_order(req(take_profit_price=D(40), stop_loss_price=D(50)), None)
    assert fields(problems) == {"take_profit_price"}


def test_every_problem_is_reported_not_just_the_first() -> None:
    order = req(symbol="bad symbol", quantity=D(0), client_order_id="")
    assert fields(validate_order(order, None)) == {"symbol", "quantity", "client_order_id"}


def test_to_tick_uses_cents_above_a_dollar_and_hundredths_of_a_cent_below() -> None:
    assert to_tick(D("10.001"), ROUND_CEILING) == D("10.01")
    assert to_tick(D("10.009"), ROUND_FLOOR) == D("10.00")
    assert to_tick(D("0.12341"), ROUND_CEILING) == D("0.1235")


def test_commission_has_a_minimum_per_fill_and_is_in_cents() -> None:
    c = Commission(per_share=D("0.005"), minimum=D(1))
    assert c.charge(D(10)) == D(1)
    assert c.charge(D(1001)) == D("5.01")  # 5.005 rounds half up
    assert c.charge(D(0)) == 0


def test_market_buy_reserves_the_quote_plus_the_buffer_and_commission() -> None:
    cost = estimate_cost(req(), D(100), Commission(minimum=D(1)))
    assert cost == D("1021.00")  # 10 x 100 x 1.02 + 1


def test_limit_buy_reserves_the_limit_exactly() -> None:
    order = req(type=OrderType.LIMIT, limit_price=D("99.99"), quantity=D(3))
    assert estimate_cost(order, D(120)) == D("299.97")


def test_stop_limit_buy_reserves_its_limit() -> None:
    order = req(type=OrderType.STOP_LIMIT, stop_price=D(101), limit_price=D(102))
    assert estimate_cost(order, None) == D(1020)


def test_stop_buy_reserves_the_higher_of_stop_and_quote() -> None:
    order = req(type=OrderType.STOP, stop_price=D(110))
    assert estimate_cost(order, D(100)) == D("1122.00")
    assert estimate_cost(order, D(120)) == D("1224.00")
    assert estimate_cost(order, None) == D("1122.00")


def test_trailing_buy_reserves_the_highest_trigger_it_can_have() -> None:
    order = req(type=OrderType.TRAILING_STOP, trail_percent=D(5))
    assert estimate_cost(order, D(100)) == D("1071.00")  # 10 x 105 x 1.02


def test_notional_buy_reserves_its_notional_plus_commission_on_the_estimated_shares() -> None:
    order = req(quantity=None, notional=D("1000"))
    assert estimate_cost(order, D(100)) == D(1000)
    assert estimate_cost(order, D(100), Commission(per_share=D("0.5"))) == D(1005)


def test_cost_is_rounded_up_to_the_cent() -> None:
    order = req(quantity=D("0.001"), type=OrderType.LIMIT, limit_price=D("1.01"))
    assert estimate_cost(order, None) == D("0.01")


def test_sells_reserve_nothing() -> None:
    assert estimate_cost(req(side=SELL), D(100)) == 0


def test_a_market_buy_without_a_quote_cannot_be_costed() -> None:
    with pytest.raises(ValueError, match="quote"):
        estimate_cost(req(), None)
    with pytest.raises(ValueError, match="quote"):
        estimate_cost(req(quantity=None, notional=D(10)), None)
