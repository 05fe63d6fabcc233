"""All trading SQL. Row-level security scopes every statement to the acting user as well."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Account, Fill, Order, PortfolioSnapshot, Position, RiskLimitsRow
from domain.trading.types import OPEN_STATUSES, BrokerKind, OrderSide, OrderStatus

OPEN = [s.value for s in OPEN_STATUSES]


async def paper_account(session: AsyncSession, user_id: uuid.UUID) -> Account | None:
    return await session.scalar(
        select(Account).where(Account.user_id == user_id, Account.broker == BrokerKind.PAPER)
    )


async def ensure_paper_account(
    session: AsyncSession, user_id: uuid.UUID, starting_cash: Decimal
) -> Account:
    """The user's paper account, opened on first use; safe when many requests race to open it."""
    await session.execute(
        insert(Account)
        .values(
            id=uuid.uuid4(),
            user_id=user_id,
            broker=BrokerKind.PAPER,
            starting_cash=starting_cash,
            cash=starting_cash,
            reserved=0,
        )
        .on_conflict_do_nothing()
    )
    account = await paper_account(session, user_id)
    assert account is not None
    return account


async def account(session: AsyncSession, account_id: uuid.UUID) -> Account | None:
    return await session.scalar(select(Account).where(Account.id == account_id))


async def held_accounts(session: AsyncSession) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(user, account) of every account holding positions (ids only: SECURITY DEFINER)."""
    rows = await session.execute(text("SELECT user_id, account_id FROM held_accounts()"))
    return [(user_id, account_id) for user_id, account_id in rows]


async def lock_account(session: AsyncSession, account_id: uuid.UUID) -> Account:
    account = await session.scalar(
        select(Account).where(Account.id == account_id).with_for_update()
    )
    assert account is not None, "the caller found the account in this transaction"
    return account


async def reserve(session: AsyncSession, account_id: uuid.UUID, amount: Decimal) -> bool:
    """Take `amount` of buying power, atomically; False when it is not there."""
    result = await session.execute(
        update(Account)
        .where(Account.id == account_id, Account.cash - Account.reserved >= amount)
        .values(reserved=Account.reserved + amount)
        .returning(Account.id)
    )
    return result.first() is not None


async def order_by_id(
    session: AsyncSession, user_id: uuid.UUID, order_id: uuid.UUID, *, lock: bool = False
) -> Order | None:
    statement = select(Order).where(Order.id == order_id, Order.user_id == user_id)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def order_by_client_id(
    session: AsyncSession, user_id: uuid.UUID, client_order_id: str
) -> Order | None:
    return await session.scalar(
        select(Order).where(Order.user_id == user_id, Order.client_order_id == client_order_id)
    )


async def orders_by_ids(
    session: AsyncSession, user_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> Sequence[Order]:
    result = await session.scalars(select(Order).where(Order.user_id == user_id, Order.id.in_(ids)))
    return result.all()


async def open_orders(
    session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False
) -> Sequence[Order]:
    statement = (
        select(Order)
        .where(Order.user_id == user_id, Order.status.in_(OPEN))
        .order_by(Order.submitted_at)
    )
    if lock:
        statement = statement.with_for_update()
    return (await session.scalars(statement)).all()


async def list_orders(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    statuses: Sequence[OrderStatus] | None,
    symbol: str | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Order]:
    statement = select(Order).where(Order.user_id == user_id)
    if statuses:
        statement = statement.where(Order.status.in_([s.value for s in statuses]))
    if symbol:
        statement = statement.where(Order.symbol == symbol)
    if before is not None:
        at, last_id = before
        statement = statement.where(
            (Order.submitted_at < at) | and_(Order.submitted_at == at, Order.id < last_id)
        )
    statement = statement.order_by(Order.submitted_at.desc(), Order.id.desc()).limit(limit)
    return (await session.scalars(statement)).all()


async def list_fills(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    symbol: str | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Fill]:
    statement = select(Fill).where(Fill.user_id == user_id)
    if symbol:
        statement = statement.where(Fill.symbol == symbol)
    if before is not None:
        at, last_id = before
        statement = statement.where(
            (Fill.executed_at < at) | and_(Fill.executed_at == at, Fill.id < last_id)
        )
    statement = statement.order_by(Fill.executed_at.desc(), Fill.id.desc()).limit(limit)
    return (await session.scalars(statement)).all()


async def fills_for_orders(
    session: AsyncSession, user_id: uuid.UUID, order_ids: Sequence[uuid.UUID]
) -> Sequence[Fill]:
    result = await session.scalars(
        select(Fill)
        .where(Fill.user_id == user_id, Fill.order_id.in_(order_ids))
        .order_by(Fill.executed_at, Fill.id)
    )
    return result.all()


async def positions(session: AsyncSession, account_id: uuid.UUID) -> Sequence[Position]:
    result = await session.scalars(
        select(Position)
        .where(Position.account_id == account_id, Position.quantity != 0)
        .order_by(Position.symbol, Position.agent_id)
    )
    return result.all()


async def lock_position(
    session: AsyncSession, account_id: uuid.UUID, symbol: str, agent_id: uuid.UUID | None
) -> Position | None:
    agent = Position.agent_id.is_(None) if agent_id is None else Position.agent_id == agent_id
    return await session.scalar(
        select(Position)
        .where(Position.account_id == account_id, Position.symbol == symbol, agent)
        .with_for_update()
    )


async def orders_placed_since(session: AsyncSession, user_id: uuid.UUID, since: datetime) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(Order)
        .where(Order.user_id == user_id, Order.submitted_at >= since, Order.parent_id.is_(None))
    )
    return int(count or 0)


async def agent_orders_since(
    session: AsyncSession, user_id: uuid.UUID, agent_id: uuid.UUID, since: datetime
) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(Order)
        .where(
            Order.user_id == user_id,
            Order.agent_id == agent_id,
            Order.submitted_at >= since,
            Order.parent_id.is_(None),
        )
    )
    return int(count or 0)


async def day_trades_since(session: AsyncSession, user_id: uuid.UUID, since: datetime) -> int:
    """Sessions x symbols in which the user both bought and sold (New York dates)."""
    count = await session.scalar(
        text(
            "SELECT count(*) FROM (SELECT 1 FROM fills "
            "WHERE user_id = :u AND executed_at >= :since "
            "GROUP BY symbol, (executed_at AT TIME ZONE 'America/New_York')::date "
            "HAVING count(DISTINCT side) = 2) d"
        ),
        {"u": user_id, "since": since},
    )
    return int(count or 0)


async def bought_since(
    session: AsyncSession, user_id: uuid.UUID, symbol: str, since: datetime
) -> bool:
    found = await session.scalar(
        select(Fill.id)
        .where(
            Fill.user_id == user_id,
            Fill.symbol == symbol,
            Fill.side == OrderSide.BUY,
            Fill.executed_at >= since,
        )
        .limit(1)
    )
    return found is not None


async def risk_limits(session: AsyncSession, user_id: uuid.UUID) -> RiskLimitsRow | None:
    return await session.get(RiskLimitsRow, user_id)


async def snapshots(
    session: AsyncSession, account_id: uuid.UUID, since: datetime | None
) -> Sequence[PortfolioSnapshot]:
    statement = select(PortfolioSnapshot).where(PortfolioSnapshot.account_id == account_id)
    if since is not None:
        statement = statement.where(PortfolioSnapshot.taken_at >= since)
    return (await session.scalars(statement.order_by(PortfolioSnapshot.taken_at))).all()


async def closed_trade_pnls(session: AsyncSession, account_id: uuid.UUID) -> list[Decimal]:
    result = await session.scalars(
        select(Fill.realized_pnl)
        .where(Fill.account_id == account_id, Fill.closes_position)
        .order_by(Fill.executed_at)
    )
    return list(result.all())
