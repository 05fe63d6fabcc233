"""All broker-connection SQL. Row-level security scopes every statement to the acting user
as well; `active_broker_connections` is the one cross-user read, and it returns ids only."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import and_, case, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Account, BrokerConnection, Fill, Order, Position
from domain.brokers.types import ConnectionStatus
from domain.trading.types import OPEN_STATUSES, BrokerKind

_OPEN = [s.value for s in OPEN_STATUSES]
_ACTIVE = BrokerConnection.status != ConnectionStatus.DISCONNECTED


async def connection(
    session: AsyncSession, user_id: uuid.UUID, connection_id: uuid.UUID, *, lock: bool = False
) -> BrokerConnection | None:
    statement = select(BrokerConnection).where(
        BrokerConnection.id == connection_id, BrokerConnection.user_id == user_id
    )
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def connections(session: AsyncSession, user_id: uuid.UUID) -> Sequence[BrokerConnection]:
    result = await session.scalars(
        select(BrokerConnection)
        .where(BrokerConnection.user_id == user_id)
        .order_by(BrokerConnection.created_at.desc(), BrokerConnection.id)
    )
    return result.all()


async def active_connection(
    session: AsyncSession, user_id: uuid.UUID, provider: BrokerKind
) -> BrokerConnection | None:
    return await session.scalar(
        select(BrokerConnection).where(
            BrokerConnection.user_id == user_id, BrokerConnection.provider == provider, _ACTIVE
        )
    )


async def active_broker_connections(session: AsyncSession) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(user id, connection id) of every working connection, across all users."""
    rows = await session.execute(
        text("SELECT user_id, connection_id FROM active_broker_connections()")
    )
    return [(user_id, connection_id) for user_id, connection_id in rows]


async def account_for_connection(
    session: AsyncSession, user_id: uuid.UUID, connection_id: uuid.UUID, *, lock: bool = False
) -> Account | None:
    statement = select(Account).where(
        Account.user_id == user_id, Account.broker_connection_id == connection_id
    )
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def active_account(
    session: AsyncSession, user_id: uuid.UUID, provider: BrokerKind
) -> tuple[Account, BrokerConnection] | None:
    """The account of the user's active connection to `provider`, with that connection."""
    row = (
        await session.execute(
            select(Account, BrokerConnection)
            .join(BrokerConnection, BrokerConnection.id == Account.broker_connection_id)
            .where(
                Account.user_id == user_id,
                BrokerConnection.provider == provider,
                _ACTIVE,
            )
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def default_account(session: AsyncSession, user_id: uuid.UUID) -> Account | None:
    """What the portfolio shows by default, in one statement: the account of an active
    broker connection when there is one, else the paper account (None before it opens)."""
    return await session.scalar(
        select(Account)
        .outerjoin(BrokerConnection, BrokerConnection.id == Account.broker_connection_id)
        .where(
            Account.user_id == user_id,
            or_(Account.broker == BrokerKind.PAPER, and_(BrokerConnection.id.isnot(None), _ACTIVE)),
        )
        .order_by(case((Account.broker == BrokerKind.PAPER, 1), else_=0))
        .limit(1)
    )


async def order_for_event(
    session: AsyncSession,
    user_id: uuid.UUID,
    account_id: uuid.UUID,
    *,
    broker_order_id: str,
    client_order_id: str,
) -> Order | None:
    """The account's order a broker reports on: by the broker's id, else by ours (a report
    can arrive before the submitting job has recorded the broker's id). Locked."""
    return await session.scalar(
        select(Order)
        .where(
            Order.user_id == user_id,
            Order.account_id == account_id,
            or_(
                Order.broker_order_id == broker_order_id,
                Order.client_order_id == client_order_id,
            ),
        )
        .order_by(case((Order.broker_order_id == broker_order_id, 0), else_=1))
        .limit(1)
        .with_for_update()
    )


async def open_orders(
    session: AsyncSession, user_id: uuid.UUID, account_id: uuid.UUID
) -> Sequence[Order]:
    """The account's open orders, locked, oldest first."""
    result = await session.scalars(
        select(Order)
        .where(Order.user_id == user_id, Order.account_id == account_id, Order.status.in_(_OPEN))
        .order_by(Order.submitted_at, Order.id)
        .with_for_update()
    )
    return result.all()


async def fill_recorded(session: AsyncSession, execution_id: str) -> bool:
    found = await session.scalar(
        select(Fill.id).where(Fill.broker_execution_id == execution_id).limit(1)
    )
    return found is not None


async def positions(session: AsyncSession, account_id: uuid.UUID) -> Sequence[Position]:
    """Every position row of the account, closed ones too, locked."""
    result = await session.scalars(
        select(Position)
        .where(Position.account_id == account_id)
        .order_by(Position.symbol, Position.agent_id)
        .with_for_update()
    )
    return result.all()
