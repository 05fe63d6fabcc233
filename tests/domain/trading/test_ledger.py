from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.trading.ledger import (
    Lot,
    PositionState,
    apply_fill,
    cash_flow,
    performance,
    unrealized,
)
from domain.trading.types import OrderSide

D = Decimal
BUY, SELL = OrderSide.BUY, OrderSide.SELL


def fills(state: PositionState, *steps: tuple[OrderSide, str, str, str]) -> PositionState:
    for side, q, p, c in steps:
        state, _ = apply_fill(state, side, D(q), D(p), D(c))
    return state


def test_a_buy_opens_a_lot_and_its_commission_is_realized_at_once() -> None:
    state, realized = apply_fill(PositionState(), BUY, D(10), D(100), D(2))
    assert state.lots == (Lot(D(10), D(100)),)
    assert state.quantity == 10
    assert state.cost_basis == 1000
    assert state.average_cost == 100
    assert realized == D(-2)
    assert state.realized_pnl == D(-2)


def test_sells_close_the_oldest_lots_first() -> None:
    state = fills(PositionState(), (BUY, "10", "100", "0"), (BUY, "10", "110", "0"))
    state, realized = apply_fill(state, SELL, D(15), D(120), D(1))
    assert realized == 10 * 20 + 5 * 10 - 1
    assert state.lots == (Lot(D(5), D(110)),)
    assert state.average_cost == 110
    assert state.realized_pnl == 249


def test_one_sell_can_flip_a_long_into_a_short() -> None:
    state = fills(PositionState(), (BUY, "10", "100", "0"))
    state, realized = apply_fill(state, SELL, D(15), D(90), D(1))
    assert realized == D(-101)
    assert state.quantity == -5
    assert state.lots == (Lot(D(-5), D(90)),)
    assert state.cost_basis == -450
    assert state.average_cost == 90


def test_covering_a_short_below_its_entry_is_a_gain() -> None:
    state = fills(PositionState(), (SELL, "10", "50", "0"))
    state, realized = apply_fill(state, BUY, D(4), D(40), D(0))
    assert realized == 40
    assert state.lots == (Lot(D(-6), D(50)),)
    state, realized = apply_fill(state, BUY, D(8), D(60), D(0))
    assert realized == -60
    assert state.lots == (Lot(D(2), D(60)),)


def test_a_closed_position_has_no_lots_and_no_average_cost() -> None:
    state = fills(PositionState(), (BUY, "0.5", "10", "0"), (SELL, "0.5", "12", "0"))
    assert state.lots == ()
    assert state.quantity == 0
    assert state.cost_basis == 0
    assert state.average_cost is None
    assert state.realized_pnl == 1


def test_unrealized_pnl_of_longs_and_shorts() -> None:
    long = fills(PositionState(), (BUY, "10", "100", "5"))
    short = fills(PositionState(), (SELL, "10", "100", "5"))
    assert unrealized(long, D(105)) == 50
    assert unrealized(short, D(105)) == -50
    assert unrealized(PositionState(), D(105)) == 0


@pytest.mark.parametrize(("q", "p", "c"), [("0", "1", "0"), ("1", "0", "0"), ("1", "1", "-1")])
def test_nonsense_fills_are_refused(q: str, p: str, c: str) -> None:
    with pytest.raises(ValueError, match="bad fill"):
        apply_fill(PositionState(), BUY, D(q), D(p), D(c))


def test_cash_flow_of_buys_and_sells() -> None:
    assert cash_flow(BUY, D(2), D("10.5"), D(1)) == D(-22)
    assert cash_flow(SELL, D(2), D("10.5"), D(1)) == D(20)


quantities = st.decimals(min_value=D("0.000000001"), max_value=D(100_000), places=9)
prices = st.one_of(
    st.decimals(min_value=D("0.0001"), max_value=D("0.9999"), places=4),
    st.decimals(min_value=D(1), max_value=D(100_000), places=2),
)
commissions = st.decimals(min_value=D(0), max_value=D(50), places=2)
fill_steps = st.lists(
    st.tuples(
        st.sampled_from(["AAPL", "MSFT"]),
        st.sampled_from([BUY, SELL]),
        quantities,
        prices,
        commissions,
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(
    starting=st.decimals(min_value=D(0), max_value=D(10_000_000), places=2),
    steps=fill_steps,
)
def test_cash_and_positions_reconcile_to_the_starting_balance(
    starting: Decimal, steps: list[tuple[str, OrderSide, Decimal, Decimal, Decimal]]
) -> None:
    # Identity: starting == cash + sum(cost_basis) - sum(realized_pnl), exactly.
    cash = starting
    states: dict[str, PositionState] = {}
    net: dict[str, Decimal] = {}
    realized_total = D(0)
    for symbol, side, q, p, c in steps:
        cash += -(q * p) - c if side is BUY else q * p - c
        state, realized = apply_fill(states.get(symbol, PositionState()), side, q, p, c)
        states[symbol] = state
        realized_total += realized
        net[symbol] = net.get(symbol, D(0)) + (q if side is BUY else -q)
        assert state.quantity == net[symbol]
        assert all((lot.quantity > 0) == (state.quantity > 0) for lot in state.lots)
        assert all(lot.quantity != 0 for lot in state.lots)
    cost_basis = sum((s.cost_basis for s in states.values()), D(0))
    realized_pnl = sum((s.realized_pnl for s in states.values()), D(0))
    assert realized_pnl == realized_total
    assert cash + cost_basis - realized_pnl == starting
    assert (cash + cost_basis - realized_pnl).quantize(D("0.01")) == starting


@given(side=st.sampled_from([BUY, SELL]), q=quantities, p=prices)
def test_a_round_trip_at_one_price_without_commission_realizes_nothing(
    side: OrderSide, q: Decimal, p: Decimal
) -> None:
    other = SELL if side is BUY else BUY
    state, _ = apply_fill(PositionState(), side, q, p, D(0))
    state, realized = apply_fill(state, other, q, p, D(0))
    assert realized == 0
    assert state == PositionState()


def day(n: int, hour: int = 20) -> datetime:
    return datetime(2025, 3, 3, hour, tzinfo=UTC) + timedelta(days=n)


def test_performance_of_a_simple_history() -> None:
    points = [(day(0), D(100)), (day(1), D(101)), (day(2), D("104.03"))]
    perf = performance(points, [D(5), D(-2), D(0), D(3)], D(100))
    assert perf.total_return_percent == D("4.0300")
    assert perf.max_drawdown_percent == 0
    assert perf.trades == 4
    assert perf.win_rate == D("0.5000")
    expected = 0.02 / math.sqrt(2 * 0.01**2) * math.sqrt(252)  # returns 1% then 3%
    assert perf.sharpe_ratio is not None
    assert abs(float(perf.sharpe_ratio) - expected) < 0.001


def test_drawdown_is_measured_from_the_running_peak_including_the_start() -> None:
    points = [(day(0), D(90)), (day(1), D(120)), (day(2), D(90)), (day(3), D(110))]
    perf = performance(points, [], D(100))
    assert perf.max_drawdown_percent == D("25.0000")
    assert perf.total_return_percent == D("10.0000")
    assert perf.win_rate is None
    assert perf.trades == 0


def test_sharpe_uses_the_last_point_of_each_new_york_day() -> None:
    # 01:00 UTC is the previous evening in New York, so it belongs to the day before.
    noisy = [
        (day(0), D(100)),
        (day(1, hour=15), D(500)),
        (day(1), D(101)),
        (day(2, hour=1), D(50)),
        (day(2), D("104.03")),
    ]
    clean = [(day(0), D(100)), (day(1), D(101)), (day(2), D("104.03"))]
    assert (
        performance(noisy, [], D(100)).sharpe_ratio != performance(clean, [], D(100)).sharpe_ratio
    )
    same_days = [
        (day(0), D(100)),
        (day(1, hour=15), D(500)),
        (day(1), D(101)),
        (day(2), D("104.03")),
    ]
    assert (
        performance(same_days, [], D(100)).sharpe_ratio
        == performance(clean, [], D(100)).sharpe_ratio
    )


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(day(0), D(100))],
        [(day(0), D(100)), (day(1), D(110))],  # one daily return
        [(day(0), D(100)), (day(1), D(110)), (day(2), D(121))],  # returns never vary
    ],
)
def test_sharpe_is_undefined_without_two_varying_daily_returns(
    points: list[tuple[datetime, Decimal]],
) -> None:
    assert performance(points, [], D(100)).sharpe_ratio is None


def test_no_history_means_no_return() -> None:
    perf = performance([], [], D(1000))
    assert perf.total_return_percent == 0
    assert perf.max_drawdown_percent == 0
