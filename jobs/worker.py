"""arq worker: `kianax worker`. Each job opens its own unit of work and calls domain/."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import func

from db.repositories import users
from domain.agents.watcher import TriggerWatcher
from domain.auth.mail import LogMailSender
from domain.brokers.streams import BrokerStreams
from domain.trading.paper import PaperMatcher
from jobs import agents, brokers, portfolios
from kianax.settings import load_settings
from kianax.wiring import services

WORKER_HEARTBEAT_KEY = "kianax:worker:heartbeat"


async def startup(ctx: dict[str, Any]) -> None:
    stack = contextlib.AsyncExitStack()
    ctx["services"] = await stack.enter_async_context(services(load_settings()))
    ctx["exit_stack"] = stack
    ctx["mailer"] = LogMailSender()
    svc = ctx["services"]
    matcher = PaperMatcher(svc.db, svc.trading, svc.broadcast, svc.quote_demand)
    ctx["paper_matcher"] = asyncio.create_task(matcher.run())
    watcher = TriggerWatcher(
        svc.db,
        svc.market,
        svc.broadcast,
        svc.quote_demand,
        svc.agents.enqueue_run,
        clock=svc.trading.clock,
    )
    ctx["trigger_watcher"] = asyncio.create_task(watcher.run())
    # With several workers each applies every trade event; that is harmless (fills are
    # deduplicated by execution id, statuses only move forward), it only costs streams.
    ctx["broker_streams"] = asyncio.create_task(BrokerStreams(svc.brokers).run())


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["paper_matcher"].cancel()
    ctx["trigger_watcher"].cancel()
    ctx["broker_streams"].cancel()
    await ctx["exit_stack"].aclose()


async def send_email(ctx: dict[str, Any], user_id: str, message_id: str) -> None:
    """Send one outbox message; a retry after a crash finds it sent and does nothing."""
    svc = ctx["services"]
    async with svc.db.transaction(uuid.UUID(user_id)) as uow:
        message = await users.outbox_message(uow.session, uuid.UUID(message_id))
        if message is None or message.sent_at is not None:
            return
        await ctx["mailer"].send(message.to_address, message.subject, message.body)
        message.sent_at = datetime.now(UTC)


async def heartbeat(ctx: dict[str, Any]) -> None:
    """Lets /readyz and operators see that a worker is alive."""
    await ctx["services"].redis.set(WORKER_HEARTBEAT_KEY, datetime.now(UTC).isoformat(), ex=120)


class WorkerSettings:
    functions = [
        send_email,
        func(agents.run_agent, timeout=agents.RUN_TIMEOUT_SECONDS, max_tries=agents.MAX_TRIES),
        *brokers.FUNCTIONS,
    ]
    cron_jobs = [
        cron(heartbeat, second={0, 30}, run_at_startup=True),
        # Retried if a worker stops mid-tick: its runs' job ids make a second pass harmless.
        cron(agents.schedule_time_triggers, second=0, max_tries=3),
        cron(portfolios.snapshot_portfolios, minute=set(portfolios.SNAPSHOT_MINUTES), second=0),
        # At start-up too: trade events that came while no worker listened are not replayed.
        cron(
            brokers.reconcile_brokers,
            minute=set(range(0, 60, 5)),
            second=0,
            run_at_startup=True,
        ),
    ]
    on_startup = startup
    on_shutdown = shutdown
    job_timeout = 120
    max_jobs = 20


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)
