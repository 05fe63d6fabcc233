"""Runs as jobs: one execution per (agent, event), crash retries without duplicate orders,
the per-user cap, the minute schedule of TIME triggers and the quote-driven watcher."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from arq.worker import Retry, Worker
from redis.asyncio import Redis
from starlette.applications import Starlette

from domain import notifications
from domain.agents.execution import RunRequest
from domain.agents.schedule import due_time_runs
from domain.agents.watcher import TriggerWatcher
from domain.market.models import Quote
from domain.triggers.spec import TriggerType
from jobs import agents as jobs
from tests.agents.conftest import create, executions, orders_of, run
from tests.conftest import SignedIn

ALWAYS_BUYS = "Buy $100 of MSFT. Max position size: $10,000"
QUIET = "Buy MSFT when RSI < 5. Sell MSFT when RSI > 95"


async def agent_of(user: SignedIn, prompt: str, **fields: Any) -> str:
    saved = await create(user, name=f"agent {uuid.uuid4().hex[:6]}", prompt=prompt, **fields)
    assert saved["__typename"] == "AgentSaved", saved
    agent_id: str = saved["agent"]["id"]
    return agent_id


def request(user: SignedIn, agent_id: str, event: str, **fields: Any) -> RunRequest:
    return RunRequest(uuid.UUID(user.user_id), uuid.UUID(agent_id), event, **fields)


async def test_a_duplicate_event_runs_once(app: Starlette, signup: Any, worker: Worker) -> None:
    svc = app.state.services
    user: SignedIn = await signup()
    agent_id = await agent_of(user, ALWAYS_BUYS)
    event = request(user, agent_id, "event-1")

    # Enqueued twice (two evaluators saw the same tick), then run once more by hand.
    await svc.agents.enqueue_run(event)
    await svc.agents.enqueue_run(event)
    deadline = asyncio.get_running_loop().time() + 10
    while not [e for e in await executions(user, agent_id) if e["status"] != "RUNNING"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    [execution] = await executions(user, agent_id)
    again = await svc.agents.executor.run(event)

    assert str(again) == execution["id"]
    assert len(await executions(user, agent_id)) == 1
    [order] = await orders_of(user)
    assert Decimal(order["notional"]) == Decimal("100.00")


class Crash(BaseException):
    """The worker process dying mid-run: no `except Exception` catches it."""


async def test_a_crashed_run_is_retried_without_duplicate_orders(
    app: Starlette, signup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = app.state.services.agents.executor
    user: SignedIn = await signup()
    agent_id = await agent_of(user, ALWAYS_BUYS)
    event = request(user, agent_id, "event-crash")
    real_notify = notifications.notify

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise Crash  # after the order was placed, before the commit

    monkeypatch.setattr(notifications, "notify", crash)
    with pytest.raises(Crash):
        await executor.run(event)
    [running] = await executions(user, agent_id)
    assert running["status"] == "RUNNING" and running["orders"] == []
    assert await orders_of(user) == []  # rolled back with the run

    monkeypatch.setattr(notifications, "notify", real_notify)
    retried = await executor.run(event)  # what arq does with the job of a dead worker
    [finished] = await executions(user, agent_id)
    assert str(retried) == finished["id"] == running["id"]
    assert finished["status"] == "SUCCEEDED" and finished["outcome"] == "ordered"
    [order] = await orders_of(user)
    assert order["clientOrderId"] == f"ax-{uuid.UUID(finished['id']).hex}-0"
    # A third attempt finds the run finished and does nothing.
    await executor.run(event)
    assert len(await orders_of(user)) == 1


async def test_run_slots_cap_each_user_and_expire(redis: Redis) -> None:
    slots = jobs.RunSlots(redis, cap=2, lease=1)
    user, other = uuid.uuid4(), uuid.uuid4()
    assert await slots.acquire(user, "a") and await slots.acquire(user, "b")
    assert not await slots.acquire(user, "c")
    assert await slots.acquire(user, "a")  # a retried job keeps its own slot
    assert await slots.acquire(other, "a")  # other users are not held up
    await slots.release(user, "b")
    assert await slots.acquire(user, "c")
    assert not await slots.acquire(user, "d")
    await asyncio.sleep(1.1)  # the leases of a dead worker end
    assert await slots.acquire(user, "d")


async def test_a_run_waits_for_a_slot_then_gives_up_as_busy(
    app: Starlette, signup: Any, redis: Redis
) -> None:
    svc = app.state.services
    user: SignedIn = await signup()
    agent_id = await agent_of(user, ALWAYS_BUYS)
    event = request(user, agent_id, "event-busy")
    slots = jobs.RunSlots(redis)
    for holder in range(jobs.MAX_RUNS_PER_USER):
        assert await slots.acquire(event.user_id, f"other-{holder}")
    ctx = {"services": svc, "job_try": 1}

    with pytest.raises(Retry):
        await jobs.run_agent(ctx, event.to_job())
    assert await executions(user, agent_id) == []

    ctx["job_try"] = jobs.MAX_TRIES
    await jobs.run_agent(ctx, event.to_job())
    [skipped] = await executions(user, agent_id)
    assert (skipped["status"], skipped["outcome"]) == ("SKIPPED", "busy")
    assert await orders_of(user) == []

    for holder in range(jobs.MAX_RUNS_PER_USER):
        await slots.release(event.user_id, f"other-{holder}")


async def test_time_triggers_are_due_in_their_minute_on_market_days(
    app: Starlette, signup: Any
) -> None:
    db = app.state.services.db
    user: SignedIn = await signup()
    saved = await create(
        user, prompt=QUIET, triggers=[{"time": {"cron": "30 10 * * *", "cooldownSeconds": 0}}]
    )
    agent_id = saved["agent"]["id"]
    trigger_id = saved["agent"]["triggers"][0]["id"]

    async def due(at: datetime) -> list[RunRequest]:
        return [r for r in await due_time_runs(db, at) if str(r.agent_id) == agent_id]

    wednesday = datetime(2026, 11, 18, 15, 30, 20, tzinfo=UTC)  # 10:30:20 in New York
    [run] = await due(wednesday)
    assert run.trigger_type is TriggerType.TIME and str(run.trigger_id) == trigger_id
    assert run.event_key == f"{trigger_id}:20261118T1530Z"
    assert run.job_id == f"agent:{agent_id}:{trigger_id}:20261118T1530Z"
    assert await due(wednesday + timedelta(minutes=1)) == []
    # Thanksgiving: the exchange is closed, and the trigger runs on market days only.
    assert await due(datetime(2026, 11, 26, 15, 30, tzinfo=UTC)) == []
    await user.gql("mutation($id: ID!) { pauseAgent(id: $id) { __typename } }", {"id": agent_id})
    assert await due(wednesday) == []


def quote(symbol: str, last: str, at: datetime) -> Quote:
    return Quote(symbol, None, None, Decimal(last), Decimal(1000), at, prev_close=Decimal(last))


async def test_the_watcher_queues_a_run_when_a_price_trigger_fires(
    app: Starlette, signup: Any, clock: Callable[[], datetime]
) -> None:
    svc = app.state.services
    queued: list[RunRequest] = []

    async def enqueue(run: RunRequest) -> None:
        queued.append(run)

    watcher = TriggerWatcher(svc.db, svc.market, svc.broadcast, svc.quote_demand, enqueue)
    user: SignedIn = await signup()
    saved = await create(
        user,
        prompt=QUIET,
        triggers=[
            {"price": {"symbol": "KO", "above": "1000", "cooldownSeconds": 600}},
            {"indicator": {"symbol": "KO", "indicator": "RSI14", "condition": "<= 100"}},
        ],
    )
    agent_id = saved["agent"]["id"]
    price_id, indicator_id = (t["id"] for t in saved["agent"]["triggers"])
    await watcher.load()
    assert "KO" in watcher.symbols

    def mine() -> list[RunRequest]:
        return [r for r in queued if str(r.agent_id) == agent_id]

    now = clock()
    await watcher.on_quote(quote("KO", "999", now))
    await watcher.flush()
    assert mine() == []
    await watcher.on_quote(quote("KO", "1001", now + timedelta(seconds=1)))
    await watcher.flush()
    [fired] = mine()
    assert str(fired.trigger_id) == price_id and fired.trigger_type is TriggerType.PRICE
    assert fired.detail["detail"] == "When KO crosses above $1,000: price $1001"
    # Down and up again within the cooldown: no second run.
    await watcher.on_quote(quote("KO", "990", now + timedelta(seconds=2)))
    await watcher.on_quote(quote("KO", "1002", now + timedelta(seconds=3)))
    await watcher.flush()
    assert len(mine()) == 1

    # RSI is always <= 100: the indicator trigger fires on its first update.
    await watcher.refresh_indicators()
    await watcher.flush()
    [indicator] = [r for r in mine() if str(r.trigger_id) == indicator_id]
    assert indicator.trigger_type is TriggerType.INDICATOR

    # Removed triggers leave the index at the next load.
    await user.gql("mutation($id: ID!) { removeTrigger(id: $id) }", {"id": price_id})
    await watcher.load()
    await watcher.on_quote(quote("KO", "1", now + timedelta(hours=1)))
    await watcher.on_quote(quote("KO", "2000", now + timedelta(hours=1, seconds=1)))
    await watcher.flush()
    assert len([r for r in mine() if str(r.trigger_id) == price_id]) == 1


async def test_the_running_watcher_reloads_when_triggers_change(
    app: Starlette, signup: Any
) -> None:
    svc = app.state.services
    watcher = TriggerWatcher(
        svc.db, svc.market, svc.broadcast, svc.quote_demand, _ignore, refresh_interval=3600
    )
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.3)
        user: SignedIn = await signup()
        saved = await create(
            user, prompt=QUIET, triggers=[{"volume": {"symbol": "PEP", "multipleOfAverage": "3"}}]
        )
        trigger_id = uuid.UUID(saved["agent"]["triggers"][0]["id"])
        # A full load places each user's triggers as it reads them, and follows the new
        # symbols once it has read everybody's.
        await _until(lambda: trigger_id in watcher.index and "PEP" in watcher.symbols)
        await user.gql("mutation { pauseAllAgents { pausedAgents } }")
        await _until(lambda: trigger_id not in watcher.index)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _ignore(run: RunRequest) -> None:
    return None


async def _until(condition: Callable[[], bool], within: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_a_run_that_cannot_be_queued_does_not_stay_running(
    app: Starlette, signup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user: SignedIn = await signup()
    agent_id = await agent_of(user, QUIET)

    async def redis_is_away(run: RunRequest) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(app.state.services.agents, "enqueue_run", redis_is_away)
    queued = await run(user, agent_id)
    assert queued["__typename"] == "AgentRunQueued", queued
    [execution] = await executions(user, agent_id)
    assert (execution["status"], execution["outcome"]) == ("SKIPPED", "not_queued")


async def test_the_minute_cron_runs_a_due_time_trigger(
    app: Starlette, signup: Any, worker: Worker
) -> None:
    svc = app.state.services
    user: SignedIn = await signup()
    saved = await create(user, prompt=QUIET, triggers=[{"time": {"cron": "* * * * *"}}])
    agent_id = saved["agent"]["id"]

    assert await jobs.schedule_time_triggers({"services": svc}) >= 1

    deadline = asyncio.get_running_loop().time() + 10
    while not [e for e in await executions(user, agent_id) if e["status"] != "RUNNING"]:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    [execution] = await executions(user, agent_id)
    assert execution["triggerType"] == "TIME" and execution["status"] == "SUCCEEDED"
    assert execution["trigger"]["id"] == saved["agent"]["triggers"][0]["id"]
    assert (
        execution["context"]["trigger"]["description"]
        == "Every minute on market days America/New_York"
    )
