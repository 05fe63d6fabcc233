"""Placing an order costs a fixed number of Redis round trips, however many symbols are held."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from starlette.applications import Starlette

from db.engine import Database
from db.models import Position
from domain.market.models import SecurityInfo
from domain.market.service import MarketService
from domain.market.simulated import SimulatedMarket
from domain.market.universe import UNIVERSE
from domain.trading.service import RiskRejected, TradingService
from domain.trading.types import OrderRequest, OrderSide, OrderType, TimeInForce
from tests.conftest import SignedIn

# Worst case of one placement, all four lookups missing (read, then store the misses): the
# order's quote, the order's details, the held symbols' quotes, the held symbols' details.
MAX_ROUND_TRIPS_PER_ORDER = 8


@dataclasses.dataclass
class RoundTrips:
    count: int = 0


@pytest.fixture
async def counted(redis_url: str) -> AsyncIterator[tuple[Redis, RoundTrips]]:
    """A real Redis client that counts what it sends: a command or a whole pipeline is one."""
    trips = RoundTrips()

    class CountingConnection(Connection):
        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            trips.count += 1
            await super().send_packed_command(command, check_health)

    client = Redis.from_url(redis_url, connection_class=CountingConnection)
    yield client, trips
    await client.aclose()


class InventedListings(SimulatedMarket):
    """The simulated market, plus securities made up for one test: nobody has cached them."""

    def __init__(self, clock: Callable[[], datetime], invented: dict[str, SecurityInfo]) -> None:
        super().__init__(seed=7, clock=clock)
        self.invented = invented
        self.asked: list[str] = []

    async def details(self, symbol: str) -> SecurityInfo | None:
        if not symbol.startswith("ZQ"):
            return await super().details(symbol)
        self.asked.append(symbol)
        return self.invented.get(symbol)


def _invented_symbol() -> str:
    return f"ZQ{uuid.uuid4().hex[:8].upper()}"


async def test_details_of_many_symbols_take_one_round_trip_and_two_when_cold(
    counted: tuple[Redis, RoundTrips], redis: Redis, clock: Callable[[], datetime]
) -> None:
    client, trips = counted
    invented = {
        s: SecurityInfo(symbol=s, name=f"{s} Corp.", sector="Utilities")
        for s in (_invented_symbol() for _ in range(30))
    }
    unknown = _invented_symbol()
    symbols = [*invented, unknown]
    provider = InventedListings(clock, invented)
    market = MarketService(provider, client, clock=clock)
    # Another replica, on its own connection: the statistics are shared through Redis.
    replica = MarketService(provider, redis, clock=clock)
    try:
        await market.details("AAPL")  # connects, and loads the Lua script into this Redis
        before = await replica.cache_stats()

        trips.count = 0
        cold = await market.details_many(symbols)
        assert trips.count == 2  # read all, then store the 31 misses together
        assert cold == {**invented, unknown: None}
        trips.count = 0
        warm = await market.details_many(symbols)
        assert trips.count == 1
        assert warm == cold
        assert sorted(provider.asked) == sorted(symbols)  # each loaded once, then cached

        after = await replica.cache_stats()
        assert after["details:miss"] - before.get("details:miss", 0) >= len(symbols)
        assert after["details:hit"] - before.get("details:hit", 0) >= len(symbols)
    finally:
        await client.delete(*(f"md:details:{s}" for s in symbols))


async def _hold(
    db: Database, trading: TradingService, user_id: uuid.UUID, symbols: Iterable[str]
) -> None:
    async with db.transaction(user_id) as uow:
        account = await trading.account(uow)
        for symbol in symbols:
            uow.session.add(
                Position(
                    id=uuid.uuid4(),
                    user_id=user_id,
                    account_id=account.id,
                    symbol=symbol,
                    agent_id=None,
                    quantity=Decimal(10),
                    cost_basis=Decimal(1000),
                    realized_pnl=Decimal(0),
                    lots=[["10", "100"]],
                )
            )


def _far_limit_buy(symbol: str, quantity: int = 1) -> OrderRequest:
    # A $1 limit never fills: the placement, not the matcher, is under test.
    return OrderRequest(
        symbol=symbol,
        side=OrderSide.BUY,
        type=OrderType.LIMIT,
        time_in_force=TimeInForce.GTC,
        quantity=Decimal(quantity),
        limit_price=Decimal("1.00"),
    )


async def test_placing_an_order_takes_boundedly_many_round_trips_for_1_or_40_positions(
    app: Starlette, signup: Any, counted: tuple[Redis, RoundTrips]
) -> None:
    client, trips = counted
    svc = app.state.services
    trading = dataclasses.replace(
        svc.trading, market=MarketService(svc.provider, client, clock=svc.market.clock)
    )
    user: SignedIn = await signup()
    user_id = uuid.UUID(user.user_id)
    held = [spec.symbol for spec in UNIVERSE if spec.symbol != "AAPL"][:40]
    await trading.market.details("AAPL")  # connects, and loads the Lua script

    async def round_trips_to_place() -> int:
        async with svc.db.transaction(user_id) as uow:
            trips.count = 0
            await trading.place(uow, _far_limit_buy("AAPL"))
            return trips.count

    await _hold(svc.db, trading, user_id, held[:1])
    with_one = await round_trips_to_place()
    await _hold(svc.db, trading, user_id, held[1:])
    with_forty = await round_trips_to_place()
    assert with_one <= MAX_ROUND_TRIPS_PER_ORDER
    assert with_forty <= MAX_ROUND_TRIPS_PER_ORDER


async def test_the_sector_limit_still_sees_the_held_symbols_sectors(
    app: Starlette, signup: Any
) -> None:
    svc = app.state.services
    trading: TradingService = svc.trading
    user: SignedIn = await signup()
    user_id = uuid.UUID(user.user_id)
    # 10 shares each of three technology names and one energy name.
    await _hold(svc.db, trading, user_id, ["MSFT", "AAPL", "AMD", "XOM"])
    async with svc.db.transaction(user_id) as uow:
        valuation = await trading.valuation(uow)
        tech = sum(
            (
                p.market_value or Decimal(0)
                for p in valuation.positions
                if p.position.symbol != "XOM"
            ),
            Decimal(0),
        )
        await trading.update_limits(
            uow, {"max_sector_percent": (tech / valuation.equity * 100 + 1).quantize(Decimal(1))}
        )
    nvda = await svc.market.quote("NVDA")
    assert nvda is not None
    # Worth about 2 % of equity more technology: over the limit only with the held tech.
    shares = int(valuation.equity * Decimal("0.02") / nvda.last) + 1

    with pytest.raises(RiskRejected) as rejected:
        async with svc.db.transaction(user_id) as uow:
            await trading.place(uow, _far_limit_buy("NVDA", shares))
    assert rejected.value.rule == "max_sector_percent"
    async with svc.db.transaction(user_id) as uow:
        energy = await trading.place(uow, _far_limit_buy("CVX", shares))
    assert energy.order.symbol == "CVX"
