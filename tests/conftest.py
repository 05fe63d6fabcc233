"""Real PostgreSQL and Redis for every test: the URLs from the environment, else embedded.

The database is created fresh and migrated once per run (`alembic upgrade head`); tests
isolate themselves by creating their own users, so nothing has to be cleaned between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette

from domain.market.simulated import SimulatedMarket
from kianax.settings import Environment, Settings
from web.app import create_app

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    """(server URL for the owner role, Redis URL)."""
    database_url = os.environ.get("KIANAX_TEST_DATABASE_URL")
    redis_url = os.environ.get("KIANAX_TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if not database_url or not redis_url:
            from kianax import embedded

            home = Path(os.environ.get("KIANAX_HOME", REPO / ".kianax")) / "test"
            if not database_url:
                pg = embedded.start_postgres(home / "postgres")
                stack.callback(pg.stop)
                database_url = pg.url
            if not redis_url:
                redis = embedded.start_redis(home / "redis")
                stack.callback(redis.stop)
                redis_url = redis.url
        yield database_url, redis_url


@pytest.fixture(scope="session")
def redis_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture(scope="session")
async def database_url(servers: tuple[str, str]) -> AsyncIterator[str]:
    """A fresh database for this run, migrated to head, dropped at the end."""
    server = make_url(servers[0])
    name = f"kianax_test_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture(scope="session")
async def settings(database_url: str, redis_url: str) -> Settings:
    from kianax.migrate import migrate

    settings = Settings(
        env=Environment.TEST,
        database_url=database_url,
        redis_url=redis_url,
        log_json=False,
        # Test runs may share one Redis: each takes only the jobs it enqueued itself.
        job_queue=f"arq:{database_url.rsplit('/', 1)[-1]}",
    )
    await asyncio.to_thread(migrate, settings)
    return settings


@pytest.fixture(scope="session")
async def owner_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The migration role: sees every row. For assertions about the database itself."""
    assert settings.database_url
    engine = create_async_engine(settings.database_url)
    yield engine
    await engine.dispose()


# Tests run on a Wednesday morning, 10:00 New York time, whatever day it really is; the
# clock moves on with real time so that ticks, fills and expiries still happen in order.
TEST_EPOCH = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def clock() -> Callable[[], datetime]:
    started = time.monotonic()
    return lambda: TEST_EPOCH + timedelta(seconds=time.monotonic() - started)


@pytest.fixture(scope="session")
def market(clock: Callable[[], datetime]) -> SimulatedMarket:
    return SimulatedMarket(seed=7, clock=clock, tick_interval=0.05)


@pytest.fixture(scope="session")
async def app(
    settings: Settings, market: SimulatedMarket, clock: Callable[[], datetime]
) -> AsyncIterator[Starlette]:
    app = create_app(settings, provider=market, clock=clock)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kianax.test") as client:
        yield client


@dataclass
class GraphQLClient:
    http: httpx.AsyncClient
    token: str | None = None

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        bearer = token or self.token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def gql(http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
async def live_server(app: Starlette) -> AsyncIterator[str]:
    """The app behind a real uvicorn on loopback, for WebSocket tests. Yields host:port."""
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    await task


def random_ip() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def client_for(app: Starlette, ip: str | None = None) -> httpx.AsyncClient:
    """An HTTP client whose requests come from `ip` (rate limits are per address)."""
    transport = httpx.ASGITransport(app=app, client=(ip or random_ip(), 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://kianax.test")


REGISTER = """
mutation($input: RegisterInput!) {
  register(input: $input) {
    __typename
    ... on AuthPayload { accessToken refreshToken expiresAt user { id email } }
    ... on UserError { code message }
    ... on ValidationError { field }
    ... on RateLimited { retryAfterSeconds }
  }
}
"""


@dataclass
class SignedIn:
    gql: GraphQLClient
    user_id: str
    email: str
    password: str
    access_token: str
    refresh_token: str


@pytest.fixture
def signup(app: Starlette, http: httpx.AsyncClient) -> Any:
    async def make(email: str | None = None, password: str = "correct horse battery") -> SignedIn:  # noqa: S107
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        async with client_for(app) as client:
            body = await GraphQLClient(client)(
                REGISTER, {"input": {"email": email, "password": password}}
            )
        result = body["data"]["register"]
        assert result["__typename"] == "AuthPayload", result
        return SignedIn(
            gql=GraphQLClient(http, token=result["accessToken"]),
            user_id=result["user"]["id"],
            email=email,
            password=password,
            access_token=result["accessToken"],
            refresh_token=result["refreshToken"],
        )

    return make
