"""Alembic runs as the owner role (KIANAX_DATABASE_URL); the app role only gets grants."""

from __future__ import annotations

import asyncio

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import db.models  # noqa: F401 - registers every table on the metadata
from alembic import context
from db.base import Base
from kianax.settings import load_settings

target_metadata = Base.metadata


def _url() -> str:
    url = context.config.attributes.get("database_url") or load_settings().database_url
    if not url:
        raise RuntimeError("KIANAX_DATABASE_URL is not set")
    return str(url)


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_migrate)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run())
