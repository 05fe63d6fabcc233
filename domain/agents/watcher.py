"""The trigger watcher: the quote stream drives price, volume and indicator triggers, in the
worker. The pattern of the paper matcher (domain.trading.paper): it keeps every enabled
market trigger of every active agent in a `TriggerIndex`, holds quote demand for their
symbols (so the feed streams them), evaluates each quote of `quotes:{SYMBOL}`, refreshes
daily indicators (and average volumes) every `indicator_interval`, and queues one agent
run per firing.

When a user changes triggers, `triggers:changed` (published after the commit) names them
and only their triggers are read again. Everybody's are read again `refresh_interval`
after the previous full read ended, in case a message was missed: a read that takes
longer than the interval is not followed at once by the next. A full read replaces each
user's triggers as it reads them, so quotes are evaluated in between. The subscription
is strict, since a message dropped for a later one would lose a user; when it is lost,
and when it starts, everything is read again.

Like the matcher it reads quotes from one subscription for as long as it runs, whose
channels (and the quote demand) follow the symbols of its triggers (`QuoteFollower`): a
change of triggers never cancels the task that evaluates quotes, so no quote of a symbol
that stays is lost.

Evaluation does not wait for Redis: each run is queued by a task of its own, at most
`ENQUEUES_IN_FLIGHT` at once, so a burst of firings (every condition that holds when the
watcher starts) is queued concurrently while the next quotes are evaluated. With that
many in flight, evaluation waits for one to finish, which bounds the memory a burst
takes. A failed enqueue is logged and costs that run only; the enqueues in flight when
the watcher stops are cancelled, each logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from db.engine import Database
from db.repositories import agents as repo
from domain.agents.execution import RunRequest
from domain.agents.service import TRIGGERS_CHANGED_CHANNEL
from domain.market.feed import QuoteDemand
from domain.market.indicators import Indicators
from domain.market.models import Quote, Timeframe
from domain.market.service import MarketDataError, MarketService
from domain.trading.paper import Hub, QuoteFollower, run_on_quotes
from domain.triggers.index import Firing, IndexedTrigger, TriggerIndex
from domain.triggers.spec import (
    IndicatorConfig,
    PriceConfig,
    TriggerConfigError,
    TriggerType,
    VolumeConfig,
    config_from_json,
)
from kianax.broadcast import SubscriptionLost

log = logging.getLogger(__name__)

MARKET_TRIGGERS = (TriggerType.PRICE, TriggerType.VOLUME, TriggerType.INDICATOR)
# Enough to queue a start-up burst of firings over a handful of Redis connections.
ENQUEUES_IN_FLIGHT = 16


class TriggerWatcher:
    def __init__(
        self,
        db: Database,
        market: MarketService,
        hub: Hub,
        demand: QuoteDemand,
        enqueue_run: Callable[[RunRequest], Awaitable[None]],
        *,
        refresh_interval: float = 30.0,
        indicator_interval: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.market = market
        self.hub = hub
        self.demand = demand
        self.enqueue_run = enqueue_run
        self.refresh_interval = refresh_interval
        self.indicator_interval = indicator_interval
        self.clock = clock
        self.index = TriggerIndex()
        self.symbols: frozenset[str] = frozenset()
        # Symbols whose indicator (or volume) triggers need daily indicators.
        self.indicator_symbols: frozenset[str] = frozenset()
        self._previous: dict[str, Indicators] = {}
        self._reload = asyncio.Event()
        self._reload_all = False
        self._changed_users: set[uuid.UUID] = set()
        self._indicators_due = True
        self._next_indicators = 0.0
        self._enqueue_slots = asyncio.Semaphore(ENQUEUES_IN_FLIGHT)
        self._enqueues: set[asyncio.Task[None]] = set()
        self.fired = 0

    async def load(self) -> None:
        """Read every user's market triggers again."""
        async with self.db.transaction(None) as uow:
            users = set(await repo.users_with_enabled_triggers(uow.session, MARKET_TRIGGERS))
        rejected: list[uuid.UUID] = []
        # User by user: replacing everybody's triggers in one go (`replace_all`) holds up the
        # quotes for more than a second at 100,000 triggers.
        for user_id in users:
            rejected += self.index.replace_user(user_id, await self._read(user_id))
        for user_id in self.index.users() - users:
            self.index.replace_user(user_id, [])
        self._indexed(rejected)

    async def load_user(self, user_id: uuid.UUID) -> None:
        """Read one user's market triggers again."""
        self._indexed(self.index.replace_user(user_id, await self._read(user_id)))

    async def _read(self, user_id: uuid.UUID) -> list[IndexedTrigger]:
        # Each user's triggers are read in that user's scope, under row-level security.
        async with self.db.transaction(user_id) as uow:
            rows = await repo.active_triggers_of_types(uow.session, user_id, MARKET_TRIGGERS)
        read: list[IndexedTrigger] = []
        for row in rows:
            try:
                config = config_from_json(row.type, row.config)
            except TriggerConfigError:
                log.warning("unreadable trigger", extra={"trigger_id": str(row.id)})
                continue
            if isinstance(config, PriceConfig | VolumeConfig | IndicatorConfig):
                read.append(
                    IndexedTrigger(
                        row.id,
                        user_id,
                        row.agent_id,
                        config,
                        row.cooldown_seconds,
                        row.last_fired_at,
                    )
                )
        return read

    def _indexed(self, rejected: list[uuid.UUID]) -> None:
        if rejected:
            log.warning(
                "invalid triggers left out", extra={"trigger_ids": [str(r) for r in rejected]}
            )
        indicator_symbols = self.index.indicator_symbols()
        if indicator_symbols - self.indicator_symbols:
            self._indicators_due = True  # new indicator triggers learn their values at once
        self.indicator_symbols = indicator_symbols
        self.symbols = self.index.symbols()

    async def on_quote(self, quote: Quote) -> None:
        await self._fire(self.index.evaluate(quote))

    async def refresh_indicators(self) -> None:
        for symbol in sorted(self.indicator_symbols):
            try:
                current = await self.market.indicators(symbol, Timeframe.DAY)
            except MarketDataError:
                continue
            self.index.set_average_volume(symbol, current.average_volume20)
            firings = self.index.update_indicators(
                symbol, current, self._previous.get(symbol), self.clock()
            )
            self._previous[symbol] = current
            await self._fire(firings)

    async def flush(self) -> None:
        """Wait until the runs of the firings so far are queued, or failed to be."""
        if self._enqueues:
            await asyncio.wait(self._enqueues)

    async def _fire(self, firings: list[Firing]) -> None:
        for firing in firings:
            request = RunRequest(
                firing.user_id,
                firing.agent_id,
                firing.event_key,
                trigger_id=firing.trigger_id,
                trigger_type=firing.trigger_type,
                detail={"detail": firing.detail, "firedAt": firing.fired_at.isoformat()},
            )
            try:
                await self._enqueue_slots.acquire()
            except asyncio.CancelledError:
                _cancelled(request)
                raise
            task = asyncio.create_task(self._enqueue(request))
            self._enqueues.add(task)
            task.add_done_callback(functools.partial(self._enqueued, request))

    async def _enqueue(self, request: RunRequest) -> None:
        try:
            await self.enqueue_run(request)
            self.fired += 1
        except Exception:
            # One lost enqueue (Redis away) must not stop the watcher.
            log.exception("could not queue an agent run", extra={"job_id": request.job_id})

    def _enqueued(self, request: RunRequest, task: asyncio.Task[None]) -> None:
        self._enqueues.discard(task)
        self._enqueue_slots.release()
        if task.cancelled():
            _cancelled(request)

    async def _listen_changes(self) -> None:
        while True:
            try:
                async with self.hub.subscribe(TRIGGERS_CHANGED_CHANNEL) as sub:
                    # Changes made before this point (or while a lost subscription was
                    # replaced) are found by reading everything again.
                    self._reload_all = True
                    self._reload.set()
                    async for message in sub:
                        self._changed(message.data)
            except SubscriptionLost as exc:
                log.warning("triggers:changed subscription lost (%s); subscribing again", exc)
                continue
            raise RuntimeError("the triggers:changed subscription ended")

    def _changed(self, data: Any) -> None:
        try:
            user_id = uuid.UUID(str(data["userId"]))
        except (KeyError, TypeError, ValueError):
            # A message that names nobody (from a publisher older than the user id).
            self._reload_all = True
        else:
            self._changed_users.add(user_id)
        self._reload.set()

    async def run(self) -> None:
        try:
            # The first load comes once the triggers:changed subscription is in place.
            await run_on_quotes(
                self.hub,
                self.demand,
                self.on_quote,
                lambda _: self._listen_changes(),
                self._keep_index,
                name="trigger watcher",
                log=log,
            )
        finally:
            for task in self._enqueues:
                task.cancel()
            await self.flush()

    async def _keep_index(self, follower: QuoteFollower) -> None:
        next_load = time.monotonic() + self.refresh_interval
        while True:
            if self._reload_all or time.monotonic() >= next_load:
                self._reload_all = False
                self._changed_users.clear()  # read with everybody else's
                try:
                    await self.load()
                except Exception:
                    log.exception("could not load the market triggers")
                # From the end of this load, so that loads never follow one another back to back.
                next_load = time.monotonic() + self.refresh_interval
            while self._changed_users:
                user_id = self._changed_users.pop()
                try:
                    await self.load_user(user_id)
                except Exception:
                    # Read again at the next full load.
                    log.exception(
                        "could not load a user's market triggers", extra={"user_id": str(user_id)}
                    )
            if follower.symbols != self.symbols:
                try:
                    await follower.follow(self.symbols)
                except Exception:
                    # Tried again the next time round.
                    log.exception("could not follow the quotes of the triggers")
            if self._indicators_due or time.monotonic() >= self._next_indicators:
                self._indicators_due = False
                try:
                    await self.refresh_indicators()
                except Exception:
                    log.exception("could not refresh the indicators")
                self._next_indicators = time.monotonic() + self.indicator_interval
            wake = min(next_load, self._next_indicators)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), max(wake - time.monotonic(), 0))
            self._reload.clear()


def _cancelled(request: RunRequest) -> None:
    # Only a stopping watcher cancels an enqueue: this run may not be queued.
    log.warning("queueing an agent run cancelled", extra={"job_id": request.job_id})
