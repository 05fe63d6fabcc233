"""Agent types: agents, their triggers and executions, notifications, and their results."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, cast

import strawberry
from strawberry.scalars import JSON

from db.models import Agent as AgentRow
from db.models import AgentExecution as ExecutionRow
from db.models import Notification as NotificationRow
from db.models import Trigger as TriggerRow
from domain.agents import decision
from domain.agents import types as t
from domain.auth.actor import Scope
from domain.trading import types as trading_types
from domain.trading.risk import Allocation
from domain.triggers import spec
from schema.auth import Node, TwoFactorRequired
from schema.context import Info
from schema.errors import BadInput, NotFound, RateLimited, ValidationError
from schema.market import PageInfo, Sentiment
from schema.trading import BrokerKind, Order, OrderType, make_cursor, parse_cursor

AgentStatus = strawberry.enum(t.AgentStatus, name="AgentStatus")
AgentKind = strawberry.enum(t.AgentKind, name="AgentKind")
ExecutionStatus = strawberry.enum(t.ExecutionStatus, name="ExecutionStatus")
LlmProvider = strawberry.enum(decision.LlmProvider, name="LlmProvider")
DecisionAction = strawberry.enum(decision.DecisionAction, name="DecisionAction")
TriggerType = strawberry.enum(spec.TriggerType, name="TriggerType")

CENTS = Decimal("0.01")
MAX_PAGE = 100


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


@strawberry.type
class LlmSettings:
    provider: LlmProvider  # type: ignore[valid-type]
    model: str
    temperature: Decimal


@strawberry.type
class AgentRiskLimits:
    max_position_value: Decimal | None
    max_daily_trades: int | None
    allocation_percent: Decimal


@strawberry.type
class AllocationSlice:
    percent: Decimal
    amount: Decimal = strawberry.field(
        description="That percent of the portfolio's equity, in dollars."
    )
    used: Decimal = strawberry.field(
        description="Cost basis of the agent's positions plus cash reserved for its open orders."
    )
    agent_id: strawberry.Private[uuid.UUID | None]

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="Null for the share that is the user's own (cash reserve and own positions)."
    )
    async def agent(self, info: Info) -> Agent | None:
        if self.agent_id is None:
            return None
        row = await info.context.loaders.agent_by_id.load(self.agent_id)
        return None if row is None else Agent.of(row)

    @classmethod
    def of(
        cls, agent_id: uuid.UUID | None, percent: Decimal, allocation: Allocation
    ) -> AllocationSlice:
        return cls(
            percent=percent,
            amount=allocation.amount.quantize(CENTS),
            used=allocation.used.quantize(CENTS),
            agent_id=agent_id,
        )


@strawberry.type
class AgentStats:
    trades: int = strawberry.field(description="The agent's orders that filled.")
    win_rate: Decimal | None = strawberry.field(
        description="Percent of the agent's closing fills with a profit; null before the first."
    )
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    last_run_at: datetime | None
    last_summary: str | None


@strawberry.type
class Trigger(Node):
    row: strawberry.Private[TriggerRow]

    @strawberry.field
    def type(self) -> TriggerType:  # type: ignore[valid-type]
        return self.row.type

    @strawberry.field(  # type: ignore[untyped-decorator]
        description='What it listens for, e.g. "Every weekday at 09:30 America/New_York".'
    )
    def description(self) -> str:
        try:
            return spec.config_from_json(self.row.type, self.row.config).describe()
        except spec.TriggerConfigError:
            return f"{self.row.type.value.title()} trigger"

    @strawberry.field
    def config(self) -> JSON:
        return cast(JSON, self.row.config)

    @strawberry.field
    def enabled(self) -> bool:
        return self.row.enabled

    @strawberry.field
    def cooldown_seconds(self) -> int:
        return self.row.cooldown_seconds

    @strawberry.field
    def last_fired_at(self) -> datetime | None:
        return self.row.last_fired_at

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="WEBHOOK only: where to POST, signed with the secret shown at creation."
    )
    def webhook_url(self, info: Info) -> str | None:
        return info.context.agents.webhook_url(self.row)

    @classmethod
    def of(cls, row: TriggerRow) -> Trigger:
        return cls(id=strawberry.ID(str(row.id)), row=row)


@strawberry.type
class AgentDecision:
    action: DecisionAction  # type: ignore[valid-type]
    symbol: str | None
    quantity: Decimal | None
    notional: Decimal | None
    order_type: OrderType | None  # type: ignore[valid-type]
    limit_price: Decimal | None
    confidence: Decimal | None
    reasoning: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AgentDecision:
        return cls(
            action=decision.DecisionAction(d["action"]),
            symbol=d.get("symbol"),
            quantity=_dec(d.get("quantity")),
            notional=_dec(d.get("notional")),
            order_type=None if d.get("orderType") is None else OrderType(d["orderType"]),
            limit_price=_dec(d.get("limitPrice")),
            confidence=_dec(d.get("confidence")),
            reasoning=d["reasoning"],
        )


@strawberry.type
class AgentExecution(Node):
    row: strawberry.Private[ExecutionRow]

    @classmethod
    def of(cls, row: ExecutionRow) -> AgentExecution:
        return cls(id=strawberry.ID(str(row.id)), row=row)

    @strawberry.field
    async def agent(self, info: Info) -> Agent:
        row = await info.context.loaders.agent_by_id.load(self.row.agent_id)
        assert row is not None, "an execution's agent belongs to the same user"
        return Agent.of(row)

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="Null for a run by hand, or when the trigger was removed."
    )
    async def trigger(self, info: Info) -> Trigger | None:
        if self.row.trigger_id is None:
            return None
        row = await info.context.loaders.trigger_by_id.load(self.row.trigger_id)
        return None if row is None else Trigger.of(row)

    @strawberry.field
    def trigger_type(self) -> TriggerType:  # type: ignore[valid-type]
        return self.row.trigger_type

    @strawberry.field
    def status(self) -> ExecutionStatus:  # type: ignore[valid-type]
        return self.row.status

    @strawberry.field
    def started_at(self) -> datetime:
        return self.row.started_at

    @strawberry.field
    def finished_at(self) -> datetime | None:
        return self.row.finished_at

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="The snapshot the agent decided on."
    )
    def context(self) -> JSON:
        return cast(JSON, self.row.context)

    @strawberry.field
    def decisions(self) -> list[AgentDecision]:
        return [AgentDecision.from_json(d) for d in self.row.decisions]

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="The model's overall reasoning."
    )
    def reasoning(self) -> str | None:
        return self.row.reasoning

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="Per BUY or SELL: placed or refused, by which rule, and why."
    )
    def risk_check(self) -> JSON | None:
        return None if self.row.risk_check is None else cast(JSON, self.row.risk_check)

    @strawberry.field
    async def orders(self, info: Info) -> list[Order]:
        found = await info.context.loaders.order_by_id.load_many(self.row.order_ids)
        return [Order.from_snapshot(o) for o in found if o is not None]

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="Exactly what was sent to the model."
    )
    def prompt(self) -> str | None:
        return self.row.prompt

    @strawberry.field
    def model(self) -> str | None:
        return self.row.model

    @strawberry.field
    def input_tokens(self) -> int | None:
        return self.row.input_tokens

    @strawberry.field
    def output_tokens(self) -> int | None:
        return self.row.output_tokens

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="List price; 0 for the rules model or a model without one."
    )
    def cost_usd(self) -> Decimal | None:
        return self.row.cost_usd

    @strawberry.field
    def latency_ms(self) -> int | None:
        return self.row.latency_ms

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="ordered | held | risk_rejected | refused | invalid_output | unavailable "
        "| model_error | paused | agent_deleted | trigger_removed | trigger_disabled | busy "
        "| not_queued | broker_unavailable | internal_error; null while running."
    )
    def outcome(self) -> str | None:
        return self.row.outcome

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="One line for people."
    )
    def summary(self) -> str | None:
        return self.row.summary

    @strawberry.field
    def error(self) -> str | None:
        return self.row.error


@strawberry.type
class AgentExecutionEdge:
    cursor: str
    node: AgentExecution


@strawberry.type
class AgentExecutionConnection:
    edges: list[AgentExecutionEdge]
    page_info: PageInfo


@strawberry.type
class Agent(Node):
    row: strawberry.Private[AgentRow]

    @classmethod
    def of(cls, row: AgentRow) -> Agent:
        return cls(id=strawberry.ID(str(row.id)), row=row)

    @strawberry.field
    def name(self) -> str:
        return self.row.name

    @strawberry.field
    def description(self) -> str | None:
        return self.row.description

    @strawberry.field
    def kind(self) -> AgentKind:  # type: ignore[valid-type]
        return self.row.kind

    @strawberry.field
    def status(self) -> AgentStatus:  # type: ignore[valid-type]
        return self.row.status

    @strawberry.field
    def prompt(self) -> str | None:
        return self.row.prompt

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="The symbols the prompt names, learned when it was saved."
    )
    def symbols(self) -> list[str]:
        return list(self.row.symbols)

    @strawberry.field
    def llm(self) -> LlmSettings:
        return LlmSettings(
            provider=self.row.llm_provider,
            model=self.row.llm_model,
            temperature=self.row.llm_temperature,
        )

    @strawberry.field(  # type: ignore[untyped-decorator]
        description="Where it trades: the paper account, or the connected broker account it "
        "was set up for. Its allocation, positions and P&L are measured there."
    )
    def broker(self) -> BrokerKind:  # type: ignore[valid-type]
        return self.row.broker

    @strawberry.field
    def risk_limits(self) -> AgentRiskLimits:
        return AgentRiskLimits(
            max_position_value=self.row.max_position_value,
            max_daily_trades=self.row.max_daily_trades,
            allocation_percent=self.row.allocation_percent,
        )

    @strawberry.field
    async def allocation(self, info: Info) -> AllocationSlice:
        found = await info.context.loaders.allocation_by_agent_id.load(self.row.id)
        assert found is not None, "the agent belongs to the actor"
        return AllocationSlice.of(self.row.id, self.row.allocation_percent, found)

    @strawberry.field
    async def triggers(self, info: Info) -> list[Trigger]:
        rows = await info.context.loaders.triggers_by_agent_id.load(self.row.id)
        return [Trigger.of(r) for r in rows]

    @strawberry.field
    async def stats(self, info: Info) -> AgentStats:
        found = await info.context.loaders.agent_stats_by_agent_id.load(self.row.id)
        assert found is not None, "the agent belongs to the actor"
        return AgentStats(
            trades=found.trades,
            win_rate=found.win_rate,
            realized_pnl=found.realized_pnl,
            unrealized_pnl=found.unrealized_pnl.quantize(CENTS),
            last_run_at=found.last_run_at,
            last_summary=found.last_summary,
        )

    @strawberry.field
    async def executions(
        self, info: Info, first: int = 20, after: str | None = None
    ) -> AgentExecutionConnection:
        ctx = info.context
        actor = ctx.require_actor(Scope.READ)
        size = page_size(first)
        async with ctx.db.transaction(actor.user_id) as uow:
            rows = await ctx.agents.executions(
                uow, self.row.id, before=parse_cursor(after), limit=size + 1
            )
        edges = [
            AgentExecutionEdge(cursor=make_cursor(r.started_at, r.id), node=AgentExecution.of(r))
            for r in rows[:size]
        ]
        return AgentExecutionConnection(
            edges=edges,
            page_info=PageInfo.of(edges, len(rows) > size),
        )

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field
    def updated_at(self) -> datetime:
        return self.row.updated_at


def page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first must be between 1 and {MAX_PAGE}")
    return first


@strawberry.type
class AgentEdge:
    cursor: str
    node: Agent


@strawberry.type
class AgentConnection:
    edges: list[AgentEdge]
    page_info: PageInfo


@strawberry.type
class Notification(Node):
    kind: str
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None

    @classmethod
    def from_snapshot(cls, d: dict[str, Any]) -> Notification:
        return cls(
            id=strawberry.ID(d["id"]),
            kind=d["kind"],
            title=d["title"],
            body=d["body"],
            created_at=datetime.fromisoformat(d["createdAt"]),
            read_at=None if d["readAt"] is None else datetime.fromisoformat(d["readAt"]),
        )

    @classmethod
    def of(cls, row: NotificationRow) -> Notification:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            title=row.title,
            body=row.body,
            created_at=row.created_at,
            read_at=row.read_at,
        )


@strawberry.type
class NotificationEdge:
    cursor: str
    node: Notification


@strawberry.type
class NotificationConnection:
    edges: list[NotificationEdge]
    page_info: PageInfo


# ---------------------------------------------------------------- inputs


@strawberry.input
class LlmSettingsInput:
    provider: LlmProvider  # type: ignore[valid-type]
    model: str | None = None
    temperature: Decimal | None = None


@strawberry.input
class AgentRiskLimitsInput:
    max_position_value: Decimal | None = None
    max_daily_trades: int | None = None
    allocation_percent: Decimal


@strawberry.input
class TimeTriggerInput:
    cron: str
    timezone: str = "America/New_York"
    market_days_only: bool = True
    cooldown_seconds: int | None = None


@strawberry.input
class PriceTriggerInput:
    symbol: str
    change_percent: Decimal | None = None
    above: Decimal | None = None
    below: Decimal | None = None
    window_minutes: int | None = None
    cooldown_seconds: int | None = strawberry.field(
        default=None, description="Quiet time after firing; 900 when absent."
    )


@strawberry.input
class VolumeTriggerInput:
    symbol: str
    multiple_of_average: Decimal
    cooldown_seconds: int | None = None


@strawberry.input(description='e.g. RSI14 "< 30", MACD "crosses_above_signal".')
class IndicatorTriggerInput:
    symbol: str
    indicator: str
    condition: str
    cooldown_seconds: int | None = None


@strawberry.input
class NewsTriggerInput:
    keywords: list[str] | None = None
    symbols: list[str] | None = None
    sentiment: Sentiment | None = None  # type: ignore[valid-type]
    min_relevance: Decimal | None = None
    cooldown_seconds: int | None = None


@strawberry.input(one_of=True)
class TriggerInput:
    time: TimeTriggerInput | None = strawberry.UNSET
    price: PriceTriggerInput | None = strawberry.UNSET
    volume: VolumeTriggerInput | None = strawberry.UNSET
    indicator: IndicatorTriggerInput | None = strawberry.UNSET
    news: NewsTriggerInput | None = strawberry.UNSET
    webhook: bool | None = strawberry.field(
        default=strawberry.UNSET,
        description="true: a signed URL; its secret is in AgentSaved.webhookSecrets, once.",
    )


TOTP_CODE = (
    "A current two-factor code (or a recovery code), due when 2FA is on and the agent will "
    "trade a LIVE broker account: real money."
)


@strawberry.input
class CreateAgentInput:
    name: str
    description: str | None = None
    prompt: str
    llm: LlmSettingsInput | None = None
    risk_limits: AgentRiskLimitsInput
    triggers: list[TriggerInput] | None = None
    broker: BrokerKind = strawberry.field(  # type: ignore[valid-type]
        default=trading_types.BrokerKind.PAPER,
        description="Where the agent trades; ALPACA needs a connected Alpaca account.",
    )
    totp_code: str | None = strawberry.field(default=None, description=TOTP_CODE)


@strawberry.input
class UpdateAgentInput:
    name: str | None = None
    description: str | None = None
    prompt: str | None = None
    llm: LlmSettingsInput | None = None
    risk_limits: AgentRiskLimitsInput | None = None
    broker: BrokerKind | None = strawberry.field(  # type: ignore[valid-type]
        default=None,
        description="Absent: unchanged. ALPACA sets the agent to trade the Alpaca account "
        "connected now; only an agent with no positions or open orders where it trades "
        "now can move.",
    )
    totp_code: str | None = strawberry.field(default=None, description=TOTP_CODE)


# ---------------------------------------------------------------- results


@strawberry.type
class WebhookSecret:
    trigger_id: strawberry.ID
    url: str
    secret: str = strawberry.field(
        description="HMAC-SHA256 key for X-Kianax-Signature; shown only in this response."
    )


@strawberry.type
class AgentSaved:
    agent: Agent
    webhook_secrets: list[WebhookSecret]


@strawberry.type
class AgentRunQueued:
    execution: AgentExecution


AgentResult = Annotated[
    AgentSaved | NotFound | ValidationError | TwoFactorRequired, strawberry.union("AgentResult")
]
RunAgentResult = Annotated[
    AgentRunQueued | NotFound | ValidationError | RateLimited, strawberry.union("RunAgentResult")
]
