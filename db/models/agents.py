from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ForeignKey,
    ForeignKeyConstraint,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, UserOwned
from db.models.trading import MONEY, _enum
from domain.agents.decision import LlmProvider
from domain.agents.types import AgentKind, AgentStatus, ExecutionStatus
from domain.trading.types import BrokerKind
from domain.triggers.spec import TriggerType


class Agent(UserOwned, Base):
    __tablename__ = "agents"
    __table_args__ = (
        # The owner is part of the key: an agent can only name its own user's connection.
        ForeignKeyConstraint(
            ["user_id", "broker_connection_id"],
            ["broker_connections.user_id", "broker_connections.id"],
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[AgentKind] = mapped_column(_enum(AgentKind, "agent_kind"))
    status: Mapped[AgentStatus] = mapped_column(_enum(AgentStatus, "agent_status"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(1000))
    prompt: Mapped[str] = mapped_column(Text)
    # The symbols the prompt names, learned when it was saved.
    symbols: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    llm_provider: Mapped[LlmProvider] = mapped_column(_enum(LlmProvider, "llm_provider"))
    llm_model: Mapped[str] = mapped_column(String(100))
    llm_temperature: Mapped[Decimal] = mapped_column(Numeric(4, 2))
    max_position_value: Mapped[Decimal | None] = mapped_column(MONEY)
    max_daily_trades: Mapped[int | None]
    allocation_percent: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    # Where it trades: the paper account (no connection), or the account of the broker
    # connection it was set up for -- that one, not whichever connection comes next.
    broker: Mapped[BrokerKind] = mapped_column(
        _enum(BrokerKind, "broker_kind"), server_default=BrokerKind.PAPER.value
    )
    broker_connection_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None]


class Trigger(UserOwned, Base):
    __tablename__ = "triggers"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    type: Mapped[TriggerType] = mapped_column(_enum(TriggerType, "trigger_type"))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(server_default="true")
    cooldown_seconds: Mapped[int] = mapped_column(server_default="0")
    last_fired_at: Mapped[datetime | None]
    secret_key_id: Mapped[str | None] = mapped_column(String(64))
    secret_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AgentExecution(UserOwned, Base):
    """One run of an agent. Immutable once finished (a database trigger enforces it)."""

    __tablename__ = "agent_executions"
    __table_args__ = (UniqueConstraint("agent_id", "event_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"))
    trigger_id: Mapped[uuid.UUID | None]
    trigger_type: Mapped[TriggerType] = mapped_column(_enum(TriggerType, "trigger_type"))
    event_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[ExecutionStatus] = mapped_column(_enum(ExecutionStatus, "execution_status"))
    context: Mapped[dict[str, Any]] = mapped_column(JSONB)
    prompt: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(100))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    latency_ms: Mapped[int | None]
    reasoning: Mapped[str | None] = mapped_column(Text)
    decisions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    risk_check: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    order_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid))
    outcome: Mapped[str | None] = mapped_column(String(40))
    summary: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Notification(UserOwned, Base):
    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(50))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    agent_id: Mapped[uuid.UUID | None]
    execution_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime]
    read_at: Mapped[datetime | None]
