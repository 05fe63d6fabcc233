"""Notifications: short messages to a user ("Agent Dip Buyer placed an order ..."), kept in
`notifications` and pushed live on `user:{id}:notifications` after the commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from db.engine import UnitOfWork
from db.models import Notification, Order
from db.repositories import agents as repo
from domain.trading.types import OrderSide

MAX_TITLE = 200


class Publisher(Protocol):
    async def publish(self, channel: str, message: Any) -> None: ...


def notifications_channel(user_id: uuid.UUID) -> str:
    return f"user:{user_id}:notifications"


def snapshot(row: Notification) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "kind": row.kind,
        "title": row.title,
        "body": row.body,
        "createdAt": row.created_at.isoformat(),
        "readAt": None if row.read_at is None else row.read_at.isoformat(),
    }


async def notify(
    uow: UnitOfWork,
    publisher: Publisher,
    *,
    kind: str,
    title: str,
    body: str,
    at: datetime,
    agent_id: uuid.UUID | None = None,
    execution_id: uuid.UUID | None = None,
) -> Notification:
    """Store a notification in the caller's transaction; it is pushed once that commits."""
    assert uow.user_id is not None, "a notification belongs to a user"
    row = Notification(
        id=uuid.uuid4(),
        user_id=uow.user_id,
        kind=kind,
        title=title[:MAX_TITLE],
        body=body,
        agent_id=agent_id,
        execution_id=execution_id,
        created_at=at,
    )
    uow.session.add(row)
    await uow.session.flush()
    payload = snapshot(row)
    channel = notifications_channel(uow.user_id)
    uow.after_commit(lambda: publisher.publish(channel, payload))
    return row


async def agent_order_filled(
    uow: UnitOfWork, publisher: Publisher, order: Order, at: datetime
) -> Notification:
    """ "Agent Dip Buyer bought 10 AAPL @ $150.12", once an agent's order has filled."""
    assert order.agent_id is not None and order.average_fill_price is not None
    [agent] = await repo.agents_by_ids(uow.session, order.user_id, [order.agent_id])
    verb = "bought" if order.side is OrderSide.BUY else "sold"
    quantity = format(order.filled_quantity.normalize(), ",f")
    return await notify(
        uow,
        publisher,
        kind="agent.filled",
        title=f"Agent {agent.name} {verb} {order.symbol}",
        body=f"Agent {agent.name} {verb} {quantity} {order.symbol} "
        f"@ ${order.average_fill_price:,.2f}.",
        at=at,
        agent_id=agent.id,
        execution_id=order.execution_id,
    )


async def list_notifications(
    uow: UnitOfWork,
    *,
    unread_only: bool,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Notification]:
    assert uow.user_id is not None
    return await repo.notifications(
        uow.session, uow.user_id, unread_only=unread_only, before=before, limit=limit
    )


async def mark_read(uow: UnitOfWork, ids: Sequence[uuid.UUID] | None, at: datetime) -> int:
    """Mark `ids` (every unread notification when None) read; the number newly read."""
    assert uow.user_id is not None
    return await repo.mark_read(uow.session, uow.user_id, ids, at)
