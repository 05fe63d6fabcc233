from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from db.engine import Database
from db.repositories import agents as repo
from domain.agents.service import AgentService, AgentStats
from domain.auth.actor import Actor


class AgentStatsByAgentIdLoader(DataLoader[uuid.UUID, AgentStats | None]):
    """Trades, win rate, P&L and last run of many of the actor's agents, in one transaction
    with one valuation of the portfolio."""

    def __init__(self, db: Database, actor: Actor | None, agents: AgentService) -> None:
        async def load(ids: Sequence[uuid.UUID]) -> list[AgentStats | None]:
            if actor is None:
                return [None] * len(ids)
            async with db.transaction(actor.user_id) as uow:
                rows = await repo.agents_by_ids(uow.session, actor.user_id, ids)
                stats = await agents.stats(uow, rows)
            return [stats.get(i) for i in ids]

        super().__init__(load_fn=load)
