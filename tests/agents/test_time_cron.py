"""The minute cron fires the minute it was scheduled for, even when it starts late."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from arq.worker import Worker
from starlette.applications import Starlette

from jobs import agents as jobs
from tests.agents.conftest import create, executions
from tests.conftest import SignedIn

QUIET = "Buy MSFT when RSI < 5. Sell MSFT when RSI > 95"


async def test_a_late_tick_fires_its_own_minute(
    app: Starlette, signup: Any, worker: Worker
) -> None:
    svc = app.state.services
    user: SignedIn = await signup()
    # Scheduled 70 s ago, so its minute is not the one it now runs in (a worker busy with a
    # burst of runs starts its next tick late).
    late = 70.0
    minute = (svc.trading.clock() - timedelta(seconds=late)).minute
    saved = await create(user, prompt=QUIET, triggers=[{"time": {"cron": f"{minute} * * * *"}}])
    agent_id = saved["agent"]["id"]

    await jobs.schedule_time_triggers({"services": svc, "score": (time.time() - late) * 1000})

    deadline = asyncio.get_running_loop().time() + 10
    while not [e for e in await executions(user, agent_id) if e["status"] != "RUNNING"]:
        assert asyncio.get_running_loop().time() < deadline, "the late minute's trigger fired"
        await asyncio.sleep(0.05)
    [execution] = await executions(user, agent_id)
    assert (execution["triggerType"], execution["status"]) == ("TIME", "SUCCEEDED")
