from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from starlette.applications import Starlette

from domain.auth.mail import LogMailSender
from jobs.worker import WorkerSettings
from kianax.settings import Settings
from tests.brokers.conftest import brokers, fake
from tests.conftest import SignedIn
from tests.trading.conftest import paper_broker

__all__ = ["brokers", "fake", "paper_broker"]

SEED_STRATEGY = (
    "Buy AAPL when RSI < 30 and price drops 3%+. Sell when RSI > 70 or profit reaches 5%. "
    "Max position size: $5,000"
)

AGENT_FIELDS = """
  id name description kind status prompt symbols broker
  llm { provider model temperature }
  riskLimits { maxPositionValue maxDailyTrades allocationPercent }
  allocation { percent amount used agent { id } }
  triggers { id type description config enabled cooldownSeconds lastFiredAt webhookUrl }
  stats { trades winRate realizedPnl unrealizedPnl lastRunAt lastSummary }
"""
EXECUTION_FIELDS = """
  id status outcome summary error triggerType model inputTokens outputTokens costUsd latencyMs
  reasoning context riskCheck startedAt finishedAt prompt
  decisions { action symbol quantity notional orderType limitPrice confidence reasoning }
  orders { id status symbol side quantity notional clientOrderId agentId }
  agent { id name } trigger { id type }
"""
CREATE = f"""
mutation($input: CreateAgentInput!) {{
  createAgent(input: $input) {{
    __typename
    ... on AgentSaved {{ agent {{ {AGENT_FIELDS} }} webhookSecrets {{ triggerId url secret }} }}
    ... on UserError {{ code message }}
    ... on ValidationError {{ field }}
  }}
}}
"""
RUN = """
mutation($id: ID!) {
  runAgent(id: $id) {
    __typename
    ... on AgentRunQueued { execution { id status } }
    ... on UserError { code message }
    ... on ValidationError { field }
    ... on RateLimited { retryAfterSeconds }
  }
}
"""
EXECUTIONS = f"""
query($id: ID!) {{ agent(id: $id) {{ executions(first: 50) {{ edges {{ node {{
  {EXECUTION_FIELDS}
}} }} }} }} }}
"""
AGENT = f"query($id: ID!) {{ agent(id: $id) {{ {AGENT_FIELDS} }} }}"


@pytest.fixture(scope="session")
async def worker(app: Starlette, settings: Settings) -> AsyncIterator[Worker]:
    """An arq worker in this process, on this run's own queue, with the app's services."""
    assert settings.redis_url
    pool = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.job_queue
    )
    worker = Worker(
        functions=cast(list[Any], WorkerSettings.functions),
        queue_name=settings.job_queue,
        redis_pool=pool,
        ctx={"services": app.state.services, "mailer": LogMailSender()},
        handle_signals=False,
        poll_delay=0.05,
        max_jobs=10,
    )
    task = asyncio.create_task(worker.main())
    yield worker
    worker.handle_sig(signal.SIGUSR1)  # what a stopping worker does: cancel its jobs
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    await pool.aclose()


def rules_agent(**overrides: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "name": "Dip Buyer",
        "prompt": SEED_STRATEGY,
        "riskLimits": {"allocationPercent": "10", "maxPositionValue": "6000"},
    }
    return agent | overrides


async def create(user: SignedIn, **fields: Any) -> dict[str, Any]:
    body = await user.gql(CREATE, {"input": rules_agent(**fields)})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["createAgent"]
    return result


async def run(user: SignedIn, agent_id: str) -> dict[str, Any]:
    body = await user.gql(RUN, {"id": agent_id})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["runAgent"]
    return result


async def executions(user: SignedIn, agent_id: str) -> list[dict[str, Any]]:
    body = await user.gql(EXECUTIONS, {"id": agent_id})
    assert "errors" not in body, body
    return [e["node"] for e in body["data"]["agent"]["executions"]["edges"]]


async def finished(user: SignedIn, agent_id: str, execution_id: str, within: float = 10) -> Any:
    """The execution once it is no longer RUNNING."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = {e["id"]: e for e in await executions(user, agent_id)}
        execution = found.get(execution_id)
        if execution is not None and execution["status"] != "RUNNING":
            return execution
        assert asyncio.get_running_loop().time() < deadline, execution
        await asyncio.sleep(0.05)


async def run_to_end(user: SignedIn, agent_id: str) -> Any:
    queued = await run(user, agent_id)
    assert queued["__typename"] == "AgentRunQueued", queued
    assert queued["execution"]["status"] == "RUNNING"
    return await finished(user, agent_id, queued["execution"]["id"])


async def orders_of(user: SignedIn) -> list[dict[str, Any]]:
    body = await user.gql(
        "{ orders(first: 100) { edges { node { id status symbol side quantity notional agentId"
        " filledQuantity averageFillPrice clientOrderId } } } }"
    )
    assert "errors" not in body, body
    return [e["node"] for e in body["data"]["orders"]["edges"]]
