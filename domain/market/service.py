"""Market data for everyone: one provider behind a Redis cache shared by all users and replicas."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
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
# Reads cached values and counts their hits and misses in STATS_KEY (KEYS[1]) in the same
# round trip: a separate HINCRBY per lookup doubled the round trips of every cache hit.
READ_AND_COUNT = """
local values = redis.call('MGET', unpack(KEYS, 2))
local hits = 0
for i = 1, #values do
  if values[i] then hits = hits + 1 end
end
if hits > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':hit', hits) end
if hits < #values then redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':miss', #values - hits) end
return values
"""


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
        self._read_and_count = redis.register_script(READ_AND_COUNT)

    def status(self) -> MarketStatus:
        return market_status(self.clock())

    async def _lookup(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self._read_and_count(
            keys=[STATS_KEY, *keys], args=[kind]
        )
        return values

    async def _cached(
        self,
        kind: str,
        key: str,
        ttl: int,
        load: Callable[[], Awaitable[T]],
        dump: Callable[[T], Any],
        restore: Callable[[Any], T],
    ) -> T:
        [raw] = await self._lookup(kind, [key])
        if raw is not None:
            return restore(json.loads(raw))
        value = await load()
        await self.redis.set(key, json.dumps(dump(value)), ex=ttl)
        return value

    async def _cached_many(
        self,
        kind: str,
        keys: Mapping[str, str],
        ttl: int,
        load: Callable[[str], Awaitable[T]],
        dump: Callable[[T], Any],
        restore: Callable[[Any], T],
    ) -> dict[str, T]:
        """`keys` maps each name to its cache key. One round trip reads them all; the misses
        are loaded one by one (as a provider's rate limit wants) and stored in a second."""
        found: dict[str, T] = {}
        missing: list[str] = []
        for name, raw in zip(keys, await self._lookup(kind, list(keys.values())), strict=True):
            if raw is None:
                missing.append(name)
            else:
                found[name] = restore(json.loads(raw))
        if not missing:
            return found
        for name in missing:
            found[name] = await load(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in missing:
                pipe.set(keys[name], json.dumps(dump(found[name])), ex=ttl)
            await pipe.execute()
        return found

    async def details(self, symbol: str) -> SecurityInfo | None:
        return (await self.details_many([symbol]))[symbol]

    async def details_many(self, symbols: Iterable[str]) -> dict[str, SecurityInfo | None]:
        """Each symbol's details (None: unknown), keyed by the symbols as given."""
        normalized = {symbol: normalize_symbol(symbol) for symbol in symbols}
        found = await self._cached_many(
            "details",
            {n: f"md:details:{n}" for n in normalized.values()},
            DETAILS_TTL,
            self.provider.details,
            lambda s: None if s is None else codec.security_to_dict(s),
            lambda d: None if d is None else codec.security_from_dict(d),
        )
        return {symbol: found[n] for symbol, n in normalized.items()}

    async def require_known(self, symbols: Sequence[str]) -> list[str]:
        normalized = list(dict.fromkeys(normalize_symbol(s) for s in symbols))
        known = await self.details_many(normalized)
        for symbol in normalized:
            if known[symbol] is None:
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
        found = await self._cached_many(
            "quote",
            {s: QUOTE_KEY.format(s) for s in symbols},
            QUOTE_TTL,
            self.provider.quote,
            lambda q: None if q is None else codec.quote_to_dict(q),
            lambda d: None if d is None else codec.quote_from_dict(d),
        )
        return {symbol: quote for symbol, quote in found.items() if quote is not None}

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
        # The start is floored to the day so that every caller this day shares one cached
        # range (the newest 300 bars are the same; to the microsecond, none ever did), and
        # the floor must keep the range within MAX_RANGE.
        lookback = INDICATOR_LOOKBACK.get(timeframe, MAX_RANGE[timeframe] - timedelta(days=1))
        start = (self.clock() - lookback).replace(hour=0, minute=0, second=0, microsecond=0)
        bars = await self.bars(symbol, timeframe, start, None, 300)
        quote = (await self.quotes([symbol])).get(symbol)
        return compute_indicators(_with_last_price(bars, quote, timeframe))

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


def _with_last_price(bars: list[Bar], quote: Quote | None, timeframe: Timeframe) -> list[Bar]:
    """The bars with the forming one brought up to the last quote: the cached series may be
    minutes old, and an agent deciding on a drop must see the drop in its RSI."""
    if not bars or quote is None:
        return bars
    last = bars[-1]
    if not last.timestamp <= quote.timestamp < last.timestamp + timeframe.duration:
        return bars
    price = quote.last
    forming = replace(last, close=price, high=max(last.high, price), low=min(last.low, price))
    return [*bars[:-1], forming]
