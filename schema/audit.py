"""The user's own audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import strawberry
from strawberry.scalars import JSON

from db.models import AuditEvent as AuditEventRow
from schema.auth import Node
from schema.market import PageInfo


@strawberry.type
class AuditEvent(Node):
    kind: str
    entity: str
    entity_id: str | None
    payload: JSON
    created_at: datetime
    hash: str = strawberry.field(description="SHA-256 chained to the previous event")

    @classmethod
    def from_row(cls, row: AuditEventRow) -> AuditEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            entity=row.entity,
            entity_id=row.entity_id,
            payload=cast(JSON, row.payload),
            created_at=row.created_at,
            hash=row.hash,
        )


@strawberry.type
class AuditEventEdge:
    cursor: str
    node: AuditEvent


@strawberry.type
class AuditEventConnection:
    edges: list[AuditEventEdge]
    page_info: PageInfo
