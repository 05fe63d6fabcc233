"""Quotes fan out from one upstream subscription to every client that asks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from domain.market.feed import Feed
from domain.market.massive import MassiveMarket
from domain.market.models import MarketDataProvider
from domain.market.simulated import SimulatedMarket
from tests.fakes.massive_server import FakeMassive, quote_event, running_fake_massive, trade_event
from tests.ws import graphql_ws

QUOTES = "subscription($s: [String!]!) { quotes(symbols: $s) { symbol last bid ask timestamp } }"


@contextlib.asynccontextmanager
async def feed_running(app: Starlette, provider: MarketDataProvider) -> AsyncIterator[Feed]:
    svc = app.state.services
    feed = Feed(provider, svc.redis, svc.broadcast, poll_interval=0.05)
    task = asyncio.create_task(feed.run())
    try:
        yield feed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_two_clients_get_the_same_quotes_from_one_feed(
    app: Starlette, live_server: str, market: SimulatedMarket
) -> None:
    async with (
        feed_running(app, market) as feed,
        graphql_ws(live_server) as alice,
        graphql_ws(live_server) as bob,
    ):
        await alice.subscribe(QUOTES, {"s": ["AAPL"]})
        await bob.subscribe(QUOTES, {"s": ["AAPL"]})
        a = [(await alice.next_data())["quotes"] for _ in range(8)]
        b = [(await bob.next_data())["quotes"] for _ in range(8)]
        assert "AAPL" in feed.subscribed  # (the paper matcher may hold demand for more)
    assert {q["symbol"] for q in a + b} == {"AAPL"}
    # Both saw the same published quotes (each may have joined a tick apart).
    shared = {q["timestamp"] for q in a[2:]} & {q["timestamp"] for q in b[2:]}
    assert len(shared) >= 3


async def test_subscription_input_is_validated(live_server: str) -> None:
    async with graphql_ws(live_server) as ws:
        for symbols, expected in (
            ([], "must not be empty"),
            ([f"S{i}" for i in range(51)], "at most 50"),
            (["NOPEX"], "unknown symbol NOPEX"),
        ):
            op = await ws.subscribe(QUOTES, {"s": symbols})
            message = await ws.receive()
            assert message["id"] == op and message["type"] == "next", message
            error = message["payload"]["errors"][0]
            assert expected in error["message"]
            assert error["extensions"]["code"] == "BAD_USER_INPUT"
            assert (await ws.receive()) == {"id": op, "type": "complete"}


@pytest.fixture
def fake_massive() -> Iterator[FakeMassive]:
    with running_fake_massive() as fake:
        fake.add_ticker("AAPL", name="Apple Inc.")
        fake.set_snapshot(
            "AAPL",
            last=190.0,
            bid=189.99,
            ask=190.01,
            volume=1_000_000,
            prev_close=188.5,
            updated=datetime.now(UTC),
        )
        yield fake


async def test_massive_upstream_sees_one_subscription_for_many_clients(
    app: Starlette, live_server: str, fake_massive: FakeMassive, redis: Redis
) -> None:
    provider = MassiveMarket(
        fake_massive.api_key, rest_base_url=fake_massive.rest_url, ws_url=fake_massive.ws_url
    )
    async with (
        feed_running(app, provider),
        graphql_ws(live_server) as alice,
        graphql_ws(live_server) as bob,
    ):
        await alice.subscribe(QUOTES, {"s": ["AAPL"]})
        await bob.subscribe(QUOTES, {"s": ["AAPL"]})
        await fake_massive.wait_for(lambda: "T.AAPL" in fake_massive.live_topics())
        await asyncio.sleep(0.3)
        now = datetime.now(UTC)
        await fake_massive.push(
            trade_event("AAPL", 191.25, 100, now), quote_event("AAPL", 191.2, 191.3, now)
        )

        async def until_price(ws: object) -> dict[str, str]:
            while True:
                quote = (await ws.next_data())["quotes"]  # type: ignore[attr-defined]
                if quote["last"] == "191.25":
                    return quote  # type: ignore[no-any-return]

        got_a, got_b = await asyncio.gather(until_price(alice), until_price(bob))
        assert got_a == got_b
    subscribes = [a for a in fake_massive.subscriptions() if a.action == "subscribe"]
    assert sum("T.AAPL" in a.topics for a in subscribes) == 1
