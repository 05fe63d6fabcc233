"""Broker tests: the app as in the other tests, plus what the worker runs for brokers (an
arq worker on a queue of its own and the trade-stream manager), with every connection's
`AlpacaBroker` -- the real alpaca-py client -- pointed at a local fake Alpaca."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from domain.auth.ratelimit import RateLimiter
from domain.brokers.alpaca import AlpacaBroker
from domain.brokers.base import Broker
from domain.brokers.crypto import KeyRing
from domain.brokers.service import BrokerService, Credentials
from domain.brokers.streams import BrokerStreams
from domain.brokers.types import BrokerEnvironment
from jobs.brokers import FUNCTIONS, BrokerJobs
from kianax.settings import Settings
from tests.conftest import SignedIn
from tests.fakes.alpaca_server import FakeAlpaca, running_fake_alpaca

WAIT = 10.0
# The fake answers in milliseconds; a delayed answer beyond this is a timeout.
REQUEST_TIMEOUT = 1.0

CONNECT = """
mutation($input: ConnectBrokerInput!) {
  connectBroker(input: $input) {
    __typename
    ... on BrokerConnected { connection {
      id provider environment status accountNumber keyHint lastSyncedAt lastError createdAt
    } }
    ... on UserError { code message }
    ... on ValidationError { field }
  }
}
"""
CONNECTIONS = """{ brokerConnections {
  id provider environment status accountNumber keyHint lastSyncedAt lastError createdAt } }"""
DISCONNECT = "mutation($id: ID!) { disconnectBroker(id: $id) }"
SYNC = """
mutation($id: ID!) {
  syncBroker(id: $id) {
    __typename
    ... on BrokerConnection { id status lastError lastSyncedAt }
    ... on UserError { code message }
  }
}
"""
PLACE = """
mutation($input: PlaceOrderInput!) {
  placeOrder(input: $input) {
    __typename
    ... on OrderPlaced { order { id status broker clientOrderId } }
    ... on UserError { code message }
    ... on ValidationError { field }
  }
}
"""
PORTFOLIO = """query($broker: BrokerKind) { portfolio(broker: $broker) {
  broker cash reserved buyingPower marketValue totalPnl
  positions { symbol quantity averageCost } } }"""
ORDER_DETAIL = """query($id: ID!) { order(id: $id) {
  id clientOrderId status broker rejectReason filledQuantity averageFillPrice
  fills { quantity price } } }"""


@dataclass
class Brokers:
    """What the tests drive: the fake Alpaca and the services the app and worker use."""

    fake: FakeAlpaca
    service: BrokerService
    streams: BrokerStreams

    def account(self, key_id: str) -> Any:
        return self.fake.accounts[key_id]


def fake_factory(fake: FakeAlpaca) -> Any:
    def build(environment: BrokerEnvironment, credentials: Credentials) -> Broker:
        return AlpacaBroker(
            credentials.key_id,
            credentials.secret,
            paper=environment is BrokerEnvironment.PAPER,
            base_url=fake.rest_url,
            timeout=REQUEST_TIMEOUT,
            reconnect_delay=0.05,
            max_reconnect_delay=0.2,
        )

    return build


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with running_fake_alpaca() as server:
        yield server


@pytest.fixture
async def brokers(
    app: Starlette, settings: Settings, fake: FakeAlpaca, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Brokers]:
    svc = app.state.services
    service = BrokerService(
        svc.db,
        svc.trading,
        svc.auth,
        KeyRing.from_base64(settings.master_key_ring),
        RateLimiter(svc.redis),
        fake_factory(fake),
        retry_delays=(0.05, 0.1, 0.2),
    )
    assert settings.redis_url
    queue = f"arq:brokers-test:{uuid.uuid4().hex}"
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=queue)
    monkeypatch.setattr(svc, "brokers", service)
    monkeypatch.setattr(svc.trading, "broker_orders", BrokerJobs(pool, queue_name=queue))
    worker = Worker(
        functions=FUNCTIONS,
        queue_name=queue,
        redis_pool=pool,
        ctx={"services": SimpleNamespace(brokers=service)},
        handle_signals=False,
        poll_delay=0.02,
        max_jobs=10,
    )
    streams = BrokerStreams(service, refresh_interval=0.1)
    tasks = [asyncio.create_task(worker.main()), asyncio.create_task(streams.run())]
    yield Brokers(fake, service, streams)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with warnings.catch_warnings():
        # arq 0.28 closes its pool with redis-py's deprecated close(); nothing to act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        await worker.close()


async def connect(
    user: SignedIn,
    key_id: str,
    secret: str,
    *,
    environment: str = "PAPER",
    totp_code: str | None = None,
) -> dict[str, Any]:
    body = await user.gql(
        CONNECT,
        {
            "input": {
                "provider": "ALPACA",
                "environment": environment,
                "apiKeyId": key_id,
                "apiSecret": secret,
                "totpCode": totp_code,
            }
        },
    )
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["connectBroker"]
    return result


async def connected(brokers: Brokers, user: SignedIn, key_id: str, secret: str) -> str:
    """Connect, and wait until the worker listens to the account's trade stream."""
    result = await connect(user, key_id, secret)
    assert result["__typename"] == "BrokerConnected", result
    await brokers.fake.wait_for(lambda: brokers.fake.listeners(key_id) == 1)
    connection_id: str = result["connection"]["id"]
    return connection_id


async def place(user: SignedIn, **fields: Any) -> dict[str, Any]:
    body = await user.gql(PLACE, {"input": fields})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["placeOrder"]
    return result


async def order(user: SignedIn, order_id: str) -> dict[str, Any]:
    body = await user.gql(ORDER_DETAIL, {"id": order_id})
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["order"]
    return found


async def wait_for_status(
    user: SignedIn, order_id: str, status: str, within: float = WAIT
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await order(user, order_id)
        if found["status"] == status:
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.05)


async def portfolio(user: SignedIn, broker: str | None = None) -> dict[str, Any]:
    body = await user.gql(PORTFOLIO, {"broker": broker})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["portfolio"]
    return result


async def broker_order_id(engine: AsyncEngine, order_id: str) -> str | None:
    async with engine.connect() as connection:
        found: str | None = await connection.scalar(
            text("SELECT broker_order_id FROM orders WHERE id = :id"), {"id": uuid.UUID(order_id)}
        )
    return found


def dec(value: str | None) -> Decimal:
    assert value is not None
    return Decimal(value)
