from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from strawberry.dataloader import DataLoader

from db.engine import Database
from domain.auth.actor import Actor


class _Row(Protocol):
    id: Mapped[uuid.UUID]


R = TypeVar("R", bound=_Row)
Fetch = Callable[[AsyncSession, uuid.UUID, Sequence[uuid.UUID]], Awaitable[Sequence[R]]]


class RowsByIdLoader(DataLoader[uuid.UUID, R | None]):
    """The actor's rows by id, in one query per batch; someone else's id loads as None."""

    def __init__(self, db: Database, actor: Actor | None, fetch: Fetch[R]) -> None:
        async def load(ids: Sequence[uuid.UUID]) -> list[R | None]:
            if actor is None:
                return [None] * len(ids)
            async with db.transaction(actor.user_id) as uow:
                rows = await fetch(uow.session, actor.user_id, ids)
            found: dict[object, R] = {row.id: row for row in rows}
            return [found.get(i) for i in ids]

        super().__init__(load_fn=load)


class RowsByParentLoader(DataLoader[uuid.UUID, list[R]]):
    """The actor's rows of many parents (an agent's triggers, an order's fills) in one query
    per batch, each parent's in the order `fetch` returns them; someone else's parent has none."""

    def __init__(
        self,
        db: Database,
        actor: Actor | None,
        fetch: Fetch[R],
        parent: Callable[[R], uuid.UUID],
    ) -> None:
        async def load(ids: Sequence[uuid.UUID]) -> list[list[R]]:
            if actor is None:
                return [[] for _ in ids]
            async with db.transaction(actor.user_id) as uow:
                rows = await fetch(uow.session, actor.user_id, ids)
            grouped: dict[uuid.UUID, list[R]] = {i: [] for i in ids}
            for row in rows:
                grouped[parent(row)].append(row)
            return [grouped[i] for i in ids]

        super().__init__(load_fn=load)
