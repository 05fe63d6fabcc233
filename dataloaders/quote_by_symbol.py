from __future__ import annotations

from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from domain.market.models import Quote
from domain.market.service import MarketService


class QuoteBySymbolLoader(DataLoader[str, Quote | None]):
    """Last quotes, many symbols in one Redis round trip. Market data is shared: no actor."""

    def __init__(self, market: MarketService) -> None:
        async def load(symbols: Sequence[str]) -> list[Quote | None]:
            found = await market.quotes(list(symbols))
            return [found.get(symbol) for symbol in symbols]

        super().__init__(load_fn=load)
