from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from strawberry.dataloader import DataLoader

from db.engine import Database
from db.repositories import trading as repo
from domain.auth.actor import Actor
from domain.trading.service import order_snapshot


class OrderByIdLoader(DataLoader[uuid.UUID, dict[str, Any] | None]):
    """The actor's orders by id (as snapshots); someone else's id loads as None."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        async def load(ids: Sequence[uuid.UUID]) -> list[dict[str, Any] | None]:
            if actor is None:
                return [None] * len(ids)
            async with db.transaction(actor.user_id) as uow:
                rows = await repo.orders_by_ids(uow.session, actor.user_id, ids)
            found = {row.id: order_snapshot(row) for row in rows}
            return [found.get(i) for i in ids]

        super().__init__(load_fn=load)
