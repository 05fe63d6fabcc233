from __future__ import annotations

from dataloaders.rows_by_id import RowsByIdLoader
from db.engine import Database
from db.models import AgentExecution
from db.repositories import agents as repo
from domain.auth.actor import Actor


class ExecutionByIdLoader(RowsByIdLoader[AgentExecution]):
    """The actor's agent executions by id (an order names the run that placed it); someone
    else's id loads as None."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        super().__init__(db, actor, repo.executions_by_ids)
