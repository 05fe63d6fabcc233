"""Market data resolvers: shared data, no actor needed (an authenticated one is accepted)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from domain.market.service import MAX_SYMBOLS_PER_SUBSCRIPTION, quote_channel
from schema.context import Info
from schema.errors import BadInput
from schema.market import (
    MarketStatus,
    NewsConnection,
    Quote,
    Security,
    SecuritySummary,
    market_errors,
    news_page,
    quote_from_message,
)


def market_status(info: Info) -> MarketStatus:
    return MarketStatus.from_model(info.context.market.status())


async def search_symbols(info: Info, query: str, first: int = 10) -> list[SecuritySummary]:
    with market_errors():
        found = await info.context.market.search(query, first)
    return [SecuritySummary(symbol=s.symbol, name=s.name, exchange=s.exchange) for s in found]


async def security(info: Info, symbol: str) -> Security | None:
    with market_errors():
        found = await info.context.market.details(symbol)
    return None if found is None else Security.from_model(found)


async def news(
    info: Info, symbols: list[str] | None = None, first: int = 20, after: str | None = None
) -> NewsConnection:
    if symbols is not None and not symbols:
        raise BadInput("symbols must not be empty (omit it for all news)")
    if symbols is not None and len(symbols) > MAX_SYMBOLS_PER_SUBSCRIPTION:
        raise BadInput(f"at most {MAX_SYMBOLS_PER_SUBSCRIPTION} symbols")
    return await news_page(info, symbols, first, after)


async def quotes(info: Info, symbols: list[str]) -> AsyncIterator[Quote]:
    ctx = info.context
    if not symbols:
        raise BadInput("symbols must not be empty")
    if len(symbols) > MAX_SYMBOLS_PER_SUBSCRIPTION:
        raise BadInput(f"at most {MAX_SYMBOLS_PER_SUBSCRIPTION} symbols per subscription")
    with market_errors():
        wanted = await ctx.market.require_known(symbols)
    channels = [quote_channel(s) for s in wanted]
    async with (
        ctx.quote_demand.hold(wanted),
        ctx.broadcast.subscribe(*channels, coalesce=True) as sub,
    ):
        # Subscribed first, then the cached last quotes: nothing published in between is lost.
        for quote in (await ctx.market.quotes(wanted)).values():
            yield Quote.from_model(quote)
        async for message in sub:
            yield quote_from_message(message)
