from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from db.engine import Database
from db.models import Agent
from db.repositories import agents as repo
from domain.auth.actor import Actor


class AgentByIdLoader(DataLoader[uuid.UUID, Agent | None]):
    """The actor's agents by id, deleted ones included (their executions still name them);
    someone else's id loads as None."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        async def load(ids: Sequence[uuid.UUID]) -> list[Agent | None]:
            if actor is None:
                return [None] * len(ids)
            async with db.transaction(actor.user_id) as uow:
                rows = await repo.agents_by_ids(uow.session, actor.user_id, ids)
            found = {row.id: row for row in rows}
            return [found.get(i) for i in ids]

        super().__init__(load_fn=load)
