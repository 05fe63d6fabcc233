"""Engines, sessions and the per-transaction tenant setting that row-level security reads."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import func, select
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
    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 20) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self, user_id: uuid.UUID | None) -> AsyncIterator[UnitOfWork]:
        """A transaction in which row-level security sees only `user_id`'s rows (none if None)."""
        async with self._sessions() as session:
            uow = UnitOfWork(session, user_id)
            async with session.begin():
                await session.execute(
                    select(func.set_config("app.user_id", str(user_id or ""), True))
                )
                yield uow
            for callback in uow._after_commit:
                # The transaction has committed: what it did stands whether or not its
                # events get out, so a failed publish is logged, never raised into the caller
                # (who would report a committed order as failed), and the rest still run.
                try:
                    await callback()
                except Exception:
                    log.exception("an after-commit action failed")

    async def dispose(self) -> None:
        await self.engine.dispose()
