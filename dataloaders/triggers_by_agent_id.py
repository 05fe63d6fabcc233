from __future__ import annotations

from dataloaders.rows_by_id import RowsByParentLoader
from db.engine import Database
from db.models import Trigger
from db.repositories import agents as repo
from domain.auth.actor import Actor


class TriggersByAgentIdLoader(RowsByParentLoader[Trigger]):
    """The triggers of many of the actor's agents in one query."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        super().__init__(db, actor, repo.triggers_of, lambda row: row.agent_id)
