"""The paper broker's matching loop: quotes from the feed fill resting orders, in the worker.

It keeps an index of every open paper order by symbol, holds quote demand for those
symbols (so the feed streams them), and lets each quote act on each order of its symbol in
a transaction scoped to that order's owner. A new order is matched at once against the
last quote, so a market order fills without waiting for the next tick.

Its subscriptions live as long as it runs: `paper:new-orders` (strict: every new order
must be seen) and one coalescing subscription whose quote channels follow the symbols of
the book. A change of the book changes those channels and the quote demand; it never
cancels the task that matches, so no match is cut off between its COMMIT and the events
published after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from sqlalchemy import text

from db.engine import Database
from domain.market import codec
from domain.market.feed import QuoteDemand
from domain.market.models import Quote
from domain.market.service import quote_channel
from domain.trading.service import NEW_ORDERS_CHANNEL, TradingService
from kianax.broadcast import SubscriptionLost

log = logging.getLogger(__name__)


class Hub(Protocol):
    def subscribe(self, *channels: str, coalesce: bool = False) -> Any: ...


class LiveSubscription(Protocol):
    """The part of `kianax.broadcast.Subscription` that changes its channels."""

    async def add(self, *channels: str) -> None: ...

    async def remove(self, *channels: str) -> None: ...


class QuoteFollower:
    """Keeps a live quote subscription and this process's quote demand on a set of symbols.

    Used by the paper matcher and the trigger watcher, whose symbols change all the time:
    changing the channels of one subscription (rather than replacing it) loses no quote of
    a symbol that stays, and leaves the task that reads it alone.
    """

    def __init__(self, subscription: LiveSubscription, demand: QuoteDemand) -> None:
        self.subscription = subscription
        self.demand = demand
        self.symbols: frozenset[str] = frozenset()
        self._hold = contextlib.AsyncExitStack()

    async def follow(self, symbols: Iterable[str]) -> None:
        wanted = frozenset(symbols)
        if wanted == self.symbols:
            return
        added, removed = sorted(wanted - self.symbols), sorted(self.symbols - wanted)
        if added:
            # Subscribed before the demand makes the feed stream them, so that their first
            # quotes are not missed.
            await self.subscription.add(*(quote_channel(s) for s in added))
        # One hold of the whole set (one round trip to Redis however many symbols), taken
        # before the previous one is let go so that a symbol that stays is never dropped.
        hold = contextlib.AsyncExitStack()
        await hold.enter_async_context(self.demand.hold(wanted))
        previous, self._hold, self.symbols = self._hold, hold, wanted
        try:
            if removed:
                await self.subscription.remove(*(quote_channel(s) for s in removed))
        finally:
            await previous.aclose()

    async def aclose(self) -> None:
        self.symbols = frozenset()
        await self._hold.aclose()


async def run_on_quotes(
    hub: Hub,
    demand: QuoteDemand,
    on_quote: Callable[[Quote], Awaitable[None]],
    *tasks: Callable[[QuoteFollower], Coroutine[Any, Any, None]],
    name: str,
    log: logging.Logger,
) -> None:
    """The life of a quote-driven loop (the paper matcher, the trigger watcher): one
    coalescing quote subscription for as long as it runs, whose channels and demand `tasks`
    move through a QuoteFollower, each quote handed to `on_quote` (a failing quote is logged
    and the next one comes). A task that fails ends them all, logged; never silently."""
    try:
        async with hub.subscribe(coalesce=True) as quotes:
            follower = QuoteFollower(quotes, demand)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(_each_quote(quotes, on_quote, log))
                    for task in tasks:
                        group.create_task(task(follower))
            finally:
                await follower.aclose()
    except asyncio.CancelledError:
        log.info("%s stopped", name)
        raise
    except Exception:
        log.exception("%s failed", name)
        raise


async def _each_quote(
    quotes: Any, on_quote: Callable[[Quote], Awaitable[None]], log: logging.Logger
) -> None:
    async for message in quotes:
        try:
            await on_quote(codec.quote_from_dict(message.data))
        except Exception:
            log.exception("a quote could not be handled", extra={"channel": message.channel})
    raise RuntimeError("the quote subscription ended")


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
        self._wake = asyncio.Event()  # a new symbol, or the book is stale
        self._stale = False  # new orders may have been missed: read the book again
        # Orders announced while load() reads the book, which its snapshot may predate.
        self._announced: list[tuple[str, uuid.UUID, uuid.UUID]] | None = None
        self.matched = 0

    async def load(self) -> None:
        announced: list[tuple[str, uuid.UUID, uuid.UUID]] = []
        self._announced = announced
        try:
            async with self.db.transaction(None) as uow:
                rows = await uow.session.execute(
                    text("SELECT user_id, order_id, symbol FROM open_paper_orders()")
                )
        finally:
            self._announced = None
        index: dict[str, set[tuple[uuid.UUID, uuid.UUID]]] = defaultdict(set)
        for user_id, order_id, symbol in rows:
            index[symbol].add((user_id, order_id))
        for symbol, user_id, order_id in announced:
            index[symbol].add((user_id, order_id))
        self.orders = index

    async def on_quote(self, quote: Quote) -> None:
        for user_id, order_id in list(self.orders.get(quote.symbol, ())):
            await self._match(user_id, order_id, quote)

    async def _match(self, user_id: uuid.UUID, order_id: uuid.UUID, quote: Quote) -> None:
        try:
            async with self.db.transaction(user_id) as uow:
                await self.trading.match_order(uow, order_id, quote)
            self.matched += 1
        except asyncio.CancelledError:
            # Only a stopping matcher cancels a match; if that came after the COMMIT, the
            # order's events were not all published.
            log.warning("matching cancelled", extra={"order_id": str(order_id)})
            raise
        except Exception:
            # One bad order must not stop the book; it is retried on the next quote.
            log.exception("matching failed", extra={"order_id": str(order_id)})

    async def on_new_order(self, data: dict[str, Any]) -> None:
        user_id, order_id, symbol = uuid.UUID(data["userId"]), uuid.UUID(data["id"]), data["symbol"]
        if symbol not in self.orders:
            self._wake.set()
        self.orders[symbol].add((user_id, order_id))
        if self._announced is not None:
            self._announced.append((symbol, user_id, order_id))
        quote = await self.trading.market.quote(symbol)
        if quote is not None:
            await self._match(user_id, order_id, quote)

    async def run(self) -> None:
        await run_on_quotes(
            self.hub,
            self.demand,
            self.on_quote,
            lambda _: self._listen_new_orders(),
            self._keep_book,
            name="paper matcher",
            log=log,
        )

    async def _listen_new_orders(self) -> None:
        while True:
            try:
                # Strict, not coalesced: every new order must be seen.
                async with self.hub.subscribe(NEW_ORDERS_CHANNEL) as sub:
                    # Orders placed before this point (or while a lost subscription was
                    # replaced) are found by reading the book again.
                    self._stale = True
                    self._wake.set()
                    async for message in sub:
                        try:
                            await self.on_new_order(message.data)
                        except Exception:
                            log.exception("a new order could not be handled")
            except SubscriptionLost as exc:
                log.warning("new-orders subscription lost (%s); subscribing again", exc)
                continue
            raise RuntimeError("the new-orders subscription ended")

    async def _keep_book(self, follower: QuoteFollower) -> None:
        # The first load comes once the new-orders subscription is in place (_stale).
        next_load = time.monotonic() + self.refresh_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(next_load - time.monotonic(), 0))
            self._wake.clear()
            if self._stale or time.monotonic() >= next_load:
                self._stale = False
                next_load = time.monotonic() + self.refresh_interval
                try:
                    # Orders that closed drop out; symbols nobody trades stop streaming.
                    await self.load()
                except Exception:
                    log.exception("could not read the open paper orders")
            try:
                await follower.follow(symbol for symbol, orders in self.orders.items() if orders)
            except Exception:
                # Tried again on the next change or refresh.
                log.exception("could not follow the quotes of the book")
