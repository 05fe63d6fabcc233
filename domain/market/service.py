"""Market data for everyone: one provider behind a Redis cache shared by all users and replicas."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from redis.asyncio import Redis

from domain.market import codec
from domain.market.calendar import MarketStatus, market_status
from domain.market.indicators import Indicators, compute_indicators
from domain.market.models import Bar, MarketDataProvider, NewsItem, Quote, SecurityInfo, Timeframe

T = TypeVar("T")

MAX_SYMBOLS_PER_SUBSCRIPTION = 50
MAX_BARS = 5000
MAX_RANGE = {
    Timeframe.MINUTE: timedelta(days=31),
    Timeframe.FIVE_MINUTES: timedelta(days=93),
    Timeframe.FIFTEEN_MINUTES: timedelta(days=186),
    Timeframe.HOUR: timedelta(days=400),
    Timeframe.DAY: timedelta(days=366 * 20),
    Timeframe.WEEK: timedelta(days=366 * 30),
}
# A bar series that reaches "now" changes as the current bar forms; a closed range never does.
LIVE_BARS_TTL = {Timeframe.DAY: 300, Timeframe.WEEK: 900}
LIVE_BARS_TTL_INTRADAY = 30
CLOSED_BARS_TTL = 24 * 3600
DETAILS_TTL = 24 * 3600
QUOTE_TTL = 5  # only for quotes fetched on demand; the feed keeps streamed ones fresh
NEWS_TTL = 60
INDICATOR_LOOKBACK = {Timeframe.DAY: timedelta(days=400), Timeframe.WEEK: timedelta(days=366 * 5)}

QUOTE_KEY = "md:quote:{}"
STATS_KEY = "md:cache:stats"


class MarketDataError(ValueError):
    """Bad input for a market-data request (unknown symbol, absurd range, ...)."""


def quote_channel(symbol: str) -> str:
    return f"quotes:{symbol}"


def normalize_symbol(raw: str) -> str:
    symbol = raw.strip().upper()
    if not symbol or len(symbol) > 12 or not all(c.isalnum() or c in ".-" for c in symbol):
        raise MarketDataError(f"'{raw[:20]}' is not a ticker symbol")
    return symbol


class MarketService:
    def __init__(
        self,
        provider: MarketDataProvider,
        redis: Redis,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.provider = provider
        self.redis = redis
        self.clock = clock

    def status(self) -> MarketStatus:
        return market_status(self.clock())

    async def _cached(
        self,
        kind: str,
        key: str,
        ttl: int,
        load: Callable[[], Awaitable[T]],
        dump: Callable[[T], Any],
        restore: Callable[[Any], T],
    ) -> T:
        raw = await self.redis.get(key)
        if raw is not None:
            await self.redis.hincrby(STATS_KEY, f"{kind}:hit", 1)  # type: ignore[misc]
            return restore(json.loads(raw))
        await self.redis.hincrby(STATS_KEY, f"{kind}:miss", 1)  # type: ignore[misc]
        value = await load()
        await self.redis.set(key, json.dumps(dump(value)), ex=ttl)
        return value

    async def details(self, symbol: str) -> SecurityInfo | None:
        symbol = normalize_symbol(symbol)
        return await self._cached(
            "details",
            f"md:details:{symbol}",
            DETAILS_TTL,
            lambda: self.provider.details(symbol),
            lambda s: None if s is None else codec.security_to_dict(s),
            lambda d: None if d is None else codec.security_from_dict(d),
        )

    async def require_known(self, symbols: Sequence[str]) -> list[str]:
        normalized = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
        for symbol in normalized:
            if await self.details(symbol) is None:
                raise MarketDataError(f"unknown symbol {symbol}")
        return normalized

    async def search(self, query: str, limit: int) -> list[SecurityInfo]:
        query = query.strip()
        if not query or len(query) > 64:
            raise MarketDataError("search needs 1 to 64 characters")
        if not 1 <= limit <= 100:
            raise MarketDataError("first must be between 1 and 100")
        return await self.provider.search(query, limit)

    async def quote(self, symbol: str) -> Quote | None:
        symbol = normalize_symbol(symbol)
        return await self._cached(
            "quote",
            QUOTE_KEY.format(symbol),
            QUOTE_TTL,
            lambda: self.provider.quote(symbol),
            lambda q: None if q is None else codec.quote_to_dict(q),
            lambda d: None if d is None else codec.quote_from_dict(d),
        )

    async def quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Many last quotes in one round trip, falling back to the provider for misses."""
        keys = [QUOTE_KEY.format(s) for s in symbols]
        found: dict[str, Quote] = {}
        for symbol, raw in zip(symbols, await self.redis.mget(keys) if keys else [], strict=True):
            if raw is not None:
                found[symbol] = codec.quote_from_dict(json.loads(raw))
        for symbol in symbols:
            if symbol not in found and (quote := await self.quote(symbol)) is not None:
                found[symbol] = quote
        return found

    async def bars(
        self,
        symbol: str,
        timeframe: Timeframe,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> list[Bar]:
        symbol = normalize_symbol(symbol)
        if not 1 <= limit <= MAX_BARS:
            raise MarketDataError(f"limit must be between 1 and {MAX_BARS}")
        now = self.clock()
        live = end is None or end >= now
        stop = min(end or now, now)
        begin = start or stop - timeframe.duration * limit * 2 - timedelta(days=4)
        if begin.tzinfo is None or stop.tzinfo is None:
            raise MarketDataError("from and to need a timezone")
        if begin > stop:
            raise MarketDataError("from is after to")
        if stop - begin > MAX_RANGE[timeframe]:
            raise MarketDataError(
                f"range too long for {timeframe.value}: at most {MAX_RANGE[timeframe].days} days"
            )
        if await self.details(symbol) is None:
            raise MarketDataError(f"unknown symbol {symbol}")
        if live:
            ttl = LIVE_BARS_TTL.get(timeframe, LIVE_BARS_TTL_INTRADAY)
            # Open-ended ranges share one key per (symbol, timeframe, start bucket, limit).
            since = start.isoformat() if start else "-"
            key = f"md:bars:{symbol}:{timeframe.value}:{since}:live:{limit}"
        else:
            ttl = CLOSED_BARS_TTL
            key = (
                f"md:bars:{symbol}:{timeframe.value}:{begin.isoformat()}:{stop.isoformat()}:{limit}"
            )
        return await self._cached(
            "bars",
            key,
            ttl,
            lambda: self.provider.bars(symbol, timeframe, begin, stop, limit),
            lambda bars: [codec.bar_to_list(b) for b in bars],
            lambda rows: [codec.bar_from_list(r) for r in rows],
        )

    async def indicators(self, symbol: str, timeframe: Timeframe) -> Indicators:
        lookback = INDICATOR_LOOKBACK.get(timeframe, MAX_RANGE[timeframe])
        bars = await self.bars(symbol, timeframe, self.clock() - lookback, None, 300)
        return compute_indicators(bars)

    async def news(
        self, symbols: Sequence[str] | None, limit: int, before: datetime | None
    ) -> list[NewsItem]:
        if not 1 <= limit <= 100:
            raise MarketDataError("first must be between 1 and 100")
        wanted = None if symbols is None else await self.require_known(symbols)
        key = f"md:news:{','.join(wanted or ['*'])}:{before.isoformat() if before else '-'}:{limit}"
        return await self._cached(
            "news",
            key,
            NEWS_TTL,
            lambda: self.provider.news(wanted, limit, before),
            lambda items: [codec.news_to_dict(n) for n in items],
            lambda rows: [codec.news_from_dict(r) for r in rows],
        )

    async def cache_stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(STATS_KEY)  # type: ignore[misc]
        return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}
