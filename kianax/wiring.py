"""The composition root: builds the long-lived services a process needs, and closes them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from redis.asyncio import Redis

from db.engine import Database
from domain.agents.execution import Executor, RunRequest
from domain.agents.registry import ModelRegistry
from domain.agents.service import AgentService
from domain.auth.ratelimit import RateLimiter
from domain.auth.service import AuthService
from domain.brokers.crypto import KeyRing
from domain.brokers.service import BrokerService, alpaca_factory
from domain.market.feed import QuoteDemand
from domain.market.models import MarketDataProvider
from domain.market.service import MarketService
from domain.trading.service import TradingService
from jobs.brokers import BrokerJobs
from kianax.broadcast import Broadcast
from kianax.logs import route_library_loggers
from kianax.settings import Settings


def shifted_clock(start: datetime, anchor: datetime | None = None) -> Callable[[], datetime]:
    """A clock that read `start` at wall-clock `anchor` (default: now) and runs in real time."""
    offset = start - (anchor or datetime.now(UTC))
    return lambda: datetime.now(UTC) + offset


def build_market_provider(
    settings: Settings, clock: Callable[[], datetime] | None = None
) -> MarketDataProvider:
    if settings.massive_api_key:
        from domain.market.massive import MassiveMarket

        route_library_loggers()
        return MassiveMarket(
            settings.massive_api_key,
            rest_base_url=settings.massive_rest_url,
            ws_url=settings.massive_ws_url,
        )
    from domain.market.simulated import SimulatedMarket

    return SimulatedMarket(seed=settings.market_seed, clock=clock)


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: Redis
    broadcast: Broadcast
    provider: MarketDataProvider
    market: MarketService
    quote_demand: QuoteDemand
    jobs: ArqRedis
    auth: AuthService
    trading: TradingService
    agents: AgentService
    brokers: BrokerService
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def services(
    settings: Settings,
    *,
    provider: MarketDataProvider | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Services]:
    """`provider` and `clock` replace the configured market and the wall clock (tests)."""
    if not settings.redis_url:
        raise RuntimeError("KIANAX_REDIS_URL is not set")
    db = Database(
        settings.runtime_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    redis = Redis.from_url(settings.redis_url)
    # A user's order and portfolio streams end (and the client refetches) rather than
    # silently skip what was published while Redis was away; quotes simply carry on.
    # Several publish connections: under load one connection made publishes queue past
    # their time limit (bench/README.md).
    broadcast = Broadcast(
        settings.redis_url, interrupt_strict_on_reconnect=True, max_publish_connections=4
    )
    await broadcast.connect()
    if clock is None and settings.simulated_time_start and not settings.massive_api_key:
        clock = shifted_clock(settings.simulated_time_start, settings.simulated_time_anchor)
    provider = provider or build_market_provider(settings, clock)
    demand = QuoteDemand(redis)
    jobs = await create_pool(
        RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.job_queue
    )

    async def enqueue_email(user_id: uuid.UUID, message_id: uuid.UUID) -> None:
        await jobs.enqueue_job(
            "send_email", str(user_id), str(message_id), _job_id=f"email:{message_id}"
        )

    async def enqueue_run(run: RunRequest) -> None:
        # The job id makes a second enqueue of the same event (a retry, a second
        # evaluator) a no-op while the first is known to arq; the execution row's
        # UNIQUE (agent_id, event_key) makes it harmless forever after.
        await jobs.enqueue_job("run_agent", run.to_job(), _job_id=run.job_id)

    now = clock or (lambda: datetime.now(UTC))
    market = MarketService(provider, redis, clock=now)
    trading = TradingService(
        market,
        broadcast,
        Decimal(settings.paper_starting_cash),
        clock=now,
        broker_orders=BrokerJobs(jobs),
    )
    auth = AuthService(settings, redis, enqueue_email=enqueue_email)
    executor = Executor(
        db,
        market,
        trading,
        broadcast,
        ModelRegistry(
            openai_api_key=settings.openai_api_key,
            openai_base_url=settings.openai_base_url,
            anthropic_api_key=settings.anthropic_api_key,
            anthropic_base_url=settings.anthropic_base_url,
        ),
        clock=now,
    )
    svc = Services(
        settings=settings,
        db=db,
        redis=redis,
        broadcast=broadcast,
        provider=provider,
        market=market,
        quote_demand=demand,
        jobs=jobs,
        auth=auth,
        trading=trading,
        agents=AgentService(
            db,
            redis,
            market,
            executor,
            broadcast,
            KeyRing.from_base64(settings.master_key_ring),
            settings.url,
            enqueue_run,
            clock=now,
        ),
        brokers=BrokerService(
            db,
            trading,
            auth,
            KeyRing.from_base64(settings.master_key_ring),
            RateLimiter(redis),
            alpaca_factory(settings.alpaca_base_url, settings.alpaca_stream_url),
        ),
    )
    svc._tasks.append(asyncio.create_task(demand.keep_alive()))
    try:
        yield svc
    finally:
        for task in svc._tasks:
            task.cancel()
        await asyncio.gather(*svc._tasks, return_exceptions=True)
        await jobs.aclose()
        await broadcast.disconnect()
        await redis.aclose()
        await db.dispose()
