"""The runtime pool: no TLS negotiation on loopback, and it outlives a restarted PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.applications import Starlette

from db.engine import Database
from db.models import User
from kianax.settings import Settings

# The first message of a connection that asks for TLS (PostgreSQL's SSLRequest).
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


async def _backend_pid(db: Database) -> int:
    async with db.transaction(None) as uow:
        pid: int = (await uow.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def _terminate(owner_engine: AsyncEngine, pids: set[int]) -> None:
    """What a PostgreSQL restart does to pooled connections: the server ends them."""
    async with owner_engine.connect() as connection:
        for pid in pids:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    for _ in range(500):
        # A new transaction each time: pg_stat_activity is a snapshot per transaction.
        async with owner_engine.connect() as connection:
            alive = (
                await connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                    {"pids": list(pids)},
                )
            ).scalar_one()
        if alive == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backends {pids} outlived pg_terminate_backend")


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.runtime_database_url, pool_size=3, max_overflow=0)
    yield database
    await database.dispose()


async def test_a_connection_that_died_in_the_pool_is_replaced(
    db: Database, owner_engine: AsyncEngine
) -> None:
    before = await _backend_pid(db)
    assert await _backend_pid(db) == before  # the pool reuses its connection
    await _terminate(owner_engine, {before})
    after = await _backend_pid(db)
    assert after != before


async def test_every_pooled_connection_dying_at_once_fails_no_transaction(
    db: Database, owner_engine: AsyncEngine
) -> None:
    async def hold() -> int:
        async with db.transaction(None) as uow:
            pid: int = (await uow.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await asyncio.sleep(0.1)  # keep it checked out while the others open theirs
        return pid

    pooled = set(await asyncio.gather(hold(), hold(), hold()))
    assert len(pooled) == 3
    await _terminate(owner_engine, pooled)
    fresh = set(await asyncio.gather(*(_backend_pid(db) for _ in range(6))))
    assert fresh and fresh.isdisjoint(pooled)


async def test_a_transaction_commits_or_rolls_back_as_a_whole(
    db: Database, owner_engine: AsyncEngine
) -> None:
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    async with db.transaction(kept) as uow:
        uow.session.add(User(id=kept, email=f"{kept}@example.com", password_hash="x"))
    with pytest.raises(RuntimeError, match="caller failed"):
        async with db.transaction(dropped) as uow:
            uow.session.add(User(id=dropped, email=f"{dropped}@example.com", password_hash="x"))
            await uow.session.flush()
            raise RuntimeError("caller failed")
    async with owner_engine.connect() as connection:
        found = (
            await connection.execute(
                text("SELECT id FROM users WHERE id IN (:kept, :dropped)"),
                {"kept": kept, "dropped": dropped},
            )
        ).scalars()
        assert set(found) == {kept}


@contextlib.asynccontextmanager
async def _recording_proxy(database: URL) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback TCP proxy to `database`'s server that records each connection's first
    8 bytes. An embedded server's Unix socket is reached through it all the same."""
    firsts: list[bytes] = []

    async def upstream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if database.host is not None:
            return await asyncio.open_connection(database.host, database.port or 5432)
        directory = database.query["host"]
        assert isinstance(directory, str)
        return await asyncio.open_unix_connection(f"{directory}/.s.PGSQL.{database.port or 5432}")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(8)
        firsts.append(first)
        upstream_reader, upstream_writer = await upstream()
        upstream_writer.write(first)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], firsts


async def test_loopback_connections_do_not_ask_for_tls(settings: Settings) -> None:
    url = make_url(settings.runtime_database_url)
    async with _recording_proxy(url) as (port, firsts):
        proxied = url.difference_update_query(["host"]).set(host="127.0.0.1", port=port)
        db = Database(proxied.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
        try:
            await _backend_pid(db)
        finally:
            await db.dispose()
    assert firsts and SSL_REQUEST not in firsts


def test_tls_is_left_to_the_url_and_asyncpg_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)

    def ssl_of(url: str) -> str | None:
        db = Database(url, pool_size=1, max_overflow=0)
        value = db.engine.url.query.get("ssl")
        return value if value is None or isinstance(value, str) else value[0]

    assert ssl_of("postgresql+asyncpg://u@127.0.0.1/k") == "disable"
    assert ssl_of("postgresql+asyncpg://u@localhost:5432/k") == "disable"
    assert ssl_of("postgresql+asyncpg://u@[::1]:5432/k") == "disable"
    assert ssl_of("postgresql+asyncpg://u@127.0.0.1/k?ssl=require") == "require"
    assert ssl_of("postgresql+asyncpg://u@db.internal/k") is None
    assert ssl_of("postgresql+asyncpg://u@10.0.0.5/k") is None
    assert ssl_of("postgresql+asyncpg://u@/k?host=/run/postgresql") is None


async def test_the_runtime_pool_has_the_configured_size(app: Starlette, settings: Settings) -> None:
    pool = app.state.services.db.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.size() == settings.db_pool_size == 20
