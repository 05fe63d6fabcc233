from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.trading.orders import Commission, estimate_cost
from domain.trading.risk import (
    AccountSnapshot,
    AgentHolding,
    AgentLimits,
    AgentSnapshot,
    Allocation,
    Holding,
    OrderContext,
    RiskDecision,
    RiskLimits,
    Rule,
    agent_allocation,
    check,
    check_agent,
    protective_stop,
    shrink_to_allocation,
)
from domain.trading.types import OrderRequest, OrderSide, OrderType, TimeInForce

D = Decimal
BUY, SELL = OrderSide.BUY, OrderSide.SELL
NO_LIMITS = RiskLimits()


def ctx(
    side: OrderSide = BUY, quantity: str | None = "10", price: str = "100", **kwargs: Any
) -> OrderContext:
    request_fields = {
        k: kwargs.pop(k)
        for k in ("type", "time_in_force", "notional", "limit_price", "extended_hours", "symbol")
        if k in kwargs
    }
    request = OrderRequest(
        symbol=str(request_fields.pop("symbol", "AAPL")),
        side=side,
        quantity=None if quantity is None else D(quantity),
        **request_fields,
    )
    defaults: dict[str, Any] = {"tradable": True, "market_open": True, "sector": "Technology"}
    defaults.update(kwargs)
    return OrderContext(request=request, reference_price=D(price), **defaults)


def account(**kwargs: object) -> AccountSnapshot:
    defaults: dict[str, object] = {"buying_power": D(50_000), "equity": D(100_000)}
    defaults.update(kwargs)
    return AccountSnapshot(**defaults)  # type: ignore[arg-type]


def failed(decision: RiskDecision) -> set[Rule]:
    return {c.rule for c in decision.checks if not c.passed}


def test_an_ordinary_buy_passes_and_records_every_rule_it_evaluated() -> None:
    limits = RiskLimits(
        max_position_value=D(50_000),
        max_position_percent=D(50),
        max_daily_trades=10,
        max_sector_percent=D(60),
    )
    decision = check(ctx(), account(), limits)
    assert decision.approved
    assert decision.rule is None
    assert decision.cost == D("1020.00")
    assert [c.rule for c in decision.checks] == [
        Rule.TRADABLE_SYMBOL,
        Rule.MARKET_HOURS,
        Rule.PATTERN_DAY_TRADER,
        Rule.MAX_DAILY_TRADES,
        Rule.BUYING_POWER,
        Rule.MAX_POSITION_VALUE,
        Rule.MAX_POSITION_PERCENT,
        Rule.MAX_SECTOR_PERCENT,
    ]
    assert all(c.passed and c.detail for c in decision.checks)


def test_the_first_failure_in_the_fixed_order_names_the_decision() -> None:
    c = ctx(quantity="1000", tradable=False, market_open=False)
    decision = check(c, account(buying_power=D(10)), RiskLimits(max_position_value=D(1)))
    assert not decision.approved
    assert decision.rule is Rule.TRADABLE_SYMBOL
    assert failed(decision) == {
        Rule.TRADABLE_SYMBOL,
        Rule.MARKET_HOURS,
        Rule.BUYING_POWER,
        Rule.MAX_POSITION_VALUE,
    }
    assert "not tradable" in decision.message
    later = check(replace(c, tradable=True), account(buying_power=D(10)), NO_LIMITS)
    assert later.rule is Rule.MARKET_HOURS


def test_buying_power_must_cover_the_estimated_cost() -> None:
    decision = check(ctx(), account(buying_power=D("1019.99")), NO_LIMITS)
    assert decision.rule is Rule.BUYING_POWER
    assert decision.cost == D("1020.00")
    assert check(ctx(), account(buying_power=D(1020)), NO_LIMITS).approved
    with_fee = ctx(commission=Commission(minimum=D(1)))
    assert check(with_fee, account(buying_power=D(1020)), NO_LIMITS).rule is Rule.BUYING_POWER


def test_sells_need_no_buying_power() -> None:
    held = account(buying_power=D(0), positions={"AAPL": Holding(D(10), D(1000))})
    decision = check(ctx(SELL), held, NO_LIMITS)
    assert decision.approved
    assert decision.cost == 0
    assert Rule.BUYING_POWER not in {c.rule for c in decision.checks}


def test_market_hours_and_the_queue_policy() -> None:
    closed = ctx(market_open=False)
    assert check(closed, account(), NO_LIMITS).rule is Rule.MARKET_HOURS
    assert check(replace(closed, queue_when_closed=True), account(), NO_LIMITS).approved
    gtc = ctx(market_open=False, queue_when_closed=True, time_in_force=TimeInForce.GTC)
    assert check(gtc, account(), NO_LIMITS).approved
    ioc = ctx(market_open=False, queue_when_closed=True, time_in_force=TimeInForce.IOC)
    assert check(ioc, account(), NO_LIMITS).rule is Rule.MARKET_HOURS


def test_extended_hours_orders_need_the_limit_that_allows_them() -> None:
    extended = ctx(market_open=False, type=OrderType.LIMIT, limit_price=D(100), extended_hours=True)
    denied = check(extended, account(), NO_LIMITS)
    assert denied.rule is Rule.EXTENDED_HOURS
    assert Rule.MARKET_HOURS in failed(denied)
    assert check(extended, account(), RiskLimits(allow_extended_hours=True)).approved
    # Open market: the flag alone would let the order trade after the close.
    assert check(replace(extended, market_open=True), account(), NO_LIMITS).rule is (
        Rule.EXTENDED_HOURS
    )


@pytest.mark.parametrize(
    ("quantity", "held", "open_sells", "allow_short", "approved"),
    [
        ("6", "10", "4", False, True),
        ("7", "10", "4", False, False),
        ("1", "0", "0", False, False),
        ("5", "-5", "0", False, False),  # adding to a short
        ("7", "10", "4", True, True),
    ],
)
def test_selling_more_than_is_held_and_not_already_being_sold_is_a_short(
    quantity: str, held: str, open_sells: str, allow_short: bool, approved: bool
) -> None:
    snapshot = account(
        positions={"AAPL": Holding(D(held), D(held) * 100)},
        open_sell_quantity={"AAPL": D(open_sells)},
    )
    decision = check(ctx(SELL, quantity), snapshot, RiskLimits(allow_short=allow_short))
    assert decision.approved is approved
    if not approved:
        assert decision.rule is Rule.SHORT_SELLING


def test_a_notional_sell_is_measured_in_shares_at_the_quote() -> None:
    snapshot = account(positions={"AAPL": Holding(D(10), D(1000))})
    fits = ctx(SELL, None, notional=D(1000))
    assert check(fits, snapshot, NO_LIMITS).approved
    too_much = ctx(SELL, None, notional=D("1000.01"))
    assert check(too_much, snapshot, NO_LIMITS).rule is Rule.SHORT_SELLING


@pytest.mark.parametrize(
    ("equity", "day_trades", "closes_day_trade", "approved"),
    [
        ("24999.99", 3, True, False),
        ("24999.99", 2, True, True),
        ("25000", 3, True, True),
        ("24999.99", 3, False, True),
    ],
)
def test_pattern_day_trader_rule(
    equity: str, day_trades: int, closes_day_trade: bool, approved: bool
) -> None:
    snapshot = account(
        equity=D(equity),
        day_trades_last_5_sessions=day_trades,
        positions={"AAPL": Holding(D(10), D(1000))},
    )
    decision = check(ctx(SELL, closes_day_trade=closes_day_trade), snapshot, NO_LIMITS)
    assert decision.approved is approved
    if not approved:
        assert decision.rule is Rule.PATTERN_DAY_TRADER


def test_max_daily_trades_counts_this_order() -> None:
    limits = RiskLimits(max_daily_trades=5)
    assert check(ctx(), account(trades_today=4), limits).approved
    assert check(ctx(), account(trades_today=5), limits).rule is Rule.MAX_DAILY_TRADES
    assert check(ctx(), account(), RiskLimits(max_daily_trades=0)).rule is Rule.MAX_DAILY_TRADES


def test_max_position_value_counts_the_position_and_open_buys() -> None:
    snapshot = account(
        positions={"AAPL": Holding(D(10), D(1000))}, open_buy_quantity={"AAPL": D(3)}
    )
    # 10 held + 3 pending + 10 ordered = 23 shares at 100.
    assert check(ctx(), snapshot, RiskLimits(max_position_value=D(2300))).approved
    denied = check(ctx(), snapshot, RiskLimits(max_position_value=D(2299)))
    assert denied.rule is Rule.MAX_POSITION_VALUE
    assert "2,300.00" in denied.message


def test_an_order_that_shrinks_a_position_over_its_limit_passes() -> None:
    snapshot = account(positions={"AAPL": Holding(D(100), D(10_000))})
    limits = RiskLimits(max_position_value=D(1000), max_position_percent=D(1))
    assert check(ctx(SELL, "10"), snapshot, limits).approved
    # Selling through zero into a larger short does not shrink it.
    flipped = check(ctx(SELL, "250"), snapshot, replace(limits, allow_short=True))
    assert flipped.rule is Rule.MAX_POSITION_VALUE


def test_max_position_percent_is_of_equity() -> None:
    snapshot = account(equity=D(10_000))
    assert check(ctx(), snapshot, RiskLimits(max_position_percent=D(10))).approved
    decision = check(ctx(quantity="11"), snapshot, RiskLimits(max_position_percent=D(10)))
    assert decision.rule is Rule.MAX_POSITION_PERCENT
    broke = account(equity=D(0))
    assert check(ctx(), broke, RiskLimits(max_position_percent=D(10))).rule is (
        Rule.MAX_POSITION_PERCENT
    )


def test_max_sector_percent_adds_the_sectors_other_holdings() -> None:
    snapshot = account(
        equity=D(10_000),
        positions={
            "MSFT": Holding(D(10), D(2000)),
            "NVDA": Holding(D(-5), D(-500)),  # a short is exposure too
            "XOM": Holding(D(50), D(5000)),
        },
        sectors={"MSFT": "Technology", "NVDA": "Technology", "XOM": "Energy"},
    )
    # 2000 + 500 + 1000 = 35% of equity.
    assert check(ctx(), snapshot, RiskLimits(max_sector_percent=D(35))).approved
    denied = check(ctx(), snapshot, RiskLimits(max_sector_percent=D(34)))
    assert denied.rule is Rule.MAX_SECTOR_PERCENT
    assert "35.00%" in denied.message
    unknown = check(ctx(sector=None), snapshot, RiskLimits(max_sector_percent=D(1)))
    assert unknown.approved


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_position_value": D(0)},
        {"max_position_percent": D(0)},
        {"max_position_percent": D(101)},
        {"max_sector_percent": D(-1)},
        {"max_daily_trades": -1},
        {"stop_loss_percent": D(100)},
        {"stop_loss_percent": D(0)},
    ],
)
def test_absurd_limits_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        RiskLimits(**kwargs)  # type: ignore[arg-type]


def test_protective_stop_for_a_long_sits_below_the_fill_on_whole_shares() -> None:
    request = OrderRequest(symbol="AAPL", side=BUY, quantity=D("10.5"))
    stop = protective_stop(request, D("10.5"), D("33.33"), RiskLimits(stop_loss_percent=D(5)))
    assert stop is not None
    assert (stop.side, stop.type, stop.time_in_force) == (SELL, OrderType.STOP, TimeInForce.GTC)
    assert stop.quantity == 10
    assert stop.stop_price == D("31.66")  # 31.6635 rounded away from the fill


def test_protective_stop_for_a_short_sits_above_the_fill() -> None:
    request = OrderRequest(symbol="AAPL", side=SELL, quantity=D(4))
    stop = protective_stop(request, D(4), D("33.33"), RiskLimits(stop_loss_percent=D(5)))
    assert stop is not None
    assert (stop.side, stop.quantity, stop.stop_price) == (BUY, D(4), D("35.00"))


def test_no_protective_stop_without_a_limit_a_whole_share_or_when_the_order_has_one() -> None:
    limits = RiskLimits(stop_loss_percent=D(5))
    plain = OrderRequest(symbol="AAPL", side=BUY, quantity=D(1))
    assert protective_stop(plain, D(1), D(10), RiskLimits()) is None
    assert protective_stop(plain, D("0.9"), D(10), limits) is None
    bracket = replace(plain, stop_loss_price=D(9))
    assert protective_stop(bracket, D(1), D(10), limits) is None


# ---------------------------------------------------------------- agents

AGENT_LIMITS = AgentLimits(allocation_percent=D(10))


def agent(**kwargs: object) -> AgentSnapshot:
    defaults: dict[str, object] = {
        "equity": D(100_000),
        "positions": {"MSFT": AgentHolding(D(10), D(4000)), "TSLA": AgentHolding(D(-5), D(-2000))},
        "reserved": D(1000),
    }
    defaults.update(kwargs)
    return AgentSnapshot(**defaults)  # type: ignore[arg-type]


def test_agent_allocation_is_a_share_of_equity_used_by_positions_and_reservations() -> None:
    allocation = agent_allocation(agent(), AGENT_LIMITS)
    assert allocation == Allocation(amount=D(10_000), used=D(7000))
    assert allocation.available == D(3000)


def test_an_agent_buy_beyond_its_allocation_fails() -> None:
    assert check_agent(ctx(quantity="29"), agent(), AGENT_LIMITS).approved  # 2958
    decision = check_agent(ctx(quantity="30"), agent(), AGENT_LIMITS)  # 3060
    assert decision.rule is Rule.AGENT_ALLOCATION
    assert decision.cost == D(3060)
    assert check_agent(ctx(SELL, "1000"), agent(), AGENT_LIMITS).approved


def test_agent_daily_trades_and_position_value() -> None:
    limits = replace(AGENT_LIMITS, max_daily_trades=2, max_position_value=D(500))
    decision = check_agent(ctx(quantity="10"), agent(trades_today=2), limits)
    assert decision.rule is Rule.AGENT_MAX_DAILY_TRADES
    assert failed(decision) == {Rule.AGENT_MAX_DAILY_TRADES, Rule.AGENT_MAX_POSITION_VALUE}
    assert check_agent(ctx(quantity="5"), agent(), limits).approved
    pending = agent(open_buy_quantity={"AAPL": D(1)})
    assert check_agent(ctx(quantity="5"), pending, limits).rule is Rule.AGENT_MAX_POSITION_VALUE
    # Selling its own MSFT down is always allowed.
    assert check_agent(ctx(SELL, "5", symbol="MSFT"), agent(), limits).approved


def test_shrink_keeps_whole_shares_whole() -> None:
    shrunk = shrink_to_allocation(ctx(quantity="30"), agent(), AGENT_LIMITS)
    assert shrunk is not None and shrunk.quantity == 29


def test_shrink_uses_fractions_when_the_order_did() -> None:
    shrunk = shrink_to_allocation(ctx(quantity="30.5"), agent(), AGENT_LIMITS)
    assert shrunk is not None and shrunk.quantity == D("29.411764705")


def test_shrink_cuts_a_notional_to_the_cent_including_commission() -> None:
    c = ctx(quantity=None, notional=D(5000), commission=Commission(minimum=D(1)))
    shrunk = shrink_to_allocation(c, agent(), AGENT_LIMITS)
    assert shrunk is not None and shrunk.notional == D(2999)


def test_shrink_leaves_fitting_orders_and_sells_alone_and_gives_up_when_nothing_fits() -> None:
    fitting = ctx(quantity="5")
    assert shrink_to_allocation(fitting, agent(), AGENT_LIMITS) is fitting.request
    selling = ctx(SELL, "500")
    assert shrink_to_allocation(selling, agent(), AGENT_LIMITS) is selling.request
    assert shrink_to_allocation(ctx(price="5000"), agent(), AGENT_LIMITS) is None


@given(
    available=st.decimals(min_value=D(0), max_value=D(50_000), places=2),
    quantity=st.decimals(min_value=D("0.000000001"), max_value=D(10_000), places=9),
    price=st.decimals(min_value=D("0.01"), max_value=D(5000), places=2),
    limit=st.booleans(),
    fee=st.sampled_from([Commission(), Commission(D("0.005"), D(1))]),
)
def test_shrink_finds_the_largest_size_that_fits(
    available: Decimal, quantity: Decimal, price: Decimal, limit: bool, fee: Commission
) -> None:
    extra: dict[str, Any] = {"type": OrderType.LIMIT, "limit_price": price} if limit else {}
    c = ctx(quantity=str(quantity), price=str(price), commission=fee, **extra)
    snapshot = AgentSnapshot(equity=available, positions={})
    shrunk = shrink_to_allocation(c, snapshot, AgentLimits(allocation_percent=D(100)))
    whole = quantity == quantity.to_integral_value()
    step = D(1) if whole else D("1e-9")
    if shrunk is None:
        assert estimate_cost(replace(c.request, quantity=step), price, fee) > available
        return
    assert shrunk.quantity is not None and shrunk.quantity <= quantity
    assert estimate_cost(shrunk, price, fee) <= available
    if shrunk.quantity < quantity:
        bigger = replace(shrunk, quantity=shrunk.quantity + step)
        assert estimate_cost(bigger, price, fee) > available


def test_notional_buy_at_the_limit_passes_max_position_value() -> None:
    # $5,000 / price * price can exceed $5,000 in the 28th digit for many prices.
    for cents in range(10_000, 20_000, 7):
        price = Decimal(cents) / 100
        ctx = OrderContext(
            request=OrderRequest("AAPL", OrderSide.BUY, notional=Decimal("5000")),
            reference_price=price,
            tradable=True,
            market_open=True,
        )
        decision = check(
            ctx,
            AccountSnapshot(buying_power=Decimal(100_000), equity=Decimal(100_000)),
            RiskLimits(max_position_value=Decimal(5000)),
        )
        assert decision.approved, (price, decision.message)
