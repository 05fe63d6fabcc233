from __future__ import annotations

from dataloaders.rows_by_id import RowsByIdLoader
from db.engine import Database
from db.models import Trigger
from db.repositories import agents as repo
from domain.auth.actor import Actor


class TriggerByIdLoader(RowsByIdLoader[Trigger]):
    """The actor's triggers by id; a removed trigger or someone else's loads as None."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        super().__init__(db, actor, repo.triggers_by_ids)
