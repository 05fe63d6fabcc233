from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from domain.market.models import Quote
from domain.trading.matching import (
    MatchResult,
    PaperConfig,
    RestingOrder,
    bracket_children,
    day_order_expired,
    match,
)
from domain.trading.orders import validate_order
from domain.trading.types import OrderRequest, OrderSide, OrderType, TimeInForce

D = Decimal
BUY, SELL = OrderSide.BUY, OrderSide.SELL
NOW = datetime(2025, 11, 25, 15, 0, tzinfo=UTC)  # a Tuesday, 10:00 in New York
CONFIG = PaperConfig()


def quote(last: str = "100", bid: str | None = "99.90", ask: str | None = "100.10") -> Quote:
    return Quote(
        symbol="AAPL",
        bid=None if bid is None else D(bid),
        ask=None if ask is None else D(ask),
        last=D(last),
        volume=D(1000),
        timestamp=NOW,
    )


def order(**kwargs: object) -> RestingOrder:
    fields: dict[str, object] = {"symbol": "AAPL", "side": BUY, "quantity": D(10)}
    resting = {k: kwargs.pop(k) for k in ("water_mark", "triggered") if k in kwargs}
    fields.update(kwargs)
    return RestingOrder(OrderRequest(**fields), **resting)  # type: ignore[arg-type]


def run(
    o: RestingOrder, q: Quote, *, market_open: bool = True, config: PaperConfig = CONFIG
) -> MatchResult | None:
    return match(o, q, config=config, market_open=market_open)


def filled_at(result: MatchResult | None) -> Decimal:
    assert result is not None and result.fill is not None, result
    return result.fill.price


def test_market_buy_pays_the_ask_plus_slippage_rounded_up_to_the_cent() -> None:
    result = run(order(), quote())
    assert result is not None and result.fill is not None
    assert result.fill.price == D("100.16")  # 100.10 x 1.0005 = 100.15005
    assert result.fill.quantity == 10
    assert result.fill.commission == 0
    assert result.fill.executed_at == NOW
    assert result.cancel_reason is None


def test_market_sell_gets_the_bid_minus_slippage_rounded_down() -> None:
    assert filled_at(run(order(side=SELL), quote())) == D("99.85")  # 99.90 x 0.9995


def test_without_bid_and_ask_the_last_trade_stands_in() -> None:
    assert filled_at(run(order(), quote(bid=None, ask=None))) == D("100.05")
    assert filled_at(run(order(side=SELL), quote(bid=None, ask=None))) == D("99.95")


def test_no_slippage_fills_at_the_touch_and_commission_follows_the_config() -> None:
    config = PaperConfig(slippage_bps=D(0), commission_per_share=D("0.01"), min_commission=D(1))
    result = run(order(quantity=D(500)), quote(), config=config)
    assert result is not None and result.fill is not None
    assert result.fill.price == D("100.10")
    assert result.fill.commission == D(5)
    result = run(order(quantity=D(5)), quote(), config=config)
    assert result is not None and result.fill is not None
    assert result.fill.commission == D(1)


def test_sub_dollar_prices_round_to_hundredths_of_a_cent() -> None:
    assert filled_at(run(order(), quote("0.5", "0.4999", "0.5001"))) == D("0.5004")


@pytest.mark.parametrize(
    ("side", "limit", "expected"),
    [
        (BUY, "100.10", D("100.10")),
        (BUY, "105", D("100.10")),
        (BUY, "100.09", None),
        (SELL, "99.90", D("99.90")),
        (SELL, "95", D("99.90")),
        (SELL, "99.91", None),
    ],
)
def test_limit_orders_fill_at_the_touch_only_when_it_reaches_the_limit(
    side: OrderSide, limit: str, expected: Decimal | None
) -> None:
    result = run(order(side=side, type=OrderType.LIMIT, limit_price=D(limit)), quote())
    if expected is None:
        assert result is None
    else:
        assert filled_at(result) == expected


def test_buy_stop_triggers_on_the_ask_or_last_then_fills_like_a_market_order() -> None:
    stop = order(type=OrderType.STOP, stop_price=D(105))
    assert run(stop, quote("104", "103.90", "104.50")) is None
    result = run(stop, quote("104.80", "104.90", "105.00"))
    assert result is not None and result.triggered
    assert filled_at(result) == D("105.06")
    assert filled_at(run(stop, quote("105", None, None))) == D("105.06")


def test_sell_stop_triggers_on_the_bid_or_last() -> None:
    stop = order(side=SELL, type=OrderType.STOP, stop_price=D(95))
    assert run(stop, quote("96", "95.50", "96.10")) is None
    assert filled_at(run(stop, quote("95.20", "95.00", "95.30"))) == D("94.95")


def test_a_triggered_stop_limit_rests_as_a_limit_until_it_can_fill() -> None:
    stop_limit = order(type=OrderType.STOP_LIMIT, stop_price=D(105), limit_price=D("105.50"))
    result = run(stop_limit, quote("106", "105.90", "106.10"))
    assert result == MatchResult(fill=None, triggered=True)
    # The price falls back below the stop: the order stays triggered and fills as a limit.
    triggered = order(
        type=OrderType.STOP_LIMIT, stop_price=D(105), limit_price=D("105.50"), triggered=True
    )
    assert filled_at(run(triggered, quote("104", "103.90", "104.10"))) == D("104.10")
    # Not yet triggered, the same quote does nothing.
    assert run(stop_limit, quote("104", "103.90", "104.10")) is None


def test_sell_trailing_stop_follows_the_high_water_mark() -> None:
    trailing = {"side": SELL, "type": OrderType.TRAILING_STOP, "trail_percent": D(5)}
    first = run(order(**trailing), quote("100"))
    assert first == MatchResult(water_mark=D(100))
    risen = run(order(**trailing, water_mark=D(100)), quote("110", "109.90", "110.10"))
    assert risen == MatchResult(water_mark=D(110))
    # 110 x 0.95 = 104.50: a dip to 105 does not fire, and the mark does not fall.
    assert run(order(**trailing, water_mark=D(110)), quote("105", "104.90", "105.10")) is None
    fired = run(order(**trailing, water_mark=D(110)), quote("104.40", "104.30", "104.50"))
    assert fired is not None and fired.water_mark == D(110)
    assert filled_at(fired) == D("104.24")


def test_buy_trailing_stop_follows_the_low_water_mark() -> None:
    trailing = {"type": OrderType.TRAILING_STOP, "trail_percent": D(10)}
    fallen = run(order(**trailing, water_mark=D(100)), quote("80", "79.90", "80.10"))
    assert fallen == MatchResult(water_mark=D(80))
    fired = run(order(**trailing, water_mark=D(80)), quote("88", "87.90", "88.10"))
    assert fired is not None and fired.water_mark == D(80)
    assert filled_at(fired) == D("88.15")


def test_notional_orders_buy_what_the_notional_affords_rounded_down() -> None:
    result = run(order(quantity=None, notional=D(1000)), quote(ask="300"))
    assert result is not None and result.fill is not None
    assert result.fill.price == D("300.15")
    assert result.fill.quantity == D("3.331667499")  # 1000 / 300.15 = 3.33166749958...
    assert result.fill.quantity * result.fill.price <= 1000


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
def test_immediate_orders_fill_fully_now_or_are_canceled(tif: TimeInForce) -> None:
    limit = {"type": OrderType.LIMIT, "time_in_force": tif}
    assert filled_at(run(order(**limit, limit_price=D(101)), quote())) == D("100.10")
    result = run(order(**limit, limit_price=D(99)), quote())
    assert result is not None and result.fill is None
    assert result.cancel_reason


def test_nothing_fills_while_the_market_is_closed() -> None:
    assert run(order(), quote(), market_open=False) is None
    assert run(order(type=OrderType.LIMIT, limit_price=D(200)), quote(), market_open=False) is None
    stop = order(side=SELL, type=OrderType.STOP, stop_price=D(200))
    assert run(stop, quote(), market_open=False) is None
    trailing = order(side=SELL, type=OrderType.TRAILING_STOP, trail_percent=D(1), water_mark=D(90))
    assert run(trailing, quote(), market_open=False) is None
    result = run(order(time_in_force=TimeInForce.IOC), quote(), market_open=False)
    assert result is not None and result.fill is None and result.cancel_reason


def test_extended_hours_limit_orders_fill_while_the_market_is_closed() -> None:
    extended = order(type=OrderType.LIMIT, limit_price=D(101), extended_hours=True)
    assert filled_at(run(extended, quote(), market_open=False)) == D("100.10")


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("submitted", "alive", "expired"),
    [
        # Tuesday 10:00 ET: over at 16:00 ET (21:00 UTC) the same day.
        (utc(11, 25, 15), utc(11, 25, 20, 59), utc(11, 25, 21)),
        # Before the open: today's session.
        (utc(11, 25, 12), utc(11, 25, 20, 59), utc(11, 25, 21)),
        # After the close: the next session's.
        (utc(11, 25, 22), utc(11, 26, 20, 59), utc(11, 26, 21)),
        # Thanksgiving: the Friday after, which closes early at 13:00 ET.
        (utc(11, 27, 16), utc(11, 28, 17, 59), utc(11, 28, 18)),
        # Saturday: Monday's session.
        (utc(11, 29, 16), utc(12, 1, 20, 59), utc(12, 1, 21)),
    ],
)
def test_day_orders_expire_at_the_close_of_their_session(
    submitted: datetime, alive: datetime, expired: datetime
) -> None:
    assert not day_order_expired(submitted, alive)
    assert day_order_expired(submitted, expired)


@pytest.mark.parametrize(
    ("submitted", "alive", "expired"),
    [
        # In the session: until 20:00 ET (01:00 UTC next day).
        (utc(11, 25, 15), utc(11, 26, 0, 59), utc(11, 26, 1)),
        # In after-hours (17:00 ET): the same evening.
        (utc(11, 25, 22), utc(11, 26, 0, 59), utc(11, 26, 1)),
        # After 20:00 ET: the next day's extended session.
        (utc(11, 26, 2), utc(11, 27, 0, 59), utc(11, 27, 1)),
        # Early close at 13:00 ET: after-hours end at 17:00 ET.
        (utc(11, 28, 15), utc(11, 28, 21, 59), utc(11, 28, 22)),
    ],
)
def test_extended_hours_day_orders_live_until_the_end_of_after_hours(
    submitted: datetime, alive: datetime, expired: datetime
) -> None:
    assert not day_order_expired(submitted, alive, extended_hours=True)
    assert day_order_expired(submitted, expired, extended_hours=True)


def test_bracket_children_of_a_buy_are_a_take_profit_limit_and_a_stop_loss() -> None:
    agent = uuid.uuid4()
    parent = OrderRequest(
        symbol="AAPL",
        side=BUY,
        type=OrderType.LIMIT,
        time_in_force=TimeInForce.GTC,
        quantity=D(7),
        limit_price=D(100),
        take_profit_price=D(120),
        stop_loss_price=D(90),
        client_order_id="parent",
        agent_id=agent,
    )
    take_profit, stop_loss = bracket_children(parent)
    assert (take_profit.side, take_profit.type, take_profit.limit_price) == (
        SELL,
        OrderType.LIMIT,
        D(120),
    )
    assert (stop_loss.side, stop_loss.type, stop_loss.stop_price) == (SELL, OrderType.STOP, D(90))
    for child in (take_profit, stop_loss):
        assert child.quantity == 7
        assert child.time_in_force is TimeInForce.GTC
        assert child.agent_id == agent
        assert child.client_order_id is None
        assert child.take_profit_price is None and child.stop_loss_price is None
        assert validate_order(child, D(100)) == []


def test_bracket_children_of_a_short_entry_buy_to_cover() -> None:
    parent = OrderRequest(
        symbol="AAPL", side=SELL, quantity=D(3), take_profit_price=D(80), stop_loss_price=D(110)
    )
    children = bracket_children(parent)
    assert [(c.side, c.type) for c in children] == [
        (BUY, OrderType.LIMIT),
        (BUY, OrderType.STOP),
    ]
    assert all(validate_order(c, D(100)) == [] for c in children)


def test_one_legged_and_legless_brackets() -> None:
    plain = OrderRequest(symbol="AAPL", side=BUY, quantity=D(1))
    assert bracket_children(plain) == []
    (only,) = bracket_children(
        OrderRequest(symbol="AAPL", side=BUY, quantity=D(1), stop_loss_price=D(5))
    )
    assert only.type is OrderType.STOP
