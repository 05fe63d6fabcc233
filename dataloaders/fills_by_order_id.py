from __future__ import annotations

from dataloaders.rows_by_id import RowsByParentLoader
from db.engine import Database
from db.models import Fill
from db.repositories import trading as repo
from domain.auth.actor import Actor


class FillsByOrderIdLoader(RowsByParentLoader[Fill]):
    """The fills of many of the actor's orders in one query."""

    def __init__(self, db: Database, actor: Actor | None) -> None:
        super().__init__(db, actor, repo.fills_for_orders, lambda row: row.order_id)
