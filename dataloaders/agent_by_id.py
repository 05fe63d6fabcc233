from __future__ import annotations

from dataloaders.rows_by_id import RowsByIdLoader
from db.engine import Database
from db.models import Agent
from db.repositories import agents as repo
from domain.auth.actor import Actor


class AgentByIdLoader(RowsByIdLoader[Agent]):
    """The actor's agents by id, deleted ones included (their executions still name them);
    someone else's id loads as None."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        super().__init__(db, actor, repo.agents_by_ids)
