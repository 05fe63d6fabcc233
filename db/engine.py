"""Engines, sessions and the per-transaction tenant setting that row-level security reads."""

from __future__ import annotations

import ipaddress
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

AfterCommit = Callable[[], Awaitable[None]]
log = logging.getLogger(__name__)


@dataclass
class UnitOfWork:
    """One transaction. Domain code may flush; only the owner of the unit of work commits."""

    session: AsyncSession
    user_id: uuid.UUID | None
    _after_commit: list[AfterCommit] = field(default_factory=list)

    async def act_as(self, user_id: uuid.UUID) -> None:
        """Switch row-level security to `user_id` for the rest of this transaction.

        Only for flows that learn who the user is from a credential (sign-in, links).
        """
        await self.session.execute(select(func.set_config("app.user_id", str(user_id), True)))
        self.user_id = user_id

    def after_commit(self, callback: AfterCommit) -> None:
        """Run `callback` once the transaction has committed (publishing, enqueueing jobs)."""
        self._after_commit.append(callback)


class Database:
    def __init__(self, url: str, *, pool_size: int, max_overflow: int) -> None:
        # No pool_pre_ping: it is a round trip on every checkout. A connection that died in
        # the pool (PostgreSQL restarted) fails the first statement of `transaction`, which
        # then starts again on a fresh connection.
        self.engine: AsyncEngine = create_async_engine(
            _plain_on_loopback(make_url(url)), pool_size=pool_size, max_overflow=max_overflow
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self, user_id: uuid.UUID | None) -> AsyncIterator[UnitOfWork]:
        """A transaction in which row-level security sees only `user_id`'s rows (none if None)."""
        async with self._sessions() as session:
            uow = UnitOfWork(session, user_id)
            await self._begin(session, user_id)
            try:
                yield uow
            except BaseException:
                await session.rollback()
                raise
            await session.commit()
            for callback in uow._after_commit:
                # The transaction has committed: what it did stands whether or not its
                # events get out, so a failed publish is logged, never raised into the caller
                # (who would report a committed order as failed), and the rest still run.
                try:
                    await callback()
                except Exception:
                    log.exception("an after-commit action failed")

    @staticmethod
    async def _begin(session: AsyncSession, user_id: uuid.UUID | None) -> None:
        set_user = select(func.set_config("app.user_id", str(user_id or ""), True))
        try:
            await session.execute(set_user)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # Nothing has run yet, so trying again is safe; SQLAlchemy has already discarded
            # this connection and every one pooled before it, so this one is new.
            await session.rollback()
            await session.execute(set_user)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _plain_on_loopback(url: URL) -> URL:
    """Without TLS to a loopback address, unless the URL or PGSSLMODE says otherwise.

    asyncpg's default (sslmode "prefer") asks for TLS first: one more round trip for every
    new connection, for nothing when the server is on the same machine.
    """
    if "ssl" in url.query or "sslmode" in url.query or os.environ.get("PGSSLMODE"):
        return url
    if url.host is None:
        return url  # a Unix socket: asyncpg never asks for TLS there
    try:
        loopback = url.host == "localhost" or ipaddress.ip_address(url.host).is_loopback
    except ValueError:
        return url  # a host name
    return url.update_query_dict({"ssl": "disable"}) if loopback else url
