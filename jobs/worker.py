"""arq worker: `kianax worker`. Each job opens its own unit of work and calls domain/."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

from arq import cron
from arq.connections import RedisSettings

from db.repositories import users
from domain.auth.mail import LogMailSender
from domain.trading.paper import PaperMatcher
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


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["paper_matcher"].cancel()
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
    functions = [send_email]
    cron_jobs = [cron(heartbeat, second={0, 30}, run_at_startup=True)]
    on_startup = startup
    on_shutdown = shutdown
    job_timeout = 120
    max_jobs = 20


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)
