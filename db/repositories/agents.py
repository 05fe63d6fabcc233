"""All SQL of agents, triggers, executions and notifications. Row-level security scopes
every statement to the acting user as well; the two SECURITY DEFINER functions are the
only cross-user reads, and they return ids only."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BindParameter, and_, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Agent, AgentExecution, Fill, Notification, Order, Trigger
from db.repositories.trading import OPEN
from domain.agents.types import AgentStatus, ExecutionStatus
from domain.triggers.spec import TriggerType

# ---------------------------------------------------------------- agents


async def lock_agents_of(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Serialize this user's agent changes until the transaction ends. An advisory lock, not
    SELECT ... FOR UPDATE on the agents: a user with no agent yet has no row to lock, and
    two first agents must not both fit in the same 100%."""
    await session.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(f"kianax:agents:{user_id}", 0)))
    )


def _live(user_id: uuid.UUID) -> Any:
    return and_(Agent.user_id == user_id, Agent.deleted_at.is_(None))


async def agents(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    status: AgentStatus | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    limit: int | None = None,
) -> Sequence[Agent]:
    statement = select(Agent).where(_live(user_id))
    if status is not None:
        statement = statement.where(Agent.status == status)
    if before is not None:
        at, last_id = before
        statement = statement.where(
            (Agent.created_at < at) | and_(Agent.created_at == at, Agent.id < last_id)
        )
    statement = statement.order_by(Agent.created_at.desc(), Agent.id.desc())
    if limit is not None:
        statement = statement.limit(limit)
    return (await session.scalars(statement)).all()


async def agent(
    session: AsyncSession, user_id: uuid.UUID, agent_id: uuid.UUID, *, lock: bool = False
) -> Agent | None:
    """A live (not deleted) agent."""
    statement = select(Agent).where(_live(user_id), Agent.id == agent_id)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def agents_by_ids(
    session: AsyncSession, user_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> Sequence[Agent]:
    """Deleted agents included: their executions and orders still name them."""
    return (
        await session.scalars(select(Agent).where(Agent.user_id == user_id, Agent.id.in_(ids)))
    ).all()


async def agent_for_run(
    session: AsyncSession, user_id: uuid.UUID, agent_id: uuid.UUID
) -> Agent | None:
    """The agent (deleted or not), share-locked until the transaction ends: pausing or
    deleting it waits for a run placing orders, and a run waits for a pause under way."""
    return await session.scalar(
        select(Agent)
        .where(Agent.user_id == user_id, Agent.id == agent_id)
        .with_for_update(read=True)
    )


async def count_agents(session: AsyncSession, user_id: uuid.UUID) -> int:
    return int(
        await session.scalar(select(func.count()).select_from(Agent).where(_live(user_id))) or 0
    )


async def allocation_sum(
    session: AsyncSession,
    user_id: uuid.UUID,
    connection_id: uuid.UUID | None,
    *,
    excluding: uuid.UUID | None = None,
) -> Decimal:
    """What the live agents trading one account are allocated: the paper account's (None)
    or a broker connection's."""
    statement = select(func.coalesce(func.sum(Agent.allocation_percent), 0)).where(
        _live(user_id), Agent.broker_connection_id.is_not_distinct_from(connection_id)
    )
    if excluding is not None:
        statement = statement.where(Agent.id != excluding)
    return Decimal(await session.scalar(statement) or 0)


async def name_taken(
    session: AsyncSession, user_id: uuid.UUID, name: str, *, excluding: uuid.UUID | None = None
) -> bool:
    statement = select(Agent.id).where(_live(user_id), func.lower(Agent.name) == name.lower())
    if excluding is not None:
        statement = statement.where(Agent.id != excluding)
    return await session.scalar(statement.limit(1)) is not None


async def pause_all(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> int:
    result = await session.execute(
        update(Agent)
        .where(_live(user_id), Agent.status == AgentStatus.ACTIVE)
        .values(status=AgentStatus.PAUSED, updated_at=now)
        .returning(Agent.id)
    )
    return len(result.all())


# ---------------------------------------------------------------- triggers


async def triggers_of(
    session: AsyncSession, user_id: uuid.UUID, agent_ids: Sequence[uuid.UUID]
) -> Sequence[Trigger]:
    return (
        await session.scalars(
            select(Trigger)
            .where(Trigger.user_id == user_id, Trigger.agent_id.in_(agent_ids))
            .order_by(Trigger.created_at, Trigger.id)
        )
    ).all()


async def trigger(
    session: AsyncSession, user_id: uuid.UUID, trigger_id: uuid.UUID, *, lock: bool = False
) -> Trigger | None:
    statement = select(Trigger).where(Trigger.user_id == user_id, Trigger.id == trigger_id)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def triggers_by_ids(
    session: AsyncSession, user_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> Sequence[Trigger]:
    return (
        await session.scalars(
            select(Trigger).where(Trigger.user_id == user_id, Trigger.id.in_(ids))
        )
    ).all()


async def count_triggers(session: AsyncSession, user_id: uuid.UUID) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(Trigger).where(Trigger.user_id == user_id)
        )
        or 0
    )


async def delete_trigger(session: AsyncSession, row: Trigger) -> None:
    await session.delete(row)


async def delete_triggers_of(
    session: AsyncSession, user_id: uuid.UUID, agent_id: uuid.UUID
) -> None:
    for row in await triggers_of(session, user_id, [agent_id]):
        await session.delete(row)


@dataclass(frozen=True, slots=True)
class EnabledTrigger:
    user_id: uuid.UUID
    agent_id: uuid.UUID
    trigger_id: uuid.UUID
    type: str


async def enabled_triggers(session: AsyncSession) -> list[EnabledTrigger]:
    """Every user's enabled triggers of active agents (ids only: SECURITY DEFINER)."""
    rows = await session.execute(
        text("SELECT user_id, agent_id, trigger_id, type FROM enabled_triggers()")
    )
    return [EnabledTrigger(*row) for row in rows]


async def users_with_enabled_triggers(
    session: AsyncSession, types: Collection[TriggerType]
) -> list[uuid.UUID]:
    """The users with enabled triggers of `types` on active agents (SECURITY DEFINER)."""
    rows = await session.scalars(
        text("SELECT DISTINCT user_id FROM enabled_triggers() WHERE type = ANY(:types)"),
        {"types": [t.value for t in types]},
    )
    return list(rows)


async def webhook_owner(session: AsyncSession, trigger_id: uuid.UUID) -> uuid.UUID | None:
    """Whose webhook trigger this is (SECURITY DEFINER: the caller is not signed in)."""
    owner = await session.scalar(text("SELECT trigger_for_webhook(:id)"), {"id": trigger_id})
    return owner if isinstance(owner, uuid.UUID) else None


def _active(user_id: uuid.UUID | BindParameter[uuid.UUID]) -> Any:
    """Enabled triggers of the user's live, active agents (joined with Agent)."""
    return and_(
        Trigger.user_id == user_id,
        Trigger.enabled,
        Agent.user_id == user_id,
        Agent.deleted_at.is_(None),
        Agent.status == AgentStatus.ACTIVE,
    )


async def active_triggers(
    session: AsyncSession, user_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> Sequence[tuple[Trigger, Agent]]:
    """The user's enabled triggers among `ids` whose agents are live and active."""
    rows = await session.execute(
        select(Trigger, Agent)
        .join(Agent, Agent.id == Trigger.agent_id)
        .where(_active(user_id), Trigger.id.in_(ids))
    )
    return [(t, a) for t, a in rows]


@dataclass(frozen=True, slots=True)
class ActiveTrigger:
    id: uuid.UUID
    agent_id: uuid.UUID
    type: TriggerType
    config: dict[str, Any]
    cooldown_seconds: int
    last_fired_at: datetime | None


# Built once: building it was about a third of the cost of each user's read.
_ACTIVE_OF_TYPES = (
    select(
        Trigger.id,
        Trigger.agent_id,
        Trigger.type,
        Trigger.config,
        Trigger.cooldown_seconds,
        Trigger.last_fired_at,
    )
    .join(Agent, Agent.id == Trigger.agent_id)
    .where(_active(bindparam("user_id")), Trigger.type.in_(bindparam("types", expanding=True)))
)


async def active_triggers_of_types(
    session: AsyncSession, user_id: uuid.UUID, types: Collection[TriggerType]
) -> list[ActiveTrigger]:
    """The user's enabled triggers of `types` whose agents are live and active, as plain
    rows of what evaluating them needs: the trigger watcher reads every user's every 30
    seconds, and ORM objects of the triggers and their agents cost it most of its time."""
    rows = await session.execute(_ACTIVE_OF_TYPES, {"user_id": user_id, "types": list(types)})
    return [ActiveTrigger(*row) for row in rows]


# ---------------------------------------------------------------- executions


async def claim_execution(session: AsyncSession, values: dict[str, Any]) -> uuid.UUID | None:
    """Insert a RUNNING execution; None when (agent, event_key) already has one."""
    result = await session.execute(
        insert(AgentExecution)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["agent_id", "event_key"])
        .returning(AgentExecution.id)
    )
    return result.scalar()


async def execution_by_event(
    session: AsyncSession, user_id: uuid.UUID, agent_id: uuid.UUID, event_key: str
) -> AgentExecution | None:
    return await session.scalar(
        select(AgentExecution).where(
            AgentExecution.user_id == user_id,
            AgentExecution.agent_id == agent_id,
            AgentExecution.event_key == event_key,
        )
    )


async def execution(
    session: AsyncSession, user_id: uuid.UUID, execution_id: uuid.UUID, *, lock: bool = False
) -> AgentExecution | None:
    statement = select(AgentExecution).where(
        AgentExecution.user_id == user_id, AgentExecution.id == execution_id
    )
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def executions_by_ids(
    session: AsyncSession, user_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> Sequence[AgentExecution]:
    return (
        await session.scalars(
            select(AgentExecution).where(
                AgentExecution.user_id == user_id, AgentExecution.id.in_(ids)
            )
        )
    ).all()


async def executions(
    session: AsyncSession,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
    finished_only: bool = False,
) -> Sequence[AgentExecution]:
    statement = select(AgentExecution).where(
        AgentExecution.user_id == user_id, AgentExecution.agent_id == agent_id
    )
    if finished_only:
        statement = statement.where(AgentExecution.status != ExecutionStatus.RUNNING)
    if before is not None:
        at, last_id = before
        statement = statement.where(
            (AgentExecution.started_at < at)
            | and_(AgentExecution.started_at == at, AgentExecution.id < last_id)
        )
    statement = statement.order_by(
        AgentExecution.started_at.desc(), AgentExecution.id.desc()
    ).limit(limit)
    return (await session.scalars(statement)).all()


async def latest_executions(
    session: AsyncSession, user_id: uuid.UUID, agent_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[datetime, str | None]]:
    """Per agent: when it last started a run, and the summary of its last finished run."""
    last_start = (
        select(AgentExecution.agent_id, func.max(AgentExecution.started_at).label("at"))
        .where(AgentExecution.user_id == user_id, AgentExecution.agent_id.in_(agent_ids))
        .group_by(AgentExecution.agent_id)
    )
    finished = (
        select(AgentExecution.agent_id, func.max(AgentExecution.finished_at).label("at"))
        .where(
            AgentExecution.user_id == user_id,
            AgentExecution.agent_id.in_(agent_ids),
            AgentExecution.status != ExecutionStatus.RUNNING,
        )
        .group_by(AgentExecution.agent_id)
        .subquery()
    )
    last_summary = select(AgentExecution.agent_id, AgentExecution.summary).join(
        finished,
        and_(
            AgentExecution.agent_id == finished.c.agent_id,
            AgentExecution.finished_at == finished.c.at,
        ),
    )
    started = {agent_id: at for agent_id, at in await session.execute(last_start)}
    summaries = {agent_id: summary for agent_id, summary in await session.execute(last_summary)}
    return {agent_id: (at, summaries.get(agent_id)) for agent_id, at in started.items()}


# ---------------------------------------------------------------- agent P&L


@dataclass(frozen=True, slots=True)
class FillStats:
    trades: int  # orders of the agent that filled (wholly or in part)
    closing: int  # fills that closed (part of) a position
    wins: int  # closing fills with a positive realized P&L
    realized: Decimal


async def fill_stats(
    session: AsyncSession, user_id: uuid.UUID, agent_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, FillStats]:
    rows = await session.execute(
        select(
            Fill.agent_id,
            func.count(func.distinct(Fill.order_id)),
            func.count().filter(Fill.closes_position),
            func.count().filter(Fill.closes_position, Fill.realized_pnl > 0),
            func.coalesce(func.sum(Fill.realized_pnl), 0),
        )
        .where(Fill.user_id == user_id, Fill.agent_id.in_(agent_ids))
        .group_by(Fill.agent_id)
    )
    return {
        agent_id: FillStats(int(trades), int(closing), int(wins), Decimal(realized))
        for agent_id, trades, closing, wins, realized in rows
        if agent_id is not None
    }


async def open_orders_of(
    session: AsyncSession, user_id: uuid.UUID, agent_id: uuid.UUID
) -> Sequence[Order]:
    return (
        await session.scalars(
            select(Order)
            .where(Order.user_id == user_id, Order.agent_id == agent_id, Order.status.in_(OPEN))
            .with_for_update()
        )
    ).all()


# ---------------------------------------------------------------- notifications


async def notifications(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    unread_only: bool,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Notification]:
    statement = select(Notification).where(Notification.user_id == user_id)
    if unread_only:
        statement = statement.where(Notification.read_at.is_(None))
    if before is not None:
        at, last_id = before
        statement = statement.where(
            (Notification.created_at < at)
            | and_(Notification.created_at == at, Notification.id < last_id)
        )
    statement = statement.order_by(Notification.created_at.desc(), Notification.id.desc())
    return (await session.scalars(statement.limit(limit))).all()


async def notification(
    session: AsyncSession, user_id: uuid.UUID, notification_id: uuid.UUID
) -> Notification | None:
    return await session.scalar(
        select(Notification).where(
            Notification.user_id == user_id, Notification.id == notification_id
        )
    )


async def mark_read(
    session: AsyncSession, user_id: uuid.UUID, ids: Sequence[uuid.UUID] | None, now: datetime
) -> int:
    statement = update(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None)
    )
    if ids is not None:
        statement = statement.where(Notification.id.in_(ids))
    result = await session.execute(statement.values(read_at=now).returning(Notification.id))
    return len(result.all())
