"""The paper matcher while its book keeps changing: no lost events, no missed new orders."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from domain.market.feed import QuoteDemand
from domain.market.service import quote_channel
from domain.market.universe import UNIVERSE
from domain.trading.paper import PaperMatcher, QuoteFollower
from domain.trading.service import NEW_ORDERS_CHANNEL, orders_channel
from kianax.broadcast import Broadcast
from tests.conftest import SignedIn
from tests.trading.conftest import place

SYMBOLS = [spec.symbol for spec in UNIVERSE[:24]]


class SlowPublisher:
    """Publishes a little late, as a busy Redis does. That widens the window between a
    fill's COMMIT and its events, where a cancelled match loses them."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def publish(self, channel: str, message: Any) -> None:
        await asyncio.sleep(self.delay)
        await self.inner.publish(channel, message)


class RecordingMatcher(PaperMatcher):
    """Remembers which new orders reached it through `paper:new-orders`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.announced: set[str] = set()

    async def on_new_order(self, data: dict[str, Any]) -> None:
        self.announced.add(data["id"])
        await super().on_new_order(data)


class HeldUpMatcher(PaperMatcher):
    """Busy with its first new order until `release` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def on_new_order(self, data: dict[str, Any]) -> None:
        await self.release.wait()
        await super().on_new_order(data)


@contextlib.asynccontextmanager
async def running(matcher: PaperMatcher, hub: Broadcast) -> AsyncIterator[asyncio.Task[None]]:
    """The matcher's run() as a task, once its new-orders subscription is in place."""
    before = hub.stats.subscribers.get(NEW_ORDERS_CHANNEL, 0)
    task = asyncio.create_task(matcher.run())
    try:
        assert await _until(lambda: hub.stats.subscribers.get(NEW_ORDERS_CHANNEL, 0) > before)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(condition: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def statuses(engine: AsyncEngine, ids: list[str]) -> dict[str, str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id::text, status FROM orders WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": ids},
        )
    return {order_id: status for order_id, status in rows}


async def buy_each(user: SignedIn, symbols: list[str], at_once: int) -> list[str]:
    """Market BUY 1 of each symbol, `at_once` orders in flight, so that new orders keep
    arriving while the book's symbols change."""
    ids: list[str] = []
    for start in range(0, len(symbols), at_once):
        placed = await asyncio.gather(
            *(
                place(user, symbol=s, side="BUY", quantity="1")
                for s in symbols[start : start + at_once]
            )
        )
        for result in placed:
            assert result["__typename"] == "OrderPlaced", result
            ids.append(result["order"]["id"])
    return ids


async def test_every_fill_is_published_once_while_the_book_keeps_changing(
    app: Starlette, signup: Any, owner_engine: AsyncEngine
) -> None:
    svc = app.state.services
    trading = dataclasses.replace(svc.trading, publisher=SlowPublisher(svc.broadcast, 0.02))
    # Reloads every 0.2 s: filled orders leave the book and their symbols stop streaming,
    # so nearly every order is for a symbol new to the book.
    matcher = PaperMatcher(svc.db, trading, svc.broadcast, svc.quote_demand, refresh_interval=0.2)
    user: SignedIn = await signup()
    events: dict[str, list[str]] = defaultdict(list)
    async with (
        svc.broadcast.subscribe(orders_channel(uuid.UUID(user.user_id))) as sub,
        running(matcher, svc.broadcast),
    ):

        async def collect() -> None:
            async for message in sub:
                events[message.data["id"]].append(message.data["status"])

        collecting = asyncio.create_task(collect())
        try:
            ids: list[str] = []
            for _ in range(3):
                ids += await buy_each(user, SYMBOLS, at_once=3)
                await asyncio.sleep(0.3)

            async def filled() -> bool:
                return set((await statuses(owner_engine, ids)).values()) == {"FILLED"}

            deadline = asyncio.get_running_loop().time() + 15
            while not await filled():
                assert asyncio.get_running_loop().time() < deadline, await statuses(
                    owner_engine, ids
                )
                await asyncio.sleep(0.1)
            await _until(lambda: all("FILLED" in events[i] for i in ids), within=5)
        finally:
            collecting.cancel()
    unpublished = [i for i in ids if events[i].count("FILLED") != 1]
    assert not unpublished, (
        f"{len(unpublished)} of {len(ids)} filled orders without exactly one FILLED event: "
        f"{[events[i] for i in unpublished]}"
    )


async def test_new_orders_for_new_symbols_are_matched_at_once(
    app: Starlette, signup: Any, owner_engine: AsyncEngine
) -> None:
    svc = app.state.services
    # No periodic reload during the test: an order only reaches the book through its
    # `paper:new-orders` message.
    matcher = RecordingMatcher(
        svc.db, svc.trading, svc.broadcast, svc.quote_demand, refresh_interval=3600
    )
    user: SignedIn = await signup()
    async with running(matcher, svc.broadcast) as task:
        ids = await buy_each(user, SYMBOLS, at_once=4)
        placed = asyncio.get_running_loop().time()
        await _until(lambda: matcher.announced >= set(ids), within=3)
        missed = set(ids) - matcher.announced
        assert not missed, f"{len(missed)} of {len(ids)} new orders never reached the matcher"
        # Filled on arrival, against the last quote: seconds at most on a busy machine,
        # where a missed message would wait for the next reload (an hour away here).
        while set((found := await statuses(owner_engine, ids)).values()) != {"FILLED"}:
            assert asyncio.get_running_loop().time() - placed < 10, found
            await asyncio.sleep(0.05)
        assert not task.done()


async def test_a_lost_new_orders_subscription_is_replaced_and_the_book_reloaded(
    app: Starlette,
    signup: Any,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = app.state.services
    user: SignedIn = await signup()
    caplog.set_level(logging.WARNING, logger="domain.trading.paper")
    # A one-message queue and a matcher held up by the first order: the third overflows
    # it (SubscriberTooSlow), as a Redis reconnect interrupts it in production.
    async with Broadcast(redis_url, queue_size=1) as hub:
        matcher = HeldUpMatcher(svc.db, svc.trading, hub, svc.quote_demand, refresh_interval=3600)
        async with running(matcher, hub) as task:
            ids: list[uuid.UUID] = []
            for _ in range(4):
                placed = await place(
                    user, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="1"
                )
                ids.append(uuid.UUID(placed["order"]["id"]))
            assert await _until(lambda: hub.stats.too_slow == 1)
            matcher.release.set()

            def booked() -> set[uuid.UUID]:
                return {order_id for _, order_id in matcher.orders.get("KO", ())}

            assert await _until(lambda: set(ids) <= booked()), booked()
            assert not task.done()
    assert any("subscribing again" in r.getMessage() for r in caplog.records)


async def test_a_matcher_that_cannot_run_says_so(
    app: Starlette, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc = app.state.services
    never_connected = Broadcast(redis_url)
    matcher = PaperMatcher(
        svc.db, svc.trading, never_connected, svc.quote_demand, refresh_interval=0.1
    )
    with (
        caplog.at_level(logging.ERROR, logger="domain.trading.paper"),
        pytest.raises(RuntimeError, match="not connected"),
    ):
        await asyncio.wait_for(matcher.run(), 5)
    logged = [r for r in caplog.records if r.name == "domain.trading.paper"]
    assert [r.getMessage() for r in logged] == ["paper matcher failed"]
    assert logged[0].exc_info is not None  # with its traceback


async def test_the_quote_follower_moves_subscription_and_demand_together(app: Starlette) -> None:
    svc = app.state.services
    demand = QuoteDemand(svc.redis)
    async with svc.broadcast.subscribe(coalesce=True) as quotes:
        follower = QuoteFollower(quotes, demand)
        await follower.follow(["MSFT", "AAPL"])
        assert quotes.channels == (quote_channel("AAPL"), quote_channel("MSFT"))
        assert set(demand._held) == {"AAPL", "MSFT"}
        await follower.follow(["MSFT", "NVDA"])
        assert quotes.channels == (quote_channel("MSFT"), quote_channel("NVDA"))
        assert set(demand._held) == follower.symbols == {"MSFT", "NVDA"}
        await follower.aclose()
        assert not demand._held
