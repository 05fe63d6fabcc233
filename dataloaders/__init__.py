"""Per-request loaders. Each is built with the actor; a loader keyed by id alone is a leak."""

from __future__ import annotations

from dataclasses import dataclass

from dataloaders.fills_by_order_id import FillsByOrderIdLoader
from dataloaders.order_by_id import OrderByIdLoader
from dataloaders.quote_by_symbol import QuoteBySymbolLoader
from db.engine import Database
from domain.auth.actor import Actor
from domain.market.service import MarketService


@dataclass
class Loaders:
    quote_by_symbol: QuoteBySymbolLoader
    order_by_id: OrderByIdLoader
    fills_by_order_id: FillsByOrderIdLoader


def build_loaders(db: Database, actor: Actor | None, market: MarketService) -> Loaders:
    return Loaders(
        quote_by_symbol=QuoteBySymbolLoader(market),
        order_by_id=OrderByIdLoader(db, actor),
        fills_by_order_id=FillsByOrderIdLoader(db, actor),
    )
