from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from resolvers import market
from schema.context import Info
from schema.market import MarketStatus, NewsConnection, Quote, Security, SecuritySummary


@strawberry.type
class MarketQuery:
    market_status: MarketStatus = strawberry.field(
        resolver=market.market_status, description="Is the US equity market (XNYS) open now?"
    )
    search_symbols: list[SecuritySummary] = strawberry.field(resolver=market.search_symbols)
    security: Security | None = strawberry.field(resolver=market.security)
    news: NewsConnection = strawberry.field(resolver=market.news)


@strawberry.type
class MarketSubscription:
    @strawberry.subscription(description="Live quotes; shared market data, latest per symbol.")  # type: ignore[untyped-decorator]
    async def quotes(self, info: Info, symbols: list[str]) -> AsyncGenerator[Quote, None]:
        async for quote in market.quotes(info, symbols):
            yield quote
