"""The paper broker's matching loop: quotes from the feed fill resting orders, in the worker.

It keeps an index of every open paper order by symbol, holds quote demand for those
symbols (so the feed streams them), and lets each quote act on each order of its symbol in
a transaction scoped to that order's owner. A new order is matched at once against the
last quote, so a market order fills without waiting for the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from typing import Any, Protocol

from sqlalchemy import text

from db.engine import Database
from domain.market import codec
from domain.market.feed import QuoteDemand
from domain.market.models import Quote
from domain.market.service import quote_channel
from domain.trading.service import NEW_ORDERS_CHANNEL, TradingService

log = logging.getLogger(__name__)


class Message(Protocol):
    channel: str
    data: Any


class Hub(Protocol):
    def subscribe(self, *channels: str, coalesce: bool = False) -> Any: ...


class PaperMatcher:
    def __init__(
        self,
        db: Database,
        trading: TradingService,
        hub: Hub,
        demand: QuoteDemand,
        *,
        refresh_interval: float = 5.0,
    ) -> None:
        self.db = db
        self.trading = trading
        self.hub = hub
        self.demand = demand
        self.refresh_interval = refresh_interval
        self.orders: dict[str, set[tuple[uuid.UUID, uuid.UUID]]] = defaultdict(set)
        self._changed = asyncio.Event()
        self.matched = 0

    async def load(self) -> None:
        async with self.db.transaction(None) as uow:
            rows = await uow.session.execute(
                text("SELECT user_id, order_id, symbol FROM open_paper_orders()")
            )
        index: dict[str, set[tuple[uuid.UUID, uuid.UUID]]] = defaultdict(set)
        for user_id, order_id, symbol in rows:
            index[symbol].add((user_id, order_id))
        if set(index) != set(self.orders):
            self._changed.set()
        self.orders = index

    async def on_quote(self, quote: Quote) -> None:
        for user_id, order_id in list(self.orders.get(quote.symbol, ())):
            await self._match(user_id, order_id, quote)

    async def _match(self, user_id: uuid.UUID, order_id: uuid.UUID, quote: Quote) -> None:
        try:
            async with self.db.transaction(user_id) as uow:
                await self.trading.match_order(uow, order_id, quote)
            self.matched += 1
        except Exception:
            # One bad order must not stop the book; it is retried on the next quote.
            log.exception("matching failed", extra={"order_id": str(order_id)})

    async def on_new_order(self, data: dict[str, Any]) -> None:
        user_id, order_id, symbol = uuid.UUID(data["userId"]), uuid.UUID(data["id"]), data["symbol"]
        if symbol not in self.orders:
            self._changed.set()
        self.orders[symbol].add((user_id, order_id))
        quote = await self.trading.market.quote(symbol)
        if quote is not None:
            await self._match(user_id, order_id, quote)

    async def _listen(self, symbols: list[str]) -> None:
        async with self.demand.hold(symbols):
            await asyncio.gather(self._listen_new_orders(), self._listen_quotes(symbols))

    async def _listen_new_orders(self) -> None:
        # Strict, not coalesced: every new order must be seen.
        async with self.hub.subscribe(NEW_ORDERS_CHANNEL) as sub:
            async for message in sub:
                await self.on_new_order(message.data)

    async def _listen_quotes(self, symbols: list[str]) -> None:
        if not symbols:
            await asyncio.Event().wait()  # nothing to watch until the book changes
        async with self.hub.subscribe(*(quote_channel(s) for s in symbols), coalesce=True) as sub:
            async for message in sub:
                await self.on_quote(codec.quote_from_dict(message.data))

    async def run(self) -> None:
        await self.load()
        while True:
            self._changed.clear()
            listener = asyncio.create_task(self._listen(sorted(self.orders)))
            try:
                while not self._changed.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), self.refresh_interval)
                    if listener.done():
                        listener.result()  # surface a crash rather than spin
                    await self.load()
                    # Orders that closed drop out; symbols nobody trades stop streaming.
                    for symbol in [s for s, orders in self.orders.items() if not orders]:
                        del self.orders[symbol]
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
