"""The Alpaca broker, driving the real alpaca-py SDK against the local fake server."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from domain.brokers.alpaca import AlpacaBroker
from domain.brokers.base import (
    Broker,
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
    TradeEvent,
    TradeEventKind,
)
from domain.trading.types import OrderRequest, OrderSide, OrderStatus, OrderType, TimeInForce
from tests.fakes.alpaca_server import FakeAccount, FakeAlpaca, running_fake_alpaca

KEY = "PKTESTKEY0000000001"
SECRET = "s3cr3t-Zq8RwX3vN5tY7uI9oP1aS2dF4gH6jK8lM0"
OTHER_KEY = "PKTESTKEY0000000002"
OTHER_SECRET = "0th3r-Lk2Jh4Gf6Ds8Aq0Wz1Xc3Vb5Nm7Qw9Er1Ty"
WAIT = 10.0


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with running_fake_alpaca() as server:
        server.add_account(
            KEY,
            SECRET,
            cash=Decimal("25000.50"),
            equity=Decimal("31000.75"),
            buying_power=Decimal("50001"),
            account_number="PA0000000042",
            pattern_day_trader=True,
        )
        server.add_account(OTHER_KEY, OTHER_SECRET)
        yield server


def alpaca(
    fake: FakeAlpaca, key: str = KEY, secret: str = SECRET, *, timeout: float = 5.0
) -> AlpacaBroker:
    return AlpacaBroker(
        key,
        secret,
        paper=True,
        base_url=fake.rest_url,
        timeout=timeout,
        reconnect_delay=0.05,
        max_reconnect_delay=0.2,
    )


@pytest.fixture
def broker(fake: FakeAlpaca) -> AlpacaBroker:
    return alpaca(fake)


@pytest.fixture
def account(fake: FakeAlpaca) -> FakeAccount:
    return fake.accounts[KEY]


def buy(quantity: str = "10", **fields: Any) -> OrderRequest:
    return OrderRequest(symbol="AAPL", side=OrderSide.BUY, quantity=Decimal(quantity), **fields)


@asynccontextmanager
async def collecting(
    fake: FakeAlpaca, broker: AlpacaBroker, key: str = KEY
) -> AsyncIterator[asyncio.Queue[TradeEvent]]:
    """Pump the broker's trade events into a queue, once its stream is listening."""
    queue: asyncio.Queue[TradeEvent] = asyncio.Queue()
    events = broker.trade_events()

    async def pump() -> None:
        async for event in events:
            await queue.put(event)

    task = asyncio.create_task(pump())
    try:
        await fake.wait_for(lambda: fake.listeners(key) == 1)
        yield queue
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def next_event(queue: asyncio.Queue[TradeEvent], kind: TradeEventKind) -> TradeEvent:
    """The next event of this kind (the fake also announces every accepted order)."""
    while True:
        event = await asyncio.wait_for(queue.get(), WAIT)
        if event.kind is kind:
            return event


def test_implements_the_broker_protocol(broker: AlpacaBroker) -> None:
    as_broker: Broker = broker
    assert as_broker.kind == "ALPACA"


# --- account ------------------------------------------------------------------------


async def test_account_maps(broker: AlpacaBroker) -> None:
    account = await broker.account()
    assert account.account_number == "PA0000000042"
    assert account.cash == Decimal("25000.5")
    assert account.equity == Decimal("31000.75")
    assert account.buying_power == Decimal("50001")
    assert account.currency == "USD"
    assert account.pattern_day_trader is True
    assert account.trading_blocked is False


async def test_positions_map(broker: AlpacaBroker, account: FakeAccount) -> None:
    account.set_position("AAPL", Decimal("12.5"), Decimal("180.25"), Decimal("190"))
    account.set_position("TSLA", Decimal("-3"), Decimal("250"), Decimal("240"))

    positions = {p.symbol: p for p in await broker.positions()}

    assert positions["AAPL"].quantity == Decimal("12.5")
    assert positions["AAPL"].average_cost == Decimal("180.25")
    assert positions["AAPL"].market_value == Decimal("2375")
    assert positions["TSLA"].quantity == Decimal("-3")
    assert positions["TSLA"].average_cost == Decimal("250")
    assert positions["TSLA"].market_value == Decimal("-720")


# --- placing orders -----------------------------------------------------------------


ROUND_TRIPS: list[tuple[OrderRequest, dict[str, Any]]] = [
    (
        buy(),
        {"type": "market", "time_in_force": "day", "qty": 10, "side": "buy"},
    ),
    (
        OrderRequest(symbol="MSFT", side=OrderSide.SELL, notional=Decimal("1500.25")),
        {"type": "market", "time_in_force": "day", "notional": 1500.25, "side": "sell"},
    ),
    (
        buy("0.5"),
        {"type": "market", "time_in_force": "day", "qty": 0.5},
    ),
    (
        buy(
            type=OrderType.LIMIT,
            time_in_force=TimeInForce.GTC,
            limit_price=Decimal("189.5"),
            extended_hours=True,
        ),
        {"type": "limit", "time_in_force": "gtc", "limit_price": 189.5, "extended_hours": True},
    ),
    (
        buy(type=OrderType.LIMIT, time_in_force=TimeInForce.IOC, limit_price=Decimal("0.1234")),
        {"type": "limit", "time_in_force": "ioc", "limit_price": 0.1234},
    ),
    (
        buy(type=OrderType.STOP, time_in_force=TimeInForce.FOK, stop_price=Decimal("200")),
        {"type": "stop", "time_in_force": "fok", "stop_price": 200.0},
    ),
    (
        buy(type=OrderType.STOP_LIMIT, stop_price=Decimal("200"), limit_price=Decimal("201.5")),
        {"type": "stop_limit", "stop_price": 200.0, "limit_price": 201.5},
    ),
    (
        OrderRequest(
            symbol="AAPL",
            side=OrderSide.SELL,
            quantity=Decimal("5"),
            type=OrderType.TRAILING_STOP,
            time_in_force=TimeInForce.GTC,
            trail_percent=Decimal("2.5"),
        ),
        {"type": "trailing_stop", "time_in_force": "gtc", "trail_percent": 2.5},
    ),
    (
        buy(
            type=OrderType.LIMIT,
            limit_price=Decimal("190"),
            take_profit_price=Decimal("200"),
            stop_loss_price=Decimal("180"),
        ),
        {
            "type": "limit",
            "limit_price": 190.0,
            "order_class": "bracket",
            "take_profit": {"limit_price": 200.0},
            "stop_loss": {"stop_price": 180.0},
        },
    ),
    (
        OrderRequest(
            symbol="AAPL",
            side=OrderSide.SELL,
            quantity=Decimal("3"),
            stop_loss_price=Decimal("205"),
        ),
        {"type": "market", "order_class": "oto", "stop_loss": {"stop_price": 205.0}},
    ),
]


@pytest.mark.parametrize(("request_", "sent"), ROUND_TRIPS)
async def test_each_order_type_maps_and_round_trips(
    broker: AlpacaBroker, account: FakeAccount, request_: OrderRequest, sent: dict[str, Any]
) -> None:
    order = await broker.submit(request_, "kx-order-1")

    [body] = account.submitted
    assert body["symbol"] == request_.symbol
    assert body["client_order_id"] == "kx-order-1"
    for name, value in sent.items():
        assert body[name] == value, name
    unset = {"limit_price", "stop_price", "trail_percent", "take_profit", "stop_loss"} - set(sent)
    assert not unset & set(body)

    assert order.client_order_id == "kx-order-1"
    assert order.symbol == request_.symbol
    assert order.side is request_.side
    assert order.status is OrderStatus.ACCEPTED
    assert order.quantity == request_.quantity
    assert order.notional == request_.notional
    assert order.filled_quantity == 0
    assert order.average_fill_price is None
    assert isinstance(order.submitted_at, datetime)

    found = await broker.order_by_client_id("kx-order-1")
    assert found is not None
    assert found.broker_order_id == order.broker_order_id
    assert account.orders[order.broker_order_id]["client_order_id"] == "kx-order-1"


REFUSED_BEFORE_SENDING: list[tuple[OrderRequest, str]] = [
    (
        OrderRequest(
            symbol="AAPL",
            side=OrderSide.BUY,
            notional=Decimal("100"),
            time_in_force=TimeInForce.GTC,
        ),
        "notional orders must be DAY",
    ),
    (buy("0.5", time_in_force=TimeInForce.GTC), "fractional-share orders must be DAY"),
    (
        buy(
            type=OrderType.TRAILING_STOP,
            trail_percent=Decimal("1"),
            take_profit_price=Decimal("200"),
            stop_loss_price=Decimal("180"),
        ),
        "a trailing stop cannot have take-profit or stop-loss legs",
    ),
    (OrderRequest(symbol="AAPL", side=OrderSide.BUY), "exactly one of quantity or notional"),
    (
        OrderRequest(
            symbol="AAPL", side=OrderSide.BUY, quantity=Decimal("1"), notional=Decimal("10")
        ),
        "exactly one of quantity or notional",
    ),
    (buy("-1"), "must be positive"),
    (buy(type=OrderType.LIMIT), "a LIMIT order needs limit_price"),
    (buy(limit_price=Decimal("10")), "limit_price does not apply to a MARKET order"),
    (buy(type=OrderType.LIMIT, limit_price=Decimal("10.001")), "not a valid price"),
    (buy(type=OrderType.STOP, stop_price=Decimal("0")), "not a valid price"),
    (buy(extended_hours=True), "extended-hours orders must be LIMIT orders"),
    (
        buy(
            type=OrderType.LIMIT,
            limit_price=Decimal("10"),
            time_in_force=TimeInForce.IOC,
            extended_hours=True,
        ),
        "extended-hours orders must be DAY or GTC",
    ),
    (
        buy(
            take_profit_price=Decimal("200"),
            stop_loss_price=Decimal("180"),
            time_in_force=TimeInForce.IOC,
        ),
        "must be DAY or GTC",
    ),
    (
        buy(take_profit_price=Decimal("180"), stop_loss_price=Decimal("200")),
        "stop_loss_price must be below take_profit_price",
    ),
    (
        buy(type=OrderType.LIMIT, limit_price=Decimal("190"), take_profit_price=Decimal("185")),
        "the entry price must be below take_profit_price",
    ),
    (
        OrderRequest(
            symbol="AAPL",
            side=OrderSide.SELL,
            quantity=Decimal("1"),
            type=OrderType.LIMIT,
            limit_price=Decimal("190"),
            stop_loss_price=Decimal("185"),
        ),
        "the entry price must be below stop_loss_price",
    ),
    (
        buy(
            type=OrderType.TRAILING_STOP, time_in_force=TimeInForce.IOC, trail_percent=Decimal("1")
        ),
        "trailing stops must be DAY or GTC",
    ),
]


@pytest.mark.parametrize(("request_", "reason"), REFUSED_BEFORE_SENDING)
async def test_orders_alpaca_would_refuse_are_rejected_before_sending(
    broker: AlpacaBroker, account: FakeAccount, request_: OrderRequest, reason: str
) -> None:
    with pytest.raises(BrokerRejected, match=reason):
        await broker.submit(request_, "kx-refused")
    assert account.submitted == []


async def test_client_order_id_must_fit_alpaca(broker: AlpacaBroker, account: FakeAccount) -> None:
    with pytest.raises(BrokerRejected, match="1 to 128 characters"):
        await broker.submit(buy(), "x" * 129)
    assert account.submitted == []


@pytest.mark.parametrize(
    ("status", "message"),
    [(422, "qty must be > 0 for this asset"), (403, "insufficient buying power")],
)
async def test_a_rejected_order_carries_alpacas_reason(
    broker: AlpacaBroker, account: FakeAccount, status: int, message: str
) -> None:
    account.reject_next(message, status=status)
    with pytest.raises(BrokerRejected) as rejected:
        await broker.submit(buy(), "kx-rejected")
    assert str(rejected.value) == message
    assert not rejected.value.retryable
    assert account.orders == {}


async def test_a_submit_that_timed_out_after_alpaca_accepted_it_is_not_sent_again(
    fake: FakeAlpaca, account: FakeAccount
) -> None:
    broker = alpaca(fake, timeout=0.5)
    account.delay_next_submit(2.0)

    order = await broker.submit(buy(), "kx-slow")

    assert len(account.submitted) == 1
    [stored] = account.orders.values()
    assert order.broker_order_id == stored["id"]
    assert order.client_order_id == "kx-slow"
    assert any(r.startswith("GET /v2/orders:by_client_order_id") for r in fake.requests)


async def test_a_submit_alpaca_never_took_is_sent_once_more(
    broker: AlpacaBroker, account: FakeAccount
) -> None:
    account.reject_next("service unavailable", status=503)

    order = await broker.submit(buy(), "kx-retry")

    assert len(account.submitted) == 2
    [stored] = account.orders.values()
    assert order.broker_order_id == stored["id"]


async def test_two_unanswered_submits_give_up_as_unavailable(
    broker: AlpacaBroker, account: FakeAccount
) -> None:
    account.reject_next("bad gateway", status=502)
    account.reject_next("bad gateway", status=502)
    with pytest.raises(BrokerUnavailable, match="safe") as failure:
        await broker.submit(buy(), "kx-down")
    assert failure.value.retryable
    assert len(account.submitted) == 2
    assert account.orders == {}


async def test_submitting_the_same_client_order_id_again_returns_the_first_order(
    broker: AlpacaBroker, account: FakeAccount
) -> None:
    first = await broker.submit(buy(), "kx-twice")
    second = await broker.submit(buy(), "kx-twice")

    assert second.broker_order_id == first.broker_order_id
    assert len(account.submitted) == 2
    assert len(account.orders) == 1


async def test_a_client_order_id_used_for_another_order_is_refused(
    broker: AlpacaBroker, account: FakeAccount
) -> None:
    await broker.submit(buy(), "kx-reused")
    with pytest.raises(BrokerRejected, match="already used at Alpaca by a different order"):
        await broker.submit(buy("11"), "kx-reused")
    assert len(account.orders) == 1


async def test_rate_limits_are_unavailable_not_rejected(
    broker: AlpacaBroker, account: FakeAccount
) -> None:
    account.reject_next("too many requests", status=429)
    with pytest.raises(BrokerUnavailable, match="rate limit"):
        await broker.submit(buy(), "kx-429")
    assert len(account.submitted) == 1


def unreachable() -> AlpacaBroker:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return AlpacaBroker(KEY, SECRET, paper=True, base_url=f"http://127.0.0.1:{port}")


async def test_an_unreachable_alpaca_is_unavailable() -> None:
    broker = unreachable()
    with pytest.raises(BrokerUnavailable):
        await broker.account()
    with pytest.raises(BrokerUnavailable, match="could not confirm"):
        await broker.submit(buy(), "kx-nowhere")


# --- other order operations ----------------------------------------------------------


async def test_cancel(fake: FakeAlpaca, broker: AlpacaBroker) -> None:
    order = await broker.submit(buy(), "kx-cancel")
    async with collecting(fake, broker) as events:
        await broker.cancel(order.broker_order_id)
        canceled = await next_event(events, TradeEventKind.CANCELED)
    assert canceled.order.broker_order_id == order.broker_order_id
    assert canceled.order.status is OrderStatus.CANCELED
    with pytest.raises(BrokerRejected, match="not cancelable"):
        await broker.cancel(order.broker_order_id)
    with pytest.raises(BrokerRejected, match="order not found"):
        await broker.cancel("6f1c1ee5-58a7-4c5c-9a4f-ffffffffffff")
    with pytest.raises(BrokerRejected, match="not an Alpaca order id"):
        await broker.cancel("../account")


async def test_replace(fake: FakeAlpaca, broker: AlpacaBroker, account: FakeAccount) -> None:
    order = await broker.submit(buy(type=OrderType.LIMIT, limit_price=Decimal("190")), "kx-replace")

    replacement = await broker.replace(
        order.broker_order_id, quantity=Decimal("12"), limit_price=Decimal("189.75")
    )

    assert replacement.broker_order_id != order.broker_order_id
    assert replacement.quantity == Decimal("12")
    assert replacement.status is OrderStatus.ACCEPTED
    assert account.orders[replacement.broker_order_id]["limit_price"] == "189.75"
    old = await broker.order_by_client_id("kx-replace")
    assert old is not None
    assert old.status is OrderStatus.CANCELED
    assert account.orders[order.broker_order_id]["status"] == "replaced"

    with pytest.raises(BrokerRejected, match="whole number of shares"):
        await broker.replace(replacement.broker_order_id, quantity=Decimal("1.5"))
    with pytest.raises(BrokerRejected, match="nothing to change"):
        await broker.replace(replacement.broker_order_id)


async def test_order_by_client_id_of_an_unknown_order_is_none(broker: AlpacaBroker) -> None:
    assert await broker.order_by_client_id("kx-never-placed") is None


async def test_orders_page_through_everything(fake: FakeAlpaca, account: FakeAccount) -> None:
    fake.page_size = 2
    broker = alpaca(fake)
    placed = [await broker.submit(buy(str(n)), f"kx-page-{n}") for n in range(1, 6)]
    await broker.cancel(placed[1].broker_order_id)

    everything = await broker.orders(open_only=False)
    assert [o.client_order_id for o in everything] == [f"kx-page-{n}" for n in range(1, 6)]
    assert everything[1].status is OrderStatus.CANCELED

    still_open = await broker.orders(open_only=True)
    assert [o.client_order_id for o in still_open] == [
        "kx-page-1",
        "kx-page-3",
        "kx-page-4",
        "kx-page-5",
    ]

    assert placed[2].submitted_at is not None
    later = await broker.orders(open_only=False, after=placed[2].submitted_at)
    assert [o.client_order_id for o in later] == ["kx-page-4", "kx-page-5"]


# --- the trade-updates stream ---------------------------------------------------------


async def test_partial_fill_then_fill_arrive_with_each_executions_qty_and_price(
    fake: FakeAlpaca, broker: AlpacaBroker
) -> None:
    async with collecting(fake, broker) as events:
        order = await broker.submit(buy(), "kx-fills")
        new = await next_event(events, TradeEventKind.NEW)
        assert new.order.broker_order_id == order.broker_order_id
        assert new.fill_quantity is None

        await fake.fill(KEY, order.broker_order_id, Decimal("4"), Decimal("190.10"))
        partial = await next_event(events, TradeEventKind.PARTIAL_FILL)
        await fake.fill(KEY, order.broker_order_id, Decimal("6"), Decimal("190.35"))
        fill = await next_event(events, TradeEventKind.FILL)

    assert partial.fill_quantity == Decimal("4")
    assert partial.fill_price == Decimal("190.10")
    assert partial.execution_id is not None
    assert partial.order.status is OrderStatus.PARTIALLY_FILLED
    assert partial.order.filled_quantity == Decimal("4")
    assert partial.order.client_order_id == "kx-fills"

    assert fill.fill_quantity == Decimal("6")
    assert fill.fill_price == Decimal("190.35")
    assert fill.execution_id not in (None, partial.execution_id)
    assert fill.order.status is OrderStatus.FILLED
    assert fill.order.filled_quantity == Decimal("10")
    assert fill.order.average_fill_price == Decimal("190.25")
    assert fill.at >= partial.at


@pytest.mark.parametrize(
    ("event", "kind", "status"),
    [
        ("canceled", TradeEventKind.CANCELED, OrderStatus.CANCELED),
        ("expired", TradeEventKind.EXPIRED, OrderStatus.EXPIRED),
        ("rejected", TradeEventKind.REJECTED, OrderStatus.REJECTED),
    ],
)
async def test_terminal_events(
    fake: FakeAlpaca, broker: AlpacaBroker, event: str, kind: TradeEventKind, status: OrderStatus
) -> None:
    order = await broker.submit(buy(), f"kx-{event}")
    async with collecting(fake, broker) as events:
        await fake.push(KEY, "pending_cancel", order.broker_order_id)  # not for Kianax
        await fake.push(KEY, event, order.broker_order_id)
        received = await asyncio.wait_for(events.get(), WAIT)
    assert received.kind is kind
    assert received.order.status is status
    assert received.fill_quantity is None


async def test_a_dropped_stream_reconnects_and_later_events_still_arrive(
    fake: FakeAlpaca, broker: AlpacaBroker
) -> None:
    order = await broker.submit(buy(), "kx-reconnect")
    async with collecting(fake, broker) as events:
        await fake.drop_connections()
        await fake.wait_for(lambda: fake.connection_count == 2 and fake.listeners(KEY) == 1)
        await fake.fill(KEY, order.broker_order_id, Decimal("10"), Decimal("191"))
        fill = await next_event(events, TradeEventKind.FILL)

        # A clean close (say, Alpaca deploying) is survived too.
        await fake.drop_connections(1001)
        await fake.wait_for(lambda: fake.connection_count == 3 and fake.listeners(KEY) == 1)
    assert fill.order.broker_order_id == order.broker_order_id
    assert fill.fill_price == Decimal("191")


async def test_closing_the_iterator_stops_the_stream(
    fake: FakeAlpaca, broker: AlpacaBroker
) -> None:
    events = broker.trade_events()

    async def first_event() -> TradeEvent:
        return await anext(events)

    first = asyncio.create_task(first_event())
    await fake.wait_for(lambda: fake.listeners(KEY) == 1)
    await broker.submit(buy(), "kx-close")
    assert (await asyncio.wait_for(first, WAIT)).kind is TradeEventKind.NEW

    await events.aclose()

    await fake.wait_for(lambda: fake.listeners(KEY) == 0)
    await asyncio.sleep(0.3)  # longer than the reconnect delay: nothing comes back
    assert fake.connection_count == 1


async def test_two_accounts_are_isolated(fake: FakeAlpaca) -> None:
    mine, theirs = alpaca(fake), alpaca(fake, OTHER_KEY, OTHER_SECRET)
    async with (
        collecting(fake, mine) as my_events,
        collecting(fake, theirs, OTHER_KEY) as their_events,
    ):
        my_order = await mine.submit(buy(), "kx-shared-id")
        await fake.fill(KEY, my_order.broker_order_id, Decimal("10"), Decimal("190"))
        await next_event(my_events, TradeEventKind.FILL)

        # The same client_order_id is free in the other account.
        their_order = await theirs.submit(buy("1"), "kx-shared-id")
        theirs_first = await asyncio.wait_for(their_events.get(), WAIT)
        await asyncio.sleep(0.1)  # time for anything misrouted to arrive
    assert theirs_first.kind is TradeEventKind.NEW
    assert theirs_first.order.broker_order_id == their_order.broker_order_id
    assert their_events.empty()
    while not my_events.empty():
        assert my_events.get_nowait().order.broker_order_id == my_order.broker_order_id

    assert [o["client_order_id"] for o in fake.accounts[KEY].orders.values()] == ["kx-shared-id"]
    assert [o["id"] for o in fake.accounts[OTHER_KEY].orders.values()] == [
        their_order.broker_order_id
    ]
    assert [o.broker_order_id for o in await mine.orders(open_only=False)] == [
        my_order.broker_order_id
    ]
    assert [o.broker_order_id for o in await theirs.orders(open_only=False)] == [
        their_order.broker_order_id
    ]
    found = await theirs.order_by_client_id("kx-shared-id")
    assert found is not None
    assert found.broker_order_id == their_order.broker_order_id


async def test_the_sdks_own_trading_stream_talks_to_the_fake(fake: FakeAlpaca) -> None:
    """The fake speaks the protocol alpaca-py's TradingStream speaks, which is the
    protocol `AlpacaBroker.trade_events` implements."""
    from alpaca.trading.stream import TradingStream

    stream = TradingStream(KEY, SECRET, paper=True, url_override=fake.stream_url)
    received: list[Any] = []

    async def on_update(update: Any) -> None:
        received.append(update)

    stream.subscribe_trade_updates(on_update)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        await fake.wait_for(lambda: fake.listeners(KEY) == 1)
        order = await alpaca(fake).submit(buy(), "kx-sdk")
        await fake.fill(KEY, order.broker_order_id, Decimal("10"), Decimal("190.5"))
        await fake.wait_for(lambda: len(received) == 2)
    finally:
        await asyncio.to_thread(stream.stop)
        await fake.drop_connections()
        await asyncio.to_thread(thread.join, WAIT)
    assert [u.event for u in received] == ["new", "fill"]
    assert received[1].qty == 10
    assert received[1].price == 190.5
    assert str(received[1].order.id) == order.broker_order_id


# --- credentials ----------------------------------------------------------------------


async def test_bad_keys_are_an_auth_error(fake: FakeAlpaca, account: FakeAccount) -> None:
    broker = alpaca(fake, KEY, "wrong-secret-value-0000")
    with pytest.raises(BrokerAuthError):
        await broker.account()
    with pytest.raises(BrokerAuthError):
        await broker.submit(buy(), "kx-bad-keys")
    with pytest.raises(BrokerAuthError):
        await anext(broker.trade_events())
    assert account.submitted == []
    with pytest.raises(BrokerAuthError):
        AlpacaBroker(KEY, "", paper=True)


async def test_no_secret_appears_in_errors_or_logs(
    fake: FakeAlpaca, account: FakeAccount, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failures: list[BaseException] = []
    broker = alpaca(fake)
    wrong = alpaca(fake, KEY, SECRET[::-1])

    async def failing(call: Any) -> None:
        try:
            await call
        except BrokerError as exc:
            failures.append(exc)
        else:
            raise AssertionError("expected a BrokerError")

    await failing(wrong.account())
    await failing(wrong.submit(buy(), "kx-secret-1"))
    await failing(anext(wrong.trade_events()))
    account.reject_next("insufficient buying power", status=403)
    await failing(broker.submit(buy(), "kx-secret-2"))
    account.reject_next("internal error", status=500)
    account.reject_next("internal error", status=500)
    await failing(broker.submit(buy(), "kx-secret-3"))
    await failing(broker.cancel("6f1c1ee5-58a7-4c5c-9a4f-ffffffffffff"))
    await failing(unreachable().submit(buy(), "kx-secret-4"))
    async with collecting(fake, broker):
        pass

    assert len(failures) == 7
    for failure in failures:
        chain: BaseException | None = failure
        while chain is not None:
            # Only Kianax's own exceptions: the SDK's hold the request and its headers.
            assert isinstance(chain, BrokerError), repr(chain)
            assert not leaks(str(chain)) and not leaks(repr(chain))
            chain = chain.__cause__ or chain.__context__
    assert not leaks(repr(broker))
    # websockets logs each frame's start and end at DEBUG; the auth frame ends in the secret.
    assert any(r.name == "domain.brokers.alpaca" for r in caplog.records)
    assert not leaks(caplog.text)


def leaks(text: str) -> bool:
    """Whether any 8 characters in a row of either secret appear in `text`."""
    return any(
        secret[i : i + 8] in text
        for secret in (SECRET, SECRET[::-1])
        for i in range(len(secret) - 7)
    )
