from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from db.engine import Database
from db.models import Fill
from db.repositories import trading as repo
from domain.auth.actor import Actor


class FillsByOrderIdLoader(DataLoader[uuid.UUID, list[Fill]]):
    """The fills of many of the actor's orders in one query."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        async def load(order_ids: Sequence[uuid.UUID]) -> list[list[Fill]]:
            if actor is None:
                return [[] for _ in order_ids]
            async with db.transaction(actor.user_id) as uow:
                rows = await repo.fills_for_orders(uow.session, actor.user_id, order_ids)
            grouped: dict[uuid.UUID, list[Fill]] = {i: [] for i in order_ids}
            for row in rows:
                grouped[row.order_id].append(row)
            return [grouped[i] for i in order_ids]

        super().__init__(load_fn=load)
