"""First start: a demo account, so a newcomer can sign in at once."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime

from redis.asyncio import Redis

from db.engine import Database
from db.repositories.users import user_id_by_email
from domain.auth.service import AuthService, Client
from kianax.settings import Settings

log = logging.getLogger("kianax.bootstrap")
DEMO_EMAIL = "demo@kianax.dev"


async def _ensure_demo_account(settings: Settings) -> str | None:
    assert settings.redis_url
    db = Database(settings.runtime_database_url, pool_size=1, max_overflow=0)
    redis = Redis.from_url(settings.redis_url)
    try:
        async with db.transaction(None) as uow:
            if await user_id_by_email(uow.session, DEMO_EMAIL) is not None:
                return None
            password = secrets.token_urlsafe(12)
            tokens = await AuthService(settings, redis).register(
                uow, DEMO_EMAIL, password, Client(ip=None, user_agent="kianax run")
            )
            tokens.user.email_verified_at = datetime.now(UTC)
            return password
    finally:
        await redis.aclose()
        await db.dispose()


def ensure_demo_account(settings: Settings) -> None:
    password = asyncio.run(_ensure_demo_account(settings))
    if password:
        # Printed once, on the terminal of the person who started Kianax; never logged.
        print(f"\n  Demo account created: {DEMO_EMAIL} / {password}\n", flush=True)
