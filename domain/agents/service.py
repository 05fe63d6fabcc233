"""Agents: create, change, pause, delete, add and remove triggers, run now, receive webhooks.

Everything a user saves is checked when it is saved: a rules strategy the grammar does not
cover is refused quoting the phrase it could not read, an LLM prompt must name the symbols
it may trade, trigger configs validate themselves, and the agents trading one account may
together be allocated at most 100% of it. Changes to one user's agents are serialized (see
`repo.lock_agents_of`), so quotas and the allocation sums hold under concurrent requests.

An agent trades the paper account or the user's connected broker account. It is bound to
the connection it was saved with, so a connection replaced by another never hands its
agents over. Letting an agent trade a LIVE account is letting software spend real money:
like connecting LIVE keys, it takes a current two-factor code when the user has 2FA on --
on creating such an agent, on changing what it does (broker, strategy, model, limits) and
on activating it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from redis.asyncio import Redis

from db.engine import Database, UnitOfWork
from db.models import Agent, AgentExecution, BrokerConnection, Trigger
from db.repositories import agents as repo
from db.repositories import brokers as broker_repo
from db.repositories import trading as trading_repo
from domain import audit
from domain.agents.decision import LlmProvider
from domain.agents.execution import (
    Executor,
    RunRequest,
    agent_account,
    agent_books,
    unusable,
)
from domain.agents.registry import DEFAULT_MODELS, PROVIDER_NAMES
from domain.agents.rules import StrategyParseError, parse_strategy, watched_symbols
from domain.agents.types import AgentKind, AgentStatus, ExecutionStatus
from domain.auth.ratelimit import Limit, RateLimiter
from domain.brokers.crypto import KeyRing, SealedSecret, open_sealed, seal
from domain.brokers.types import BrokerEnvironment, ConnectionStatus
from domain.market.service import MarketDataError, MarketService
from domain.trading import risk
from domain.trading.service import TradingError, Valuation
from domain.trading.types import BrokerKind
from domain.triggers import webhook
from domain.triggers.spec import (
    IndicatorConfig,
    NewsConfig,
    PriceConfig,
    TriggerConfig,
    TriggerType,
    VolumeConfig,
    WebhookConfig,
)

MAX_AGENTS = 20  # per user
MAX_TRIGGERS = 50  # per user, over all agents
MAX_NAME = 100
MAX_DESCRIPTION = 1_000
MAX_PROMPT = 4_000  # an LLM prompt; the rules grammar has its own, lower limit
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600
MAX_TEMPERATURE = Decimal(2)
MAX_SYMBOLS = 10
# Price, volume, indicator and news events repeat while a condition holds; a quarter of an
# hour between runs keeps one jittery signal from trading all day. A schedule or a signed
# webhook call is its own deliberate cadence.
DEFAULT_COOLDOWNS = {
    TriggerType.TIME: 0,
    TriggerType.PRICE: 900,
    TriggerType.VOLUME: 900,
    TriggerType.INDICATOR: 900,
    TriggerType.NEWS: 900,
    TriggerType.WEBHOOK: 0,
    TriggerType.MANUAL: 0,
}
RUNS_PER_USER = Limit("agent-runs-user", 30, 60)  # "run now" presses and webhook calls
WEBHOOK_MAX_BODY = 64 * 1024
WEBHOOK_PAYLOAD_IN_CONTEXT = 4_000  # characters of the body the model sees, as data
TRIGGERS_CHANGED_CHANNEL = "triggers:changed"

log = logging.getLogger(__name__)

# Upper-case words in a prompt that are not tickers even when a ticker has that name.
_NOT_TICKERS = frozenset(
    (
        *("A", "I", "AI", "ALL", "AND", "API", "ARE", "AT", "ATR", "BE", "BUY", "BY", "CEO"),
        *("CPI", "DO", "EMA", "EPS", "ETF", "EU", "FED", "FOR", "GDP", "GO", "HOLD", "IF", "IN"),
        *("IPO", "IS", "IT", "LLM", "MA", "MACD", "NO", "NOT", "OF", "OK", "ON", "OR", "PE"),
        *("RSI", "SELL", "SMA", "SO", "THE", "TO", "UK", "US", "USA", "USD", "VWAP"),
    )
)
_TICKER = re.compile(r"(?<![\w$])(\$)?([A-Z]{1,5}(?:\.[A-Z]{1,2})?)(?![\w.])")


class Publisher(Protocol):
    async def publish(self, channel: str, message: Any) -> None: ...


# Asks the person acting for a current two-factor code when they have 2FA on; raises
# domain.auth.service.TwoFactorRequired when it is missing or wrong. Called before anything
# is written, so a refusal can commit its audit record and nothing else.
SecondFactor = Callable[[], Awaitable[None]]


# ---------------------------------------------------------------- expected failures


class AgentError(Exception):
    code = "AGENT_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AgentInvalid(AgentError):
    code = "VALIDATION_ERROR"

    def __init__(self, field_name: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class QuotaExceeded(AgentInvalid):
    code = "QUOTA_EXCEEDED"


class AgentNotFound(AgentError):
    code = "NOT_FOUND"


class RunsRateLimited(AgentError):
    code = "RATE_LIMITED"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many agent runs; try again in {retry_after}s")
        self.retry_after = retry_after


# ---------------------------------------------------------------- what users submit


@dataclass(frozen=True, slots=True)
class LlmChoice:
    provider: LlmProvider = LlmProvider.RULES
    model: str | None = None
    temperature: Decimal | None = None


@dataclass(frozen=True, slots=True)
class RiskChoice:
    allocation_percent: Decimal
    max_position_value: Decimal | None = None
    max_daily_trades: int | None = None


@dataclass(frozen=True, slots=True)
class TriggerDraft:
    config: TriggerConfig
    cooldown_seconds: int | None = None  # None: the type's default


@dataclass(frozen=True, slots=True)
class AgentDraft:
    name: str
    prompt: str
    risk: RiskChoice
    description: str | None = None
    llm: LlmChoice = field(default_factory=LlmChoice)
    triggers: tuple[TriggerDraft, ...] = ()
    broker: BrokerKind = BrokerKind.PAPER


@dataclass(frozen=True, slots=True)
class AgentChanges:
    """None leaves a field as it is; an empty description clears it."""

    name: str | None = None
    description: str | None = None
    prompt: str | None = None
    llm: LlmChoice | None = None
    risk: RiskChoice | None = None
    # Given, even unchanged, it binds the agent to the broker's current connection.
    broker: BrokerKind | None = None

    @property
    def changes_trading(self) -> bool:
        """Whether it changes what the agent does with money, not only how it is named."""
        return any(v is not None for v in (self.prompt, self.llm, self.risk, self.broker))


@dataclass(frozen=True, slots=True)
class Saved:
    agent: Agent
    # The signing secret of each webhook trigger this change created, shown once.
    webhook_secrets: tuple[tuple[Trigger, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AgentStats:
    trades: int
    win_rate: Decimal | None
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    last_run_at: datetime | None
    last_summary: str | None


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int  # the HTTP status to answer with
    message: str
    event_key: str | None = None


# ---------------------------------------------------------------- the service


@dataclass
class AgentService:
    db: Database
    redis: Redis
    market: MarketService
    executor: Executor
    publisher: Publisher
    keys: KeyRing
    public_url: str
    enqueue_run: Callable[[RunRequest], Awaitable[None]]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Webhook callers sign with their own (real) clock, whatever time the simulated market
    # and trading run on.
    wall_clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    # --- saving

    async def create(
        self, uow: UnitOfWork, draft: AgentDraft, *, second_factor: SecondFactor
    ) -> Saved:
        user_id = _user(uow)
        await repo.lock_agents_of(uow.session, user_id)
        if await repo.count_agents(uow.session, user_id) >= MAX_AGENTS:
            raise QuotaExceeded(None, f"you have {MAX_AGENTS} agents, the most allowed")
        name = await self._name(uow, draft.name, None)
        description = _description(draft.description)
        provider, model, temperature = self._llm(draft.llm)
        symbols = await self._symbols(draft.prompt, provider)
        connection = await self._connection(uow, draft.broker)
        limits = await self._risk(uow, draft.risk, None, _id_of(connection))
        if _real_money(connection):
            await second_factor()  # created ACTIVE: it may trade at its next trigger
        now = self.clock()
        agent = Agent(
            id=uuid.uuid4(),
            user_id=user_id,
            kind=AgentKind.PROMPT,
            status=AgentStatus.ACTIVE,
            name=name,
            description=description,
            prompt=draft.prompt.strip(),
            symbols=symbols,
            llm_provider=provider,
            llm_model=model,
            llm_temperature=temperature,
            max_position_value=limits.max_position_value,
            max_daily_trades=limits.max_daily_trades,
            allocation_percent=limits.allocation_percent,
            broker=draft.broker,
            broker_connection_id=_id_of(connection),
            created_at=now,
            updated_at=now,
        )
        uow.session.add(agent)
        await uow.session.flush()
        created = await self._add_triggers(uow, agent, draft.triggers, "triggers")
        await audit.record(
            uow.session,
            "agent.created",
            user_id=user_id,
            entity="agent",
            entity_id=agent.id,
            payload={
                "name": name,
                "provider": provider.value,
                "allocation": str(limits.allocation_percent),
                **_broker_payload(draft.broker, connection),
            },
        )
        self._triggers_changed(uow)
        await uow.session.refresh(agent)  # the values as stored (numeric scales)
        return Saved(agent, created)

    async def update(
        self,
        uow: UnitOfWork,
        agent_id: uuid.UUID,
        changes: AgentChanges,
        *,
        second_factor: SecondFactor,
    ) -> Saved:
        """Every change is checked before any is made, so a refusal changes nothing."""
        user_id = _user(uow)
        await repo.lock_agents_of(uow.session, user_id)
        agent = await self._agent(uow, agent_id, lock=True)
        name = None if changes.name is None else await self._name(uow, changes.name, agent.id)
        description = None if changes.description is None else _description(changes.description)
        strategy: tuple[str, list[str], LlmProvider, str, Decimal] | None = None
        if changes.llm is not None or changes.prompt is not None:
            llm = changes.llm or LlmChoice(
                agent.llm_provider, agent.llm_model, agent.llm_temperature
            )
            provider, model, temperature = self._llm(llm)
            prompt = agent.prompt if changes.prompt is None else changes.prompt
            symbols = await self._symbols(prompt, provider)
            strategy = (prompt.strip(), symbols, provider, model, temperature)
        if changes.broker is None:
            connection = await self._bound(uow, agent)
            connection_id = agent.broker_connection_id
        else:
            connection = await self._connection(uow, changes.broker)
            connection_id = _id_of(connection)
            if connection_id != agent.broker_connection_id:
                await self._check_movable(uow, agent)
        limits: RiskChoice | None = None
        if changes.risk is not None or connection_id != agent.broker_connection_id:
            # Moving to another account, the allocation must fit among that account's agents.
            current = RiskChoice(
                agent.allocation_percent, agent.max_position_value, agent.max_daily_trades
            )
            limits = await self._risk(uow, changes.risk or current, agent.id, connection_id)
        if changes.changes_trading and _real_money(connection):
            await second_factor()

        if name is not None:
            agent.name = name
        if description is not None:
            agent.description = description
        if strategy is not None:
            (
                agent.prompt,
                agent.symbols,
                agent.llm_provider,
                agent.llm_model,
                agent.llm_temperature,
            ) = strategy
        if limits is not None:
            agent.allocation_percent = limits.allocation_percent
            agent.max_position_value = limits.max_position_value
            agent.max_daily_trades = limits.max_daily_trades
        if changes.broker is not None:
            agent.broker = changes.broker
            agent.broker_connection_id = connection_id
        agent.updated_at = self.clock()
        await uow.session.flush()
        payload: dict[str, Any] = {
            "fields": sorted(k for k, v in vars_of(changes).items() if v is not None)
        }
        if changes.broker is not None:
            payload |= _broker_payload(changes.broker, connection)
        await audit.record(
            uow.session,
            "agent.updated",
            user_id=user_id,
            entity="agent",
            entity_id=agent.id,
            payload=payload,
        )
        await uow.session.refresh(agent)
        return Saved(agent)

    async def set_status(
        self,
        uow: UnitOfWork,
        agent_id: uuid.UUID,
        status: AgentStatus,
        *,
        second_factor: SecondFactor,
    ) -> Agent:
        """Pause or activate. Activating checks the agent's broker connection as saving
        does: an agent is active only where it can trade."""
        agent = await self._agent(uow, agent_id, lock=True)
        if (
            status is AgentStatus.ACTIVE
            and agent.status is AgentStatus.PAUSED
            and agent.broker_connection_id is not None
        ):
            connection = await self._bound(uow, agent)
            problem = unusable(agent.broker, connection)
            if problem is not None:
                raise AgentInvalid("broker", problem)
            if _real_money(connection):
                await second_factor()
        if agent.status is not status:
            agent.status = status
            agent.updated_at = self.clock()
            await uow.session.flush()
            kind = "agent.activated" if status is AgentStatus.ACTIVE else "agent.paused"
            await audit.record(
                uow.session, kind, user_id=_user(uow), entity="agent", entity_id=agent.id
            )
            self._triggers_changed(uow)
        return agent

    async def pause_all(self, uow: UnitOfWork) -> int:
        """Pause every active agent; how many were paused. Runs already queued find their
        agent paused and place nothing."""
        paused = await repo.pause_all(uow.session, _user(uow), self.clock())
        if paused:
            await audit.record(
                uow.session,
                "agent.paused_all",
                user_id=_user(uow),
                entity="agent",
                payload={"paused": paused},
            )
            self._triggers_changed(uow)
        return paused

    async def delete(self, uow: UnitOfWork, agent_id: uuid.UUID) -> bool:
        """Retire an agent: its triggers go, its open orders are canceled, and its history
        (executions, orders, positions) stays attributed to it. False if there is none."""
        user_id = _user(uow)
        await repo.lock_agents_of(uow.session, user_id)
        agent = await repo.agent(uow.session, user_id, agent_id, lock=True)
        if agent is None:
            return False
        for order in await repo.open_orders_of(uow.session, user_id, agent.id):
            try:
                await self.executor.trading.cancel_order(uow, order.id)
            except TradingError:
                continue  # it closed on its own meanwhile
        await repo.delete_triggers_of(uow.session, user_id, agent.id)
        now = self.clock()
        agent.status = AgentStatus.PAUSED
        agent.deleted_at = now
        agent.updated_at = now
        await uow.session.flush()
        await audit.record(
            uow.session, "agent.deleted", user_id=user_id, entity="agent", entity_id=agent.id
        )
        self._triggers_changed(uow)
        return True

    async def add_trigger(self, uow: UnitOfWork, agent_id: uuid.UUID, draft: TriggerDraft) -> Saved:
        user_id = _user(uow)
        await repo.lock_agents_of(uow.session, user_id)
        agent = await self._agent(uow, agent_id, lock=True)
        created = await self._add_triggers(uow, agent, (draft,), None)
        agent.updated_at = self.clock()
        self._triggers_changed(uow)
        return Saved(agent, created)

    async def remove_trigger(self, uow: UnitOfWork, trigger_id: uuid.UUID) -> bool:
        user_id = _user(uow)
        row = await repo.trigger(uow.session, user_id, trigger_id, lock=True)
        if row is None:
            return False
        await repo.delete_trigger(uow.session, row)
        await audit.record(
            uow.session,
            "trigger.removed",
            user_id=user_id,
            entity="trigger",
            entity_id=trigger_id,
            payload={"agent_id": str(row.agent_id), "type": row.type.value},
        )
        self._triggers_changed(uow)
        return True

    # --- running

    async def run_now(self, uow: UnitOfWork, agent_id: uuid.UUID) -> AgentExecution:
        """Queue a run of the agent by hand; the execution is RUNNING until the job ends."""
        user_id = _user(uow)
        agent = await self._agent(uow, agent_id)
        if agent.status is AgentStatus.PAUSED:
            raise AgentInvalid("id", "the agent is paused; activate it to run it")
        wait = await RateLimiter(self.redis).hit(RUNS_PER_USER, str(user_id))
        if wait is not None:
            raise RunsRateLimited(wait)
        request = RunRequest(user_id, agent.id, f"manual:{uuid.uuid4().hex}")
        row = AgentExecution(
            id=uuid.uuid4(),
            user_id=user_id,
            agent_id=agent.id,
            trigger_id=None,
            trigger_type=TriggerType.MANUAL,
            event_key=request.event_key,
            status=ExecutionStatus.RUNNING,
            context={},
            decisions=[],
            order_ids=[],
            started_at=self.clock(),
        )
        uow.session.add(row)
        await uow.session.flush()
        uow.after_commit(lambda: self._enqueue_or_give_up(request))
        return row

    async def _enqueue_or_give_up(self, request: RunRequest) -> None:
        try:
            await self.enqueue_run(request)
        except Exception:
            # The row is committed; left RUNNING it would wait for a job that never comes.
            log.exception("could not queue an agent run", extra={"job_id": request.job_id})
            await self.executor.skip(request, "the run could not be queued", "not_queued")

    async def receive_webhook(
        self,
        trigger_id: uuid.UUID,
        *,
        body: bytes,
        signature: str | None,
        timestamp: str | None,
    ) -> WebhookReply:
        """A call to a WEBHOOK trigger's URL: checked (signature, age, replay), then a run is
        queued. Unknown and forged calls learn nothing about the trigger or its agent."""
        async with self.db.transaction(None) as uow:
            owner = await repo.webhook_owner(uow.session, trigger_id)
        if owner is None:
            return WebhookReply(404, "no such webhook")
        async with self.db.transaction(owner) as uow:
            row = await repo.trigger(uow.session, owner, trigger_id, lock=True)
            if row is None:
                return WebhookReply(404, "no such webhook")
            verdict = webhook.verify(
                self._secret(row).encode(),
                signature_header=signature,
                timestamp_header=timestamp,
                body=body,
                now=self.wall_clock(),
            )
            if verdict is webhook.WebhookVerdict.MISSING:
                return WebhookReply(401, "sign the call: X-Kianax-Signature and X-Kianax-Timestamp")
            if verdict is webhook.WebhookVerdict.BAD_SIGNATURE:
                return WebhookReply(401, "the signature does not match")
            if verdict is webhook.WebhookVerdict.STALE_TIMESTAMP:
                return WebhookReply(401, "the timestamp is too old or in the future")
            assert signature is not None
            seen = await self.redis.set(
                webhook.replay_key(trigger_id, signature),
                1,
                nx=True,
                ex=webhook.DEFAULT_TOLERANCE_SECONDS,
            )
            if not seen:
                return WebhookReply(409, "this call was already received")
            agent = await repo.agent(uow.session, owner, row.agent_id)
            if agent is None or agent.status is AgentStatus.PAUSED or not row.enabled:
                return WebhookReply(409, "the agent is paused")
            now = self.clock()
            if (
                row.cooldown_seconds
                and row.last_fired_at is not None
                and now - row.last_fired_at < timedelta(seconds=row.cooldown_seconds)
            ):
                return WebhookReply(429, "the trigger is cooling down")
            row.last_fired_at = now
            digest = hashlib.sha256(signature.strip().lower().encode()).hexdigest()[:32]
            request = RunRequest(
                owner,
                agent.id,
                f"{trigger_id}:{digest}",
                trigger_id=trigger_id,
                trigger_type=TriggerType.WEBHOOK,
                detail={"payload": body.decode("utf-8", "replace")[:WEBHOOK_PAYLOAD_IN_CONTEXT]},
            )
            uow.after_commit(lambda: self.enqueue_run(request))
        return WebhookReply(202, "accepted", request.event_key)

    # --- reading

    async def list_agents(
        self,
        uow: UnitOfWork,
        *,
        status: AgentStatus | None,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[Agent]:
        return await repo.agents(uow.session, _user(uow), status=status, before=before, limit=limit)

    async def get(self, uow: UnitOfWork, agent_id: uuid.UUID) -> Agent | None:
        return await repo.agent(uow.session, _user(uow), agent_id)

    async def executions(
        self,
        uow: UnitOfWork,
        agent_id: uuid.UUID,
        *,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[AgentExecution]:
        return await repo.executions(uow.session, _user(uow), agent_id, before=before, limit=limit)

    async def execution(self, uow: UnitOfWork, execution_id: uuid.UUID) -> AgentExecution | None:
        return await repo.execution(uow.session, _user(uow), execution_id)

    async def allocations(
        self, uow: UnitOfWork, agents: Sequence[Agent]
    ) -> dict[uuid.UUID, risk.Allocation]:
        books = await agent_books(uow, self.executor.trading, agents)
        return {agent_id: book.allocation for agent_id, book in books.items()}

    async def portfolio_allocation(
        self, uow: UnitOfWork, valuation: Valuation
    ) -> list[tuple[uuid.UUID | None, Decimal, risk.Allocation]]:
        """How `valuation`'s portfolio is shared: (agent id, percent, allocation) per live
        agent trading that account, then the rest, the user's own (None). What deleted agents
        and agents moved elsewhere still hold there counts as the user's: no agent spends
        from it any more."""
        user_id = _user(uow)
        account = valuation.account
        agents = [
            a
            for a in await repo.agents(uow.session, user_id)
            if a.broker_connection_id == account.broker_connection_id
        ]
        orders = await trading_repo.open_orders(uow.session, user_id)
        # Positions are read again, after the orders: a fill since `valuation` was taken
        # moves its cost from an open order to a position, and must be seen in one of them.
        positions = await trading_repo.positions(uow.session, account.id)
        live = {a.id for a in agents}

        def owner(agent_id: uuid.UUID | None) -> uuid.UUID | None:
            return agent_id if agent_id in live else None

        def share(agent_id: uuid.UUID | None, percent: Decimal) -> risk.Allocation:
            # The user's share may hold one symbol in several rows (their own, a deleted
            # agent's): one holding per symbol.
            holdings: dict[str, risk.AgentHolding] = {}
            for p in positions:
                if owner(p.agent_id) == agent_id:
                    quantity, cost = holdings.get(p.symbol, (Decimal(0), Decimal(0)))
                    holdings[p.symbol] = risk.AgentHolding(
                        quantity + p.quantity, cost + p.cost_basis
                    )
            snapshot = risk.AgentSnapshot(
                equity=valuation.equity,
                positions=holdings,
                reserved=sum(
                    (
                        o.reserved
                        for o in orders
                        if o.account_id == account.id and owner(o.agent_id) == agent_id
                    ),
                    Decimal(0),
                ),
            )
            return risk.agent_allocation(snapshot, risk.AgentLimits(percent))

        rest = 100 - sum((a.allocation_percent for a in agents), Decimal(0))
        return [
            *((a.id, a.allocation_percent, share(a.id, a.allocation_percent)) for a in agents),
            (None, rest, share(None, rest)),
        ]

    async def stats(self, uow: UnitOfWork, agents: Sequence[Agent]) -> dict[uuid.UUID, AgentStats]:
        user_id = _user(uow)
        ids = [a.id for a in agents]
        fills = await repo.fill_stats(uow.session, user_id, ids)
        runs = await repo.latest_executions(uow.session, user_id, ids)
        books = await agent_books(uow, self.executor.trading, agents)
        quotes = await self.market.quotes(sorted({s for b in books.values() for s in b.positions}))
        result: dict[uuid.UUID, AgentStats] = {}
        for agent in agents:
            fill = fills.get(agent.id, repo.FillStats(0, 0, 0, Decimal(0)))
            unrealized = Decimal(0)
            for symbol, (quantity, cost) in books[agent.id].positions.items():
                if symbol in quotes:
                    unrealized += quantity * quotes[symbol].last - cost
            last_run_at, last_summary = runs.get(agent.id, (None, None))
            result[agent.id] = AgentStats(
                trades=fill.trades,
                win_rate=(
                    (Decimal(fill.wins) / fill.closing * 100).quantize(Decimal("0.01"))
                    if fill.closing
                    else None
                ),
                realized_pnl=fill.realized,
                unrealized_pnl=unrealized,
                last_run_at=last_run_at,
                last_summary=last_summary,
            )
        return result

    def webhook_url(self, trigger: Trigger) -> str | None:
        if trigger.type is not TriggerType.WEBHOOK:
            return None
        return f"{self.public_url.rstrip('/')}/hooks/{trigger.id}"

    # --- helpers

    async def _agent(self, uow: UnitOfWork, agent_id: uuid.UUID, *, lock: bool = False) -> Agent:
        agent = await repo.agent(uow.session, _user(uow), agent_id, lock=lock)
        if agent is None:
            raise AgentNotFound("no such agent")
        return agent

    async def _name(self, uow: UnitOfWork, raw: str, agent_id: uuid.UUID | None) -> str:
        name = " ".join(raw.split())
        if not name:
            raise AgentInvalid("name", "give the agent a name")
        if len(name) > MAX_NAME:
            raise AgentInvalid("name", f"at most {MAX_NAME} characters")
        if await repo.name_taken(uow.session, _user(uow), name, excluding=agent_id):
            raise AgentInvalid("name", f"you already have an agent named {name!r}")
        return name

    def _llm(self, choice: LlmChoice) -> tuple[LlmProvider, str, Decimal]:
        provider = choice.provider
        if not self.executor.models.available(provider):
            raise AgentInvalid(
                "llm.provider", f"{PROVIDER_NAMES[provider]} is not configured on this server"
            )
        model = (choice.model or DEFAULT_MODELS[provider]).strip()
        if provider is LlmProvider.RULES and model != DEFAULT_MODELS[provider]:
            raise AgentInvalid("llm.model", f"the rules model is {DEFAULT_MODELS[provider]!r}")
        if not model or len(model) > 100 or not model.isprintable():
            raise AgentInvalid("llm.model", "a model name has 1 to 100 printable characters")
        temperature = Decimal("0.2") if choice.temperature is None else choice.temperature
        if not (temperature.is_finite() and 0 <= temperature <= MAX_TEMPERATURE):
            raise AgentInvalid("llm.temperature", f"must be between 0 and {MAX_TEMPERATURE}")
        return provider, model, temperature.quantize(Decimal("0.01"))

    async def _symbols(self, raw: str, provider: LlmProvider) -> list[str]:
        """The symbols a prompt names. A rules strategy must parse; an LLM prompt is read
        with the grammar when it happens to follow it, else for its tickers."""
        prompt = raw.strip()
        if not prompt:
            raise AgentInvalid("prompt", "write the agent's strategy")
        if len(prompt) > MAX_PROMPT:
            raise AgentInvalid("prompt", f"at most {MAX_PROMPT:,} characters")
        try:
            symbols = watched_symbols(parse_strategy(prompt))
        except StrategyParseError as exc:
            if provider is LlmProvider.RULES:
                raise AgentInvalid("prompt", str(exc)) from None
            symbols = await self._tickers(prompt)
        if not symbols:
            raise AgentInvalid("prompt", "name the symbols the agent may trade, e.g. AAPL or $MSFT")
        if len(symbols) > MAX_SYMBOLS:
            raise AgentInvalid("prompt", f"name at most {MAX_SYMBOLS} symbols")
        try:
            return await self.market.require_known(symbols)
        except MarketDataError as exc:
            raise AgentInvalid("prompt", str(exc)) from None

    async def _tickers(self, prompt: str) -> list[str]:
        found: list[str] = []
        for match in _TICKER.finditer(prompt):
            dollar, word = match.groups()
            if word in found or (not dollar and word in _NOT_TICKERS):
                continue
            if dollar or await self.market.details(word) is not None:
                found.append(word)
        return found

    async def _risk(
        self,
        uow: UnitOfWork,
        choice: RiskChoice,
        agent_id: uuid.UUID | None,
        connection_id: uuid.UUID | None,
    ) -> RiskChoice:
        percent = choice.allocation_percent
        field_of = "riskLimits."
        if not (percent.is_finite() and 0 <= percent <= 100):
            raise AgentInvalid(f"{field_of}allocationPercent", "must be between 0 and 100")
        if percent != percent.quantize(Decimal("0.0001")):
            raise AgentInvalid(f"{field_of}allocationPercent", "at most four decimal places")
        value = choice.max_position_value
        if value is not None and not (value.is_finite() and value > 0):
            raise AgentInvalid(f"{field_of}maxPositionValue", "must be greater than zero")
        if value is not None and value != value.quantize(Decimal("0.01")):
            raise AgentInvalid(f"{field_of}maxPositionValue", "dollars and cents only")
        trades = choice.max_daily_trades
        if trades is not None and not 0 <= trades <= 10_000:
            raise AgentInvalid(f"{field_of}maxDailyTrades", "must be between 0 and 10,000")
        others = await repo.allocation_sum(
            uow.session, _user(uow), connection_id, excluding=agent_id
        )
        if others + percent > 100:
            account = "paper account" if connection_id is None else "broker account"
            raise AgentInvalid(
                f"{field_of}allocationPercent",
                f"your agents trading this {account} would be allocated "
                f"{_percent(others + percent)} of it; at most 100% is possible "
                f"({_percent(100 - others)} is free)",
            )
        return choice

    async def _connection(self, uow: UnitOfWork, broker: BrokerKind) -> BrokerConnection | None:
        """The connection an agent set to trade `broker` is bound to; None for paper."""
        if broker is BrokerKind.PAPER:
            return None
        connection = await broker_repo.active_connection(uow.session, _user(uow), broker)
        if connection is None:
            raise AgentInvalid(
                "broker",
                f"connect your {broker.value.title()} account first; "
                "the agent trades through that connection",
            )
        problem = unusable(broker, connection)
        if problem is not None:
            raise AgentInvalid("broker", problem)
        return connection

    async def _bound(self, uow: UnitOfWork, agent: Agent) -> BrokerConnection | None:
        if agent.broker_connection_id is None:
            return None
        return await broker_repo.connection(uow.session, _user(uow), agent.broker_connection_id)

    async def _check_movable(self, uow: UnitOfWork, agent: Agent) -> None:
        """An agent leaves an account it can still trade only empty-handed: what it holds
        or has on order there would be left with nobody managing it, outside its
        allocation. A disconnected account's are out of Kianax's reach either way."""
        if agent.broker_connection_id is not None:
            current = await self._bound(uow, agent)
            if current is None or current.status is ConnectionStatus.DISCONNECTED:
                return
        user_id = _user(uow)
        if await repo.open_orders_of(uow.session, user_id, agent.id):
            raise AgentInvalid(
                "broker", "the agent has open orders; cancel them before it trades elsewhere"
            )
        account = await agent_account(uow, self.executor.trading, agent)
        held = sorted(
            {
                p.symbol
                for p in await trading_repo.positions(uow.session, account.id)
                if p.agent_id == agent.id
            }
        )
        if held:
            raise AgentInvalid(
                "broker",
                f"the agent holds {', '.join(held)} where it trades now; "
                "close those positions before it trades elsewhere",
            )

    async def _add_triggers(
        self,
        uow: UnitOfWork,
        agent: Agent,
        drafts: Sequence[TriggerDraft],
        path: str | None,
    ) -> tuple[tuple[Trigger, str], ...]:
        user_id = _user(uow)
        existing = await repo.count_triggers(uow.session, user_id)
        if existing + len(drafts) > MAX_TRIGGERS:
            raise QuotaExceeded(
                path, f"you have {existing} triggers; at most {MAX_TRIGGERS} are allowed"
            )
        secrets_shown: list[tuple[Trigger, str]] = []
        for i, draft in enumerate(drafts):
            prefix = "" if path is None else f"{path}[{i}]."
            config = draft.config
            await self._check_trigger(config, prefix)
            cooldown = (
                DEFAULT_COOLDOWNS[config.type]
                if draft.cooldown_seconds is None
                else draft.cooldown_seconds
            )
            if not 0 <= cooldown <= MAX_COOLDOWN_SECONDS:
                raise AgentInvalid(
                    f"{prefix}cooldownSeconds", f"must be 0 to {MAX_COOLDOWN_SECONDS} seconds"
                )
            row = Trigger(
                id=uuid.uuid4(),
                user_id=user_id,
                agent_id=agent.id,
                type=config.type,
                config=config.to_json(),
                enabled=True,
                cooldown_seconds=cooldown,
                created_at=self.clock(),
            )
            if isinstance(config, WebhookConfig):
                secret = "whsec_" + secrets.token_urlsafe(32)
                sealed = seal(self.keys, secret, user_id=user_id, connection_id=row.id)
                row.secret_key_id = sealed.key_id
                row.secret_wrapped_key = sealed.wrapped_key
                row.secret_ciphertext = sealed.ciphertext
                secrets_shown.append((row, secret))
            uow.session.add(row)
            await uow.session.flush()
            await audit.record(
                uow.session,
                "trigger.added",
                user_id=user_id,
                entity="trigger",
                entity_id=row.id,
                payload={"agent_id": str(agent.id), "type": config.type.value},
            )
        return tuple(secrets_shown)

    async def _check_trigger(self, config: TriggerConfig, prefix: str) -> None:
        if isinstance(config, NewsConfig):
            # The model has room for news triggers (type, config, description); nothing
            # evaluates them yet, and a trigger that would never fire is refused.
            raise AgentInvalid(f"{prefix}news", "news triggers are not available yet")
        problems = config.validate()
        if problems:
            first = problems[0]
            raise AgentInvalid(f"{prefix}{first.field}", first.message)
        if isinstance(config, PriceConfig | VolumeConfig | IndicatorConfig):
            try:
                await self.market.require_known([config.symbol])
            except MarketDataError as exc:
                raise AgentInvalid(f"{prefix}symbol", str(exc)) from None

    def _secret(self, row: Trigger) -> str:
        assert row.secret_key_id and row.secret_wrapped_key and row.secret_ciphertext
        return open_sealed(
            self.keys,
            SealedSecret(row.secret_key_id, row.secret_wrapped_key, row.secret_ciphertext),
            user_id=row.user_id,
            connection_id=row.id,
        )

    def _triggers_changed(self, uow: UnitOfWork) -> None:
        # The worker's trigger index reloads this user's triggers at once rather than
        # everybody's at its next refresh.
        changed = {"userId": str(_user(uow))}
        uow.after_commit(lambda: self.publisher.publish(TRIGGERS_CHANGED_CHANNEL, changed))


def vars_of(changes: AgentChanges) -> dict[str, Any]:
    return {name: getattr(changes, name) for name in changes.__slots__}


def _user(uow: UnitOfWork) -> uuid.UUID:
    assert uow.user_id is not None, "agents always act for a user"
    return uow.user_id


def _id_of(connection: BrokerConnection | None) -> uuid.UUID | None:
    return None if connection is None else connection.id


def _real_money(connection: BrokerConnection | None) -> bool:
    return (
        connection is not None
        and connection.status is not ConnectionStatus.DISCONNECTED
        and connection.environment is BrokerEnvironment.LIVE
    )


def _broker_payload(broker: BrokerKind, connection: BrokerConnection | None) -> dict[str, str]:
    if connection is None:
        return {"broker": broker.value}
    return {
        "broker": broker.value,
        "broker_connection_id": str(connection.id),
        "environment": connection.environment.value,
    }


def _description(raw: str | None) -> str | None:
    text = (raw or "").strip()
    if len(text) > MAX_DESCRIPTION:
        raise AgentInvalid("description", f"at most {MAX_DESCRIPTION:,} characters")
    return text or None


def _percent(value: Decimal) -> str:
    return f"{value.normalize():f}%"
