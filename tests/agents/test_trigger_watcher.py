"""The trigger watcher: every firing is queued, whole, while its symbols keep changing and
without holding up the quotes after it; its triggers are read again per user on a change
and all of them at intervals that a slow read does not shorten."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from starlette.applications import Starlette

from domain.agents.execution import RunRequest
from domain.agents.service import TRIGGERS_CHANGED_CHANNEL
from domain.agents.watcher import ENQUEUES_IN_FLIGHT, TriggerWatcher
from domain.market.codec import quote_to_dict
from domain.market.feed import Feed
from domain.market.models import Quote
from domain.market.service import quote_channel
from domain.market.simulated import SimulatedMarket
from domain.market.universe import UNIVERSE
from domain.triggers.spec import PriceConfig
from kianax.broadcast import Broadcast
from tests.agents.conftest import create
from tests.conftest import SignedIn

QUIET = "Buy MSFT when RSI < 5. Sell MSFT when RSI > 95"
SYMBOLS = [spec.symbol for spec in UNIVERSE[24:36]]


@pytest.fixture
async def hub() -> AsyncIterator[Broadcast]:
    """A hub of this test's own: Redis pub/sub carries other test runs' trigger changes."""
    async with Broadcast("memory://") as hub:
        yield hub


def quote(symbol: str, last: str, at: datetime) -> Quote:
    return Quote(symbol, None, None, Decimal(last), Decimal(1000), at, prev_close=Decimal(last))


async def _ignore(run: RunRequest) -> None:
    return None


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(condition: Callable[[], bool], within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_every_firing_is_queued_while_the_symbols_keep_changing(
    app: Starlette, market: SimulatedMarket, signup: Any
) -> None:
    svc = app.state.services
    started: list[str] = []
    finished: list[str] = []

    async def enqueue(run: RunRequest) -> None:
        started.append(run.job_id)
        await asyncio.sleep(0.1)  # a slow round trip to Redis
        finished.append(run.job_id)

    watcher = TriggerWatcher(
        svc.db,
        svc.market,
        svc.broadcast,
        svc.quote_demand,
        enqueue,
        refresh_interval=0.2,
        indicator_interval=3600,
    )
    feed = Feed(market, svc.redis, svc.broadcast, poll_interval=0.05)
    user: SignedIn = await signup()
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(watcher.run())]
    try:
        agents: set[str] = set()
        # Each agent brings a new symbol, so the watched set changes while earlier
        # symbols' first quotes fire and are being queued. One of a pair of tiny moves
        # since the previous close is true at once, so each symbol fires on a first quote.
        for symbol in SYMBOLS:
            saved = await create(
                user,
                name=f"Watching {symbol}",
                riskLimits={"allocationPercent": "5"},
                prompt=QUIET,
                triggers=[
                    {"price": {"symbol": symbol, "changePercent": "0.001"}},
                    {"price": {"symbol": symbol, "changePercent": "-0.001"}},
                ],
            )
            assert saved["__typename"] == "AgentSaved", saved
            agents.add(saved["agent"]["id"])

        def fired() -> set[str]:
            return {job.split(":")[1] for job in finished} & agents

        await _until(lambda: fired() == agents, within=10)
        await _until(lambda: len(finished) == len(started), within=2)
        assert not any(task.done() for task in tasks)
    finally:
        await _stop(*tasks)
    cut_off = sorted(set(started) - set(finished))
    assert not cut_off, f"{len(cut_off)} runs were cut off while being queued: {cut_off}"
    assert fired() == agents, f"{len(agents - fired())} of {len(agents)} agents never fired"


async def test_a_watcher_that_cannot_run_says_so(
    app: Starlette, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc = app.state.services

    async def enqueue(run: RunRequest) -> None:
        return None

    watcher = TriggerWatcher(
        svc.db, svc.market, Broadcast(redis_url), svc.quote_demand, enqueue, refresh_interval=0.1
    )
    with (
        caplog.at_level(logging.ERROR, logger="domain.agents.watcher"),
        pytest.raises(RuntimeError, match="not connected"),
    ):
        await asyncio.wait_for(watcher.run(), 5)
    logged = [r for r in caplog.records if r.name == "domain.agents.watcher"]
    assert [r.getMessage() for r in logged] == ["trigger watcher failed"]
    assert logged[0].exc_info is not None


class Loads(TriggerWatcher):
    """Notes when each full load starts and ends; each takes `delay` seconds longer."""

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.loads: list[tuple[float, float]] = []

    async def load(self) -> None:
        started = time.monotonic()
        await asyncio.sleep(self.delay)
        await super().load()
        self.loads.append((started, time.monotonic()))


async def test_a_load_longer_than_the_interval_is_not_followed_at_once_by_the_next(
    app: Starlette, hub: Broadcast
) -> None:
    svc = app.state.services
    watcher = Loads(
        svc.db,
        svc.market,
        hub,
        svc.quote_demand,
        _ignore,
        refresh_interval=0.2,
        indicator_interval=3600,
        delay=0.3,
    )
    task = asyncio.create_task(watcher.run())
    try:
        assert await _until(lambda: len(watcher.loads) >= 3, within=5)
    finally:
        await _stop(task)
    pauses = [start - end for (_, end), (start, _) in itertools.pairwise(watcher.loads)]
    assert min(pauses) >= 0.19, pauses


async def test_a_change_reloads_the_triggers_of_the_user_it_names(
    app: Starlette, hub: Broadcast, signup: Any
) -> None:
    svc = app.state.services
    watcher = Loads(svc.db, svc.market, hub, svc.quote_demand, _ignore, refresh_interval=3600)
    changer: SignedIn = await signup()
    bystander: SignedIn = await signup()

    async def trigger_of(user: SignedIn, symbol: str) -> uuid.UUID:
        saved = await create(
            user,
            name=f"Agent {uuid.uuid4().hex[:6]}",
            riskLimits={"allocationPercent": "5"},
            prompt=QUIET,
            triggers=[{"price": {"symbol": symbol, "above": "100000"}}],
        )
        assert saved["__typename"] == "AgentSaved", saved
        return uuid.UUID(saved["agent"]["triggers"][0]["id"])

    forwarding = asyncio.Event()

    async def forward_changes_of(user: SignedIn) -> None:
        # What the service publishes about this user, on the watcher's hub.
        async with svc.broadcast.subscribe(TRIGGERS_CHANGED_CHANNEL) as changes:
            forwarding.set()
            async for message in changes:
                if message.data.get("userId") == user.user_id:
                    await hub.publish(TRIGGERS_CHANGED_CHANNEL, message.data)

    first = [await trigger_of(changer, "KO"), await trigger_of(bystander, "PEP")]
    tasks = [
        asyncio.create_task(watcher.run()),
        asyncio.create_task(forward_changes_of(changer)),
    ]
    try:
        assert await _until(lambda: len(watcher.loads) == 1, within=5)
        assert all(t in watcher.index for t in first)
        await asyncio.wait_for(forwarding.wait(), 5)
        bystanders = await trigger_of(bystander, "PEP")
        changers = await trigger_of(changer, "MCD")
        assert await _until(lambda: changers in watcher.index, within=5)
        assert "MCD" in watcher.symbols
        # Only the user the message named was read again.
        assert bystanders not in watcher.index
        assert len(watcher.loads) == 1
        # A message that names nobody reads everybody's.
        await hub.publish(TRIGGERS_CHANGED_CHANNEL, {})
        assert await _until(lambda: len(watcher.loads) == 2, within=5)
        assert bystanders in watcher.index
    finally:
        await _stop(*tasks)


async def test_a_full_load_drops_the_triggers_of_users_who_have_none_left(
    app: Starlette, signup: Any
) -> None:
    svc = app.state.services
    watcher = TriggerWatcher(svc.db, svc.market, svc.broadcast, svc.quote_demand, _ignore)
    user: SignedIn = await signup()
    saved = await create(
        user, prompt=QUIET, triggers=[{"price": {"symbol": "KO", "above": "100000"}}]
    )
    trigger_id = uuid.UUID(saved["agent"]["triggers"][0]["id"])
    await watcher.load()
    assert trigger_id in watcher.index
    assert uuid.UUID(user.user_id) in watcher.index.users()
    await user.gql("mutation { pauseAllAgents { pausedAgents } }")
    await watcher.load()
    assert trigger_id not in watcher.index
    assert uuid.UUID(user.user_id) not in watcher.index.users()


async def test_evaluation_does_not_wait_for_runs_to_be_queued(app: Starlette) -> None:
    svc = app.state.services
    release = asyncio.Event()
    started: list[str] = []
    queued: list[str] = []

    async def enqueue(run: RunRequest) -> None:
        started.append(run.job_id)
        await release.wait()  # Redis is slow
        queued.append(run.job_id)

    watcher = TriggerWatcher(svc.db, svc.market, svc.broadcast, svc.quote_demand, enqueue)
    count = ENQUEUES_IN_FLIGHT + 5
    for level in range(count):
        config = PriceConfig("KO", above=Decimal(100 + level))
        watcher.index.add(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), config, 0)
    now = datetime.now(UTC)
    await watcher.on_quote(quote("KO", "99", now))
    # This quote fires as many triggers as may be queued at once: evaluating it does not
    # wait for any, and they are all on their way to Redis together.
    crossing = quote("KO", str(99 + ENQUEUES_IN_FLIGHT), now + timedelta(seconds=1))
    await asyncio.wait_for(watcher.on_quote(crossing), 1)
    assert await _until(lambda: len(started) == ENQUEUES_IN_FLIGHT, within=1)
    # The rest wait for room: memory stays bounded, and evaluation waits meanwhile.
    evaluating = asyncio.create_task(
        watcher.on_quote(quote("KO", "999", now + timedelta(seconds=2)))
    )
    await asyncio.sleep(0.2)
    assert (evaluating.done(), len(started), queued) == (False, ENQUEUES_IN_FLIGHT, [])
    release.set()
    await asyncio.wait_for(evaluating, 1)
    await watcher.flush()
    assert len(set(queued)) == watcher.fired == count
    assert sorted(queued) == sorted(started)


async def test_a_run_that_cannot_be_queued_costs_that_run_only(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    svc = app.state.services
    queued: list[str] = []
    failing = uuid.uuid4()

    async def enqueue(run: RunRequest) -> None:
        await asyncio.sleep(0.01)
        if run.trigger_id == failing:
            raise ConnectionError("Redis is away")
        queued.append(run.job_id)

    watcher = TriggerWatcher(svc.db, svc.market, svc.broadcast, svc.quote_demand, enqueue)
    for trigger_id, level in ((uuid.uuid4(), 100), (failing, 101), (uuid.uuid4(), 102)):
        config = PriceConfig("KO", above=Decimal(level))
        watcher.index.add(trigger_id, uuid.uuid4(), uuid.uuid4(), config, 0)
    now = datetime.now(UTC)
    with caplog.at_level(logging.ERROR, logger="domain.agents.watcher"):
        await watcher.on_quote(quote("KO", "99", now))
        await watcher.on_quote(quote("KO", "103", now + timedelta(seconds=1)))
        await watcher.flush()
    assert len(queued) == watcher.fired == 2
    [failed] = [r for r in caplog.records if r.name == "domain.agents.watcher"]
    assert failed.getMessage() == "could not queue an agent run"
    job_id = failed.__dict__["job_id"]
    assert str(failing) in job_id
    assert job_id not in queued


async def test_the_runs_being_queued_when_the_watcher_stops_are_logged(
    app: Starlette, hub: Broadcast, signup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    svc = app.state.services
    started: list[str] = []

    async def enqueue(run: RunRequest) -> None:
        started.append(run.job_id)
        await asyncio.Event().wait()  # Redis never answers

    watcher = TriggerWatcher(svc.db, svc.market, hub, svc.quote_demand, enqueue)
    user: SignedIn = await signup()
    symbol = SYMBOLS[0]
    saved = await create(
        user,
        name="Stopped",
        prompt=QUIET,
        triggers=[{"price": {"symbol": symbol, "above": "1000"}}],
    )
    trigger_id = saved["agent"]["triggers"][0]["id"]
    task = asyncio.create_task(watcher.run())
    at = datetime.now(UTC)

    def mine() -> list[str]:
        return [job for job in started if trigger_id in job]

    deadline = asyncio.get_running_loop().time() + 10
    try:
        while not mine():
            assert asyncio.get_running_loop().time() < deadline
            # Again until the watcher has loaded the trigger and follows its quotes.
            for price in ("999", "1001"):
                at += timedelta(seconds=1)
                await hub.publish(quote_channel(symbol), quote_to_dict(quote(symbol, price, at)))
            await asyncio.sleep(0.05)
            assert not task.done()
    finally:
        with caplog.at_level(logging.WARNING, logger="domain.agents.watcher"):
            await _stop(task)
    cancelled = [
        r.__dict__["job_id"]
        for r in caplog.records
        if r.getMessage() == "queueing an agent run cancelled"
    ]
    assert mine() and set(mine()) <= set(cancelled)
