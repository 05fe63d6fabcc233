"""The trigger watcher while its symbols keep changing: every firing is queued, whole."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette

from domain.agents.execution import RunRequest
from domain.agents.watcher import TriggerWatcher
from domain.market.feed import Feed
from domain.market.simulated import SimulatedMarket
from domain.market.universe import UNIVERSE
from kianax.broadcast import Broadcast
from tests.agents.conftest import create
from tests.conftest import SignedIn

QUIET = "Buy MSFT when RSI < 5. Sell MSFT when RSI > 95"
SYMBOLS = [spec.symbol for spec in UNIVERSE[24:36]]


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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
