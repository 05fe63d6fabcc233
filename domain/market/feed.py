"""The market feed: one upstream subscription per symbol that anybody needs, fanned out once.

API replicas (and later the trigger index and open positions) advertise demand for symbols in
a Redis sorted set whose scores are expiry times; the feed, a single process, subscribes
upstream to exactly the symbols with live demand, publishes each quote once to
`quotes:{SYMBOL}` and keeps the last quote per symbol in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from redis.asyncio import Redis

from domain.market import codec
from domain.market.models import MarketDataProvider, QuoteStream
from domain.market.service import QUOTE_KEY, quote_channel

log = logging.getLogger(__name__)

DEMAND_KEY = "md:demand"
DEMAND_TTL_SECONDS = 30.0
LAST_QUOTE_TTL_SECONDS = 7 * 24 * 3600


class Publisher(Protocol):
    async def publish(self, channel: str, message: Any) -> None: ...


class QuoteDemand:
    """This process's interest in symbols, kept alive in Redis while someone holds it."""

    def __init__(self, redis: Redis, *, ttl: float = DEMAND_TTL_SECONDS) -> None:
        self.redis = redis
        self.ttl = ttl
        self._held: Counter[str] = Counter()

    async def _advertise(self, symbols: Iterable[str]) -> None:
        expiry = time.time() + self.ttl
        mapping = {symbol: expiry for symbol in symbols}
        if mapping:
            await self.redis.zadd(DEMAND_KEY, mapping)

    @contextlib.asynccontextmanager
    async def hold(self, symbols: Iterable[str]) -> AsyncIterator[None]:
        wanted = list(symbols)
        self._held.update(wanted)
        try:
            await self._advertise(wanted)
            yield
        finally:
            self._held.subtract(wanted)
            self._held = +self._held  # drop symbols nobody holds any more

    async def keep_alive(self) -> None:
        """Refresh the expiry of every held symbol; runs for the life of the process."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._advertise(list(self._held))
            except Exception:  # a Redis blip must not end the refresher
                log.warning("could not refresh quote demand", exc_info=True)


class Feed:
    def __init__(
        self,
        provider: MarketDataProvider,
        redis: Redis,
        publisher: Publisher,
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self.provider = provider
        self.redis = redis
        self.publisher = publisher
        self.poll_interval = poll_interval
        self.subscribed: set[str] = set()
        self.published = 0
        self.dropped = 0

    async def wanted(self) -> set[str]:
        now = time.time()
        await self.redis.zremrangebyscore(DEMAND_KEY, "-inf", now)
        members = await self.redis.zrangebyscore(DEMAND_KEY, now, "+inf")
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def sync(self, stream: QuoteStream) -> None:
        wanted = await self.wanted()
        added, removed = wanted - self.subscribed, self.subscribed - wanted
        if added:
            await stream.subscribe(sorted(added))
        if removed:
            await stream.unsubscribe(sorted(removed))
        if added or removed:
            log.info(
                "feed symbols changed", extra={"added": sorted(added), "removed": sorted(removed)}
            )
        self.subscribed = wanted

    async def _forward(self, stream: QuoteStream) -> None:
        async for quote in stream.quotes():
            payload = codec.quote_to_dict(quote)
            try:
                await self.redis.set(
                    QUOTE_KEY.format(quote.symbol), json.dumps(payload), ex=LAST_QUOTE_TTL_SECONDS
                )
                await self.publisher.publish(quote_channel(quote.symbol), payload)
            except Exception:
                # Redis is away: this quote is lost, the next one (a second later) is not.
                self.dropped += 1
                if self.dropped % 100 == 1:
                    log.warning("feed could not publish quotes", exc_info=True)
                continue
            self.published += 1

    async def run(self) -> None:
        stream = self.provider.stream()
        forward = asyncio.create_task(self._forward(stream))
        try:
            while not forward.done():
                try:
                    await self.sync(stream)
                except Exception:
                    log.warning("feed could not read demand; retrying", exc_info=True)
                await asyncio.sleep(self.poll_interval)
            forward.result()
        finally:
            forward.cancel()
            await stream.close()
