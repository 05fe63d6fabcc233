from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from db.engine import Database
from db.models import Trigger
from db.repositories import agents as repo
from domain.auth.actor import Actor


class TriggersByAgentIdLoader(DataLoader[uuid.UUID, list[Trigger]]):
    """The triggers of many of the actor's agents in one query."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        async def load(agent_ids: Sequence[uuid.UUID]) -> list[list[Trigger]]:
            if actor is None:
                return [[] for _ in agent_ids]
            async with db.transaction(actor.user_id) as uow:
                rows = await repo.triggers_of(uow.session, actor.user_id, agent_ids)
            grouped: dict[uuid.UUID, list[Trigger]] = {i: [] for i in agent_ids}
            for row in rows:
                grouped[row.agent_id].append(row)
            return [grouped[i] for i in agent_ids]

        super().__init__(load_fn=load)
