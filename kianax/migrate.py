"""Apply migrations as the owner role and make sure the runtime role can log in."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from kianax.settings import Settings

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    return config


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _enable_app_login(settings: Settings) -> None:
    assert settings.database_url
    engine = create_async_engine(settings.database_url)
    database = make_url(settings.database_url).database
    try:
        async with engine.begin() as connection:
            # Role passwords cannot be bound parameters; the value is quoted as a literal.
            await connection.execute(
                text(
                    f"ALTER ROLE {settings.app_db_role} WITH LOGIN "
                    f"PASSWORD {_quote_literal(settings.app_db_password)}"
                )
            )
            await connection.execute(
                text(f'GRANT CONNECT ON DATABASE "{database}" TO {settings.app_db_role}')
            )
    finally:
        await engine.dispose()


def migrate(settings: Settings) -> None:
    """Blocking; call from a thread when an event loop is running."""
    if not settings.database_url:
        raise RuntimeError("KIANAX_DATABASE_URL is not set")
    # "heads": areas may add migrations on parallel branches; all of them apply.
    command.upgrade(alembic_config(settings.database_url), "heads")
    if not settings.app_database_url:  # an operator-provided runtime URL manages its own role
        asyncio.run(_enable_app_login(settings))
