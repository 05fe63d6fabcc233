"""The trigger watcher: the quote stream drives price, volume and indicator triggers, in the
worker. The pattern of the paper matcher (domain.trading.paper): it keeps every enabled
market trigger of every active agent in a `TriggerIndex`, holds quote demand for their
symbols (so the feed streams them), evaluates each quote of `quotes:{SYMBOL}`, refreshes
daily indicators (and average volumes) every `indicator_interval`, and queues one agent
run per firing. It reloads when a user changes triggers (`triggers:changed`, published
after the commit) and every `refresh_interval` in case such a message was missed.

Like the matcher it reads quotes from one subscription for as long as it runs, whose
channels (and the quote demand) follow the symbols of its triggers (`QuoteFollower`): a
change of triggers never cancels the task that evaluates quotes and queues runs, so no
enqueue is cut off halfway and no quote of a symbol that stays is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from db.engine import Database
from db.repositories import agents as repo
from domain.agents.execution import RunRequest
from domain.agents.service import TRIGGERS_CHANGED_CHANNEL
from domain.market import codec
from domain.market.feed import QuoteDemand
from domain.market.indicators import Indicators
from domain.market.models import Quote, Timeframe
from domain.market.service import MarketDataError, MarketService
from domain.trading.paper import QuoteFollower
from domain.triggers.index import Firing, IndexedTrigger, TriggerIndex
from domain.triggers.spec import (
    IndicatorConfig,
    PriceConfig,
    TriggerConfigError,
    TriggerType,
    VolumeConfig,
    config_from_json,
)

log = logging.getLogger(__name__)

MARKET_TRIGGERS = frozenset(
    {TriggerType.PRICE.value, TriggerType.VOLUME.value, TriggerType.INDICATOR.value}
)


class Hub(Protocol):
    def subscribe(self, *channels: str, coalesce: bool = False) -> Any: ...


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
        self.types: dict[uuid.UUID, TriggerType] = {}
        self._previous: dict[str, Indicators] = {}
        self._reload = asyncio.Event()
        self._indicators_due = True
        self._next_indicators = 0.0
        self.fired = 0

    async def load(self) -> None:
        async with self.db.transaction(None) as uow:
            enabled = await repo.enabled_triggers(uow.session)
        by_user: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for row in enabled:
            if row.type in MARKET_TRIGGERS:
                by_user[row.user_id].append(row.trigger_id)
        loaded: list[IndexedTrigger] = []
        types: dict[uuid.UUID, TriggerType] = {}
        for user_id, ids in by_user.items():
            # Each user's triggers are read in that user's scope, under row-level security.
            async with self.db.transaction(user_id) as uow:
                found = await repo.active_triggers(uow.session, user_id, ids)
            for trigger, agent in found:
                try:
                    config = config_from_json(trigger.type, trigger.config)
                except TriggerConfigError:
                    log.warning("unreadable trigger", extra={"trigger_id": str(trigger.id)})
                    continue
                if not isinstance(config, PriceConfig | VolumeConfig | IndicatorConfig):
                    continue
                types[trigger.id] = trigger.type
                loaded.append(
                    IndexedTrigger(
                        trigger.id,
                        user_id,
                        agent.id,
                        config,
                        trigger.cooldown_seconds,
                        trigger.last_fired_at,
                    )
                )
        rejected = self.index.replace_all(loaded)
        if rejected:
            log.warning(
                "invalid triggers left out", extra={"trigger_ids": [str(r) for r in rejected]}
            )
        self.types = types
        symbols = frozenset(t.config.symbol for t in loaded)
        indicator_symbols = frozenset(
            t.config.symbol for t in loaded if not isinstance(t.config, PriceConfig)
        )
        if indicator_symbols - self.indicator_symbols:
            self._indicators_due = True  # new indicator triggers learn their values at once
        self.indicator_symbols = indicator_symbols
        self.symbols = symbols

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

    async def _fire(self, firings: list[Firing]) -> None:
        for firing in firings:
            request = RunRequest(
                firing.user_id,
                firing.agent_id,
                firing.event_key,
                trigger_id=firing.trigger_id,
                trigger_type=self.types.get(firing.trigger_id, TriggerType.PRICE),
                detail={"detail": firing.detail, "firedAt": firing.fired_at.isoformat()},
            )
            try:
                await self.enqueue_run(request)
                self.fired += 1
            except asyncio.CancelledError:
                # Only a stopping watcher cancels an enqueue: this run may not be queued.
                log.warning("queueing an agent run cancelled", extra={"job_id": request.job_id})
                raise
            except Exception:
                # One lost enqueue (Redis away) must not stop the watcher.
                log.exception("could not queue an agent run", extra={"job_id": request.job_id})

    async def _listen_changes(self) -> None:
        async with self.hub.subscribe(TRIGGERS_CHANGED_CHANNEL, coalesce=True) as sub:
            async for _ in sub:
                self._reload.set()
        raise RuntimeError("the triggers:changed subscription ended")

    async def _listen_quotes(self, quotes: Any) -> None:
        async for message in quotes:
            try:
                await self.on_quote(codec.quote_from_dict(message.data))
            except Exception:
                log.exception("a quote could not be evaluated", extra={"channel": message.channel})
        raise RuntimeError("the quote subscription ended")

    async def run(self) -> None:
        try:
            async with self.hub.subscribe(coalesce=True) as quotes:
                follower = QuoteFollower(quotes, self.demand)
                try:
                    await self.load()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._listen_changes())
                        group.create_task(self._listen_quotes(quotes))
                        group.create_task(self._keep_index(follower))
                finally:
                    await follower.aclose()
        except asyncio.CancelledError:
            log.info("trigger watcher stopped")
            raise
        except Exception:
            log.exception("trigger watcher failed")
            raise

    async def _keep_index(self, follower: QuoteFollower) -> None:
        next_load = time.monotonic() + self.refresh_interval
        while True:
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
            if self._reload.is_set() or time.monotonic() >= next_load:
                self._reload.clear()
                next_load = time.monotonic() + self.refresh_interval
                try:
                    await self.load()
                except Exception:
                    log.exception("could not load the market triggers")
