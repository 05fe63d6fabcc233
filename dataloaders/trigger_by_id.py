from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from db.engine import Database
from db.models import Trigger
from db.repositories import agents as repo
from domain.auth.actor import Actor


class TriggerByIdLoader(DataLoader[uuid.UUID, Trigger | None]):
    """The actor's triggers by id; a removed trigger or someone else's loads as None."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        async def load(ids: Sequence[uuid.UUID]) -> list[Trigger | None]:
            if actor is None:
                return [None] * len(ids)
            async with db.transaction(actor.user_id) as uow:
                rows = await repo.triggers_by_ids(uow.session, actor.user_id, ids)
            found = {row.id: row for row in rows}
            return [found.get(i) for i in ids]

        super().__init__(load_fn=load)
