"""One agent run: build the context, ask the model, check the decision, place its orders
through the trading engine, and record everything in an `agent_executions` row.

A run happens in three steps, so no database transaction is held while a model thinks:

1. claim: insert the RUNNING row for (agent, event) -- or find it: a finished row means the
   event was handled already and nothing happens; a RUNNING row is a run queued by
   `runAgent` or one a crashed worker left behind -- then snapshot the context into it;
2. decide: ask the agent's model, outside any transaction, within a deadline;
3. act: in one transaction, lock the row, place each BUY/SELL through
   `TradingService.place` (agent limits, allocation, then the user's limits: nothing a
   model says bypasses them), write the notifications and finish the row.

An agent trades one account: the paper account, or the account of the broker connection
it was set up for. A run whose connection is gone or needs attention fails and places
nothing; it is checked when the run starts and again, with the connection locked so it
cannot be disconnected meanwhile, before the orders go out.

Step 3 commits its orders and the finished row together, so a worker that dies before the
commit leaves no order behind, and its retry (same row, still RUNNING) starts over. Each
order's clientOrderId is derived from (execution id, action index), so two workers on the
same row can never both place an action.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from db.engine import Database, UnitOfWork
from db.models import Account, Agent, AgentExecution, BrokerConnection, Order
from db.repositories import agents as repo
from db.repositories import brokers as broker_repo
from db.repositories import trading as trading_repo
from domain import notifications
from domain.agents.decision import (
    Action,
    Decision,
    DecisionAction,
    DecisionContext,
    LlmSettings,
    ModelError,
    ModelResult,
    ModelUnavailable,
    SymbolSnapshot,
)
from domain.agents.llm import parse_decision
from domain.agents.registry import PROVIDER_NAMES, ModelRegistry
from domain.agents.types import AgentStatus, ExecutionStatus
from domain.brokers.types import ConnectionStatus
from domain.market.models import Timeframe
from domain.market.service import MarketDataError, MarketService
from domain.trading import risk
from domain.trading import service as trading
from domain.trading.types import BrokerKind, OrderRequest, OrderSide, OrderType
from domain.triggers.spec import TriggerConfigError, TriggerType, config_from_json

log = logging.getLogger(__name__)

# A model answer that has not come within this long is given up on (the SDKs' own retries
# included), so a run always finishes well inside its job's time limit.
MODEL_DEADLINE_SECONDS = 90.0
NEWS_ITEMS = 5
RECENT_DECISIONS = 5
MAX_WATCHED = 10  # one action per symbol, and a decision has at most ten (llm.MAX_ACTIONS)
BROKER_UNAVAILABLE = "broker_unavailable"
_SUMMARY_LENGTH = 300


class Publisher(Protocol):
    async def publish(self, channel: str, message: Any) -> None: ...


def agents_channel(user_id: uuid.UUID) -> str:
    return f"user:{user_id}:agents"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One agent run to do, as a job carries it. `event_key` identifies the event that
    caused it (a firing, a scheduled minute, a webhook call, a press of "run now")."""

    user_id: uuid.UUID
    agent_id: uuid.UUID
    event_key: str
    trigger_id: uuid.UUID | None = None
    trigger_type: TriggerType = TriggerType.MANUAL
    detail: dict[str, Any] = field(default_factory=dict)  # JSON: what fired, and how

    @property
    def job_id(self) -> str:
        return f"agent:{self.agent_id}:{self.event_key}"

    def to_job(self) -> dict[str, Any]:
        return {
            "userId": str(self.user_id),
            "agentId": str(self.agent_id),
            "eventKey": self.event_key,
            "triggerId": None if self.trigger_id is None else str(self.trigger_id),
            "triggerType": self.trigger_type.value,
            "detail": self.detail,
        }

    @classmethod
    def from_job(cls, data: dict[str, Any]) -> RunRequest:
        return cls(
            user_id=uuid.UUID(data["userId"]),
            agent_id=uuid.UUID(data["agentId"]),
            event_key=data["eventKey"],
            trigger_id=None if data["triggerId"] is None else uuid.UUID(data["triggerId"]),
            trigger_type=TriggerType(data["triggerType"]),
            detail=dict(data["detail"]),
        )


def execution_event(row: AgentExecution) -> dict[str, Any]:
    """What `user:{id}:agents` carries; subscribers re-read the row through their scope."""
    return {"id": str(row.id), "agentId": str(row.agent_id), "status": row.status.value}


def to_json(value: Any) -> Any:
    """A dataclass tree (DecisionContext, Action, ...) as JSON-able data: Decimals as fixed-
    point strings, datetimes in ISO 8601, enums by value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def action_json(action: Action) -> dict[str, Any]:
    """An action in the decision schema's own shape (see llm.DECISION_SCHEMA)."""

    def amount(value: Decimal | None) -> str | None:
        return None if value is None else format(value, "f")

    return {
        "reasoning": action.reasoning,
        "action": action.action.value,
        "symbol": action.symbol,
        "orderType": action.order_type.value,
        "quantity": amount(action.quantity),
        "notional": amount(action.notional),
        "limitPrice": amount(action.limit_price),
        "confidence": None if action.confidence is None else str(action.confidence),
    }


def validated(decision: Decision, context: DecisionContext) -> Decision:
    """Every model's decision, the built-in one included, passes the one validator of the
    decision schema before anything becomes an order."""
    return parse_decision(
        {
            "reasoning": decision.reasoning,
            "actions": [action_json(a) for a in decision.actions],
            "confidence": None if decision.confidence is None else str(decision.confidence),
        },
        symbols=context.symbols.keys(),
    )


def agent_limits(agent: Agent) -> risk.AgentLimits:
    return risk.AgentLimits(
        allocation_percent=agent.allocation_percent,
        max_position_value=agent.max_position_value,
        max_daily_trades=agent.max_daily_trades,
    )


def unusable(broker: BrokerKind, connection: BrokerConnection | None) -> str | None:
    """Why an agent cannot trade through `connection` now; None when it can."""
    name = broker.value.title()
    if connection is None or connection.status is ConnectionStatus.DISCONNECTED:
        return (
            f"the {name} account this agent was set up to trade is no longer connected; "
            "connect it and set the agent's broker again"
        )
    if connection.status is not ConnectionStatus.CONNECTED:
        return f"the {name} connection needs attention: {connection.last_error or 'reconnect it'}"
    return None


async def broker_problem(uow: UnitOfWork, agent: Agent, *, lock: bool = False) -> str | None:
    """Why `agent` cannot trade its account now; None when it can (paper always can)."""
    if agent.broker_connection_id is None:
        return None
    assert uow.user_id is not None
    connection = await broker_repo.connection(
        uow.session, uow.user_id, agent.broker_connection_id, lock=lock
    )
    return unusable(agent.broker, connection)


async def agent_account(uow: UnitOfWork, engine: trading.TradingService, agent: Agent) -> Account:
    """The account the agent trades. A disconnected connection's account stays: what the
    agent did there is still measured there."""
    if agent.broker_connection_id is None:
        return await engine.account(uow)
    assert uow.user_id is not None
    account = await broker_repo.account_for_connection(
        uow.session, uow.user_id, agent.broker_connection_id
    )
    assert account is not None, "a connection is stored with its account"
    return account


@dataclass(frozen=True, slots=True)
class AgentBook:
    """An agent's share of the account it trades, right now."""

    equity: Decimal
    buying_power: Decimal
    allocation: risk.Allocation
    positions: dict[str, tuple[Decimal, Decimal]]  # symbol -> (quantity, cost basis)


async def agent_books(
    uow: UnitOfWork, engine: trading.TradingService, agents: Sequence[Agent]
) -> dict[uuid.UUID, AgentBook]:
    """Each agent's allocation in the account it trades, measured as the trading engine's
    agent checks measure it: one valuation per account."""
    assert uow.user_id is not None
    open_orders = await trading_repo.open_orders(uow.session, uow.user_id)
    valuations: dict[uuid.UUID | None, trading.Valuation] = {}
    books: dict[uuid.UUID, AgentBook] = {}
    for agent in agents:
        key = agent.broker_connection_id
        if key not in valuations:
            valuations[key] = await engine.valuation(uow, await agent_account(uow, engine, agent))
        valuation = valuations[key]
        positions = {
            p.position.symbol: (p.position.quantity, p.position.cost_basis)
            for p in valuation.positions
            if p.position.agent_id == agent.id
        }
        snapshot = risk.AgentSnapshot(
            equity=valuation.equity,
            positions={s: risk.AgentHolding(q, c) for s, (q, c) in positions.items()},
            reserved=sum(
                (
                    o.reserved
                    for o in open_orders
                    if o.agent_id == agent.id and o.account_id == valuation.account.id
                ),
                Decimal(0),
            ),
        )
        books[agent.id] = AgentBook(
            equity=valuation.equity,
            buying_power=valuation.buying_power,
            allocation=risk.agent_allocation(snapshot, agent_limits(agent)),
            positions=positions,
        )
    return books


@dataclass
class Executor:
    db: Database
    market: MarketService
    trading: trading.TradingService
    publisher: Publisher
    models: ModelRegistry
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    model_deadline: float = MODEL_DEADLINE_SECONDS

    # --- the run

    async def run(self, req: RunRequest) -> uuid.UUID | None:
        """Do the run `req` asks for, once; the execution's id (None if the agent is gone)."""
        claimed = await self._claim(req)
        if claimed is None:
            return None
        execution_id, agent, context = claimed
        if context is None:
            return execution_id  # finished already, or skipped while claiming
        try:
            result = await self._decide(agent, context)
        except ModelError as exc:
            await self._finish_failed(req, execution_id, exc.outcome, str(exc))
            return execution_id
        except Exception:
            log.exception("agent run failed", extra={"execution_id": str(execution_id)})
            await self._finish_failed(req, execution_id, "internal_error", "unexpected error")
            return execution_id
        try:
            await self._act(req, execution_id, context, result)
        except Exception:
            log.exception("agent run could not act", extra={"execution_id": str(execution_id)})
            await self._finish_failed(
                req, execution_id, "internal_error", "unexpected error", result=result
            )
        return execution_id

    async def skip(self, req: RunRequest, reason: str, outcome: str) -> uuid.UUID | None:
        """Record that the run `req` asks for will not happen (e.g. the user's runs stayed
        at their cap for too long); nothing when its event was handled already."""
        async with self.db.transaction(req.user_id) as uow:
            row = await self._row(uow, req)
            if row is None:
                return None
            if row.status is ExecutionStatus.RUNNING:
                self._finish(uow, row, ExecutionStatus.SKIPPED, outcome, f"Skipped: {reason}")
                await uow.session.flush()
                self._publish(uow, row)
            return row.id

    async def _row(self, uow: UnitOfWork, req: RunRequest) -> AgentExecution | None:
        if not await repo.agents_by_ids(uow.session, req.user_id, [req.agent_id]):
            return None
        await repo.claim_execution(
            uow.session,
            {
                "id": uuid.uuid4(),
                "user_id": req.user_id,
                "agent_id": req.agent_id,
                "trigger_id": req.trigger_id,
                "trigger_type": req.trigger_type,
                "event_key": req.event_key,
                "status": ExecutionStatus.RUNNING,
                "started_at": self.clock(),
                "context": {},
                "decisions": [],
                "order_ids": [],
            },
        )
        return await repo.execution_by_event(uow.session, req.user_id, req.agent_id, req.event_key)

    async def _claim(
        self, req: RunRequest
    ) -> tuple[uuid.UUID, Agent, DecisionContext | None] | None:
        async with self.db.transaction(req.user_id) as uow:
            row = await self._row(uow, req)
            if row is None:
                return None
            [agent] = await repo.agents_by_ids(uow.session, req.user_id, [req.agent_id])
            if row.status is not ExecutionStatus.RUNNING:
                return row.id, agent, None
            reason = await self._reason_not_to_run(uow, req, agent)
            if reason is not None:
                outcome, why = reason
                self._finish(uow, row, ExecutionStatus.SKIPPED, outcome, f"Skipped: {why}")
                await uow.session.flush()
                self._publish(uow, row)
                return row.id, agent, None
            problem = await broker_problem(uow, agent)
            if problem is not None:
                # Failed, not skipped: the agent is meant to run, and the user must act.
                await self._fail(uow, row, agent, BROKER_UNAVAILABLE, problem, "placed nothing")
                return row.id, agent, None
            context = await self.context(uow, agent, req)
            row.context = to_json(context)
            await uow.session.flush()
            self._publish(uow, row)
            return row.id, agent, context

    async def _reason_not_to_run(
        self, uow: UnitOfWork, req: RunRequest, agent: Agent
    ) -> tuple[str, str] | None:
        if agent.deleted_at is not None:
            return "agent_deleted", "the agent was deleted"
        if agent.status is AgentStatus.PAUSED:
            return "paused", "the agent is paused"
        if req.trigger_id is None:
            return None
        trigger = await repo.trigger(uow.session, req.user_id, req.trigger_id, lock=True)
        if trigger is None:
            return "trigger_removed", "its trigger was removed"
        if not trigger.enabled:
            return "trigger_disabled", "its trigger is disabled"
        now = self.clock()
        if trigger.last_fired_at is None or trigger.last_fired_at < now:
            trigger.last_fired_at = now
        return None

    async def _decide(self, agent: Agent, context: DecisionContext) -> ModelResult:
        model = self.models.model(agent.llm_provider)
        if model is None:
            raise ModelError(
                f"{PROVIDER_NAMES[agent.llm_provider]} is not configured on this server"
            )
        settings = LlmSettings(agent.llm_provider, agent.llm_model, agent.llm_temperature)
        try:
            async with asyncio.timeout(self.model_deadline):
                result = await model.decide(agent.prompt, context, settings)
        except TimeoutError:
            raise ModelUnavailable(
                f"no decision within {self.model_deadline:g}s, retries included"
            ) from None
        return dataclasses.replace(result, decision=validated(result.decision, context))

    async def _act(
        self,
        req: RunRequest,
        execution_id: uuid.UUID,
        context: DecisionContext,
        result: ModelResult,
    ) -> None:
        async with self.db.transaction(req.user_id) as uow:
            row = await repo.execution(uow.session, req.user_id, execution_id, lock=True)
            if row is None or row.status is not ExecutionStatus.RUNNING:
                return  # another worker finished it meanwhile
            agent = await repo.agent_for_run(uow.session, req.user_id, req.agent_id)
            assert agent is not None, "agents are never deleted from the table"
            self._record_model(row, result)
            if agent.deleted_at is not None or agent.status is AgentStatus.PAUSED:
                # Paused (pause all, liquidate) while the model was thinking: do nothing.
                why = "the agent was paused before its orders were placed"
                self._finish(uow, row, ExecutionStatus.SKIPPED, "paused", f"Skipped: {why}")
                await uow.session.flush()
                self._publish(uow, row)
                return
            # Locked: the connection cannot be disconnected (nor another take its place)
            # until these orders are placed and committed.
            problem = await broker_problem(uow, agent, lock=True)
            if problem is not None:
                await self._fail(uow, row, agent, BROKER_UNAVAILABLE, problem, "placed nothing")
                return
            checks: list[dict[str, Any]] = []
            placed: list[Order] = []
            refused: list[str] = []
            for index, action in enumerate(result.decision.actions):
                if action.action is DecisionAction.HOLD:
                    continue
                entry, order = await self._place(uow, agent, row, index, action, context)
                checks.append(entry)
                if order is not None:
                    placed.append(order)
                    await self._notify_order(uow, agent, row, order, entry, context)
                else:
                    refused.append(f"{_describe(action)} ({entry['rule']}: {entry['message']})")
            row.risk_check = checks
            row.order_ids = [o.id for o in placed]
            if placed:
                outcome = "ordered"
                summary = "Placed: " + "; ".join(_describe_order(o) for o in placed)
                if refused:
                    summary += ". Refused: " + "; ".join(refused)
            elif refused:
                outcome = "risk_rejected"
                summary = "Refused: " + "; ".join(refused)
            else:
                outcome = "held"
                summary = "Held: " + result.decision.reasoning
            if refused:
                await self._notify(
                    uow,
                    agent,
                    row,
                    "agent.order_refused",
                    "order refused",
                    f"Agent {agent.name} wanted to {'; '.join(refused)}.",
                )
            self._finish(uow, row, ExecutionStatus.SUCCEEDED, outcome, summary)
            await uow.session.flush()
            self._publish(uow, row)

    async def _place(
        self,
        uow: UnitOfWork,
        agent: Agent,
        row: AgentExecution,
        index: int,
        action: Action,
        context: DecisionContext,
    ) -> tuple[dict[str, Any], Order | None]:
        assert action.symbol is not None, "validated: BUY and SELL name a symbol"
        request = OrderRequest(
            symbol=action.symbol,
            side=OrderSide.BUY if action.action is DecisionAction.BUY else OrderSide.SELL,
            type=action.order_type,
            quantity=action.quantity,
            notional=action.notional,
            limit_price=action.limit_price,
            client_order_id=f"ax-{row.id.hex}-{index}",
            agent_id=agent.id,
        )
        entry: dict[str, Any] = {
            "index": index,
            "action": action.action.value,
            "symbol": action.symbol,
            "requested": {
                "quantity": _text(action.quantity),
                "notional": _text(action.notional),
                "orderType": action.order_type.value,
                "limitPrice": _text(action.limit_price),
            },
            "referencePrice": _text(_price(context, action.symbol)),
        }
        try:
            placement = await self.trading.place(
                uow,
                request,
                queue_when_closed=False,
                execution_id=row.id,
                agent_limits=agent_limits(agent),
                broker=agent.broker,
            )
        except trading.RiskRejected as exc:
            return {**entry, "placed": False, "rule": exc.rule, "message": exc.message,
                    "checks": exc.checks}, None  # fmt: skip
        except trading.MarketClosed as exc:
            return {**entry, "placed": False, "rule": risk.Rule.MARKET_HOURS.value,
                    "message": exc.message}, None  # fmt: skip
        except trading.InsufficientBuyingPower as exc:
            return {**entry, "placed": False, "rule": risk.Rule.BUYING_POWER.value,
                    "message": exc.message}, None  # fmt: skip
        except trading.TradingError as exc:
            # OrderInvalid (a size the broker cannot take, ...) or a clientOrderId clash.
            return {**entry, "placed": False, "rule": "invalid_order", "message": exc.message}, None
        order = placement.order
        entry |= {
            "placed": True,
            "rule": None,
            "orderId": str(order.id),
            "checks": [
                {"rule": c.rule.value, "passed": c.passed, "detail": c.detail}
                for c in placement.checks
            ],
        }
        if placement.reduced_from is not None:
            reduced = placement.reduced_from
            entry["reducedFrom"] = {
                "quantity": _text(reduced.quantity),
                "notional": _text(reduced.notional),
                "rule": risk.Rule.AGENT_ALLOCATION.value,
            }
        return entry, order

    async def _notify_order(
        self,
        uow: UnitOfWork,
        agent: Agent,
        row: AgentExecution,
        order: Order,
        entry: dict[str, Any],
        context: DecisionContext,
    ) -> None:
        price = _price(context, order.symbol)
        at = f" @ ${price:,.2f}" if price is not None and order.type is OrderType.MARKET else ""
        body = f"Agent {agent.name} placed an order to {_describe_order(order)}{at}."
        if "reducedFrom" in entry:
            body += " It was reduced to fit the agent's allocation."
        await self._notify(
            uow, agent, row, "agent.order", f"{order.side.value} {order.symbol}", body
        )

    async def _finish_failed(
        self,
        req: RunRequest,
        execution_id: uuid.UUID,
        outcome: str,
        error: str,
        *,
        result: ModelResult | None = None,
    ) -> None:
        async with self.db.transaction(req.user_id) as uow:
            row = await repo.execution(uow.session, req.user_id, execution_id, lock=True)
            if row is None or row.status is not ExecutionStatus.RUNNING:
                return
            [agent] = await repo.agents_by_ids(uow.session, req.user_id, [req.agent_id])
            if result is not None:
                self._record_model(row, result)
            await self._fail(uow, row, agent, outcome, error, "made no decision")

    async def _fail(
        self,
        uow: UnitOfWork,
        row: AgentExecution,
        agent: Agent,
        outcome: str,
        error: str,
        what: str,
    ) -> None:
        row.error = error
        self._finish(uow, row, ExecutionStatus.FAILED, outcome, f"Failed ({outcome}): {error}")
        await self._notify(
            uow, agent, row, "agent.failed", "run failed", f"Agent {agent.name} {what}: {error}"
        )
        await uow.session.flush()
        self._publish(uow, row)

    async def _notify(
        self,
        uow: UnitOfWork,
        agent: Agent,
        row: AgentExecution,
        kind: str,
        headline: str,
        body: str,
    ) -> None:
        await notifications.notify(
            uow,
            self.publisher,
            kind=kind,
            title=f"Agent {agent.name}: {headline}",
            body=body,
            at=self.clock(),
            agent_id=agent.id,
            execution_id=row.id,
        )

    def _record_model(self, row: AgentExecution, result: ModelResult) -> None:
        row.prompt = result.prompt
        row.model = result.model
        row.input_tokens = result.input_tokens
        row.output_tokens = result.output_tokens
        row.cost_usd = result.cost_usd
        row.latency_ms = result.latency_ms
        row.reasoning = result.decision.reasoning
        row.decisions = [action_json(a) for a in result.decision.actions]

    def _finish(
        self,
        uow: UnitOfWork,
        row: AgentExecution,
        status: ExecutionStatus,
        outcome: str,
        summary: str,
    ) -> None:
        row.status = status
        row.outcome = outcome
        row.summary = summary if len(summary) <= _SUMMARY_LENGTH else summary[:299] + "…"
        row.finished_at = self.clock()

    def _publish(self, uow: UnitOfWork, row: AgentExecution) -> None:
        event = execution_event(row)
        channel = agents_channel(row.user_id)
        uow.after_commit(lambda: self.publisher.publish(channel, event))

    # --- the context

    async def context(self, uow: UnitOfWork, agent: Agent, req: RunRequest) -> DecisionContext:
        """What the agent decides on: its allocation and positions, the portfolio, quotes and
        daily indicators of the symbols it watches, their recent news, its last decisions
        and what triggered the run."""
        assert uow.user_id is not None
        book = (await agent_books(uow, self.trading, [agent]))[agent.id]
        triggers = await repo.triggers_of(uow.session, uow.user_id, [agent.id])
        symbols = watched(agent, triggers)
        quotes = await self.market.quotes(symbols)
        snapshots: dict[str, SymbolSnapshot] = {}
        for symbol in symbols:
            quote = quotes.get(symbol)
            if quote is None:
                continue  # no price, nothing to decide on: the model is told by its absence
            try:
                indicators = await self.market.indicators(symbol, Timeframe.DAY)
            except MarketDataError:
                continue
            quantity, cost = book.positions.get(symbol, (Decimal(0), Decimal(0)))
            snapshots[symbol] = SymbolSnapshot(
                symbol=symbol,
                price=quote.last,
                change_percent=_rounded(quote.change_percent),
                volume=quote.volume,
                indicators=indicators,
                position_quantity=quantity,
                average_cost=(cost / quantity).quantize(Decimal("0.0001")) if quantity else None,
            )
        return DecisionContext(
            now=self.clock(),
            symbols=snapshots,
            cash_available=max(min(book.allocation.available, book.buying_power), Decimal(0)),
            allocation=book.allocation.amount,
            equity=book.equity,
            news=await self._news(list(snapshots)),
            recent_decisions=await self._recent(uow, agent),
            trigger=self._trigger(req, triggers),
        )

    async def _news(self, symbols: list[str]) -> tuple[dict[str, Any], ...]:
        if not symbols:
            return ()
        try:
            items = await self.market.news(symbols, NEWS_ITEMS, None)
        except MarketDataError:
            return ()
        return tuple(
            {
                "headline": n.headline,
                "summary": n.summary,
                "source": n.source,
                "symbols": list(n.symbols),
                "publishedAt": n.published_at.isoformat(),
                "sentiment": None if n.sentiment is None else n.sentiment.value,
            }
            for n in items
        )

    async def _recent(self, uow: UnitOfWork, agent: Agent) -> tuple[dict[str, Any], ...]:
        assert uow.user_id is not None
        rows = await repo.executions(
            uow.session, uow.user_id, agent.id, before=None, limit=RECENT_DECISIONS,
            finished_only=True,
        )  # fmt: skip
        return tuple(
            {
                "at": r.started_at.isoformat(),
                "outcome": r.outcome,
                "actions": [
                    {k: a.get(k) for k in ("action", "symbol", "quantity", "notional")}
                    for a in r.decisions
                ],
            }
            for r in rows
        )

    def _trigger(self, req: RunRequest, triggers: Sequence[Any]) -> dict[str, Any]:
        described: dict[str, Any] = {"type": req.trigger_type.value}
        trigger = next((t for t in triggers if t.id == req.trigger_id), None)
        if trigger is not None:
            with contextlib.suppress(TriggerConfigError):
                described["description"] = config_from_json(trigger.type, trigger.config).describe()
        return described | req.detail


def watched(agent: Agent, triggers: Sequence[Any]) -> list[str]:
    """The prompt's symbols, then those of the agent's market triggers, at most ten."""
    symbols = list(agent.symbols)
    for trigger in triggers:
        symbol = trigger.config.get("symbol")
        if isinstance(symbol, str):
            symbols.append(symbol)
        for each in trigger.config.get("symbols") or ():
            symbols.append(each)
    return list(dict.fromkeys(symbols))[:MAX_WATCHED]


def _price(context: DecisionContext, symbol: str) -> Decimal | None:
    snap = context.symbols.get(symbol)
    return None if snap is None else snap.price


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _rounded(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("0.0001"))


def _plain(value: Decimal) -> str:
    return format(value.normalize(), ",f")


def _describe(action: Action) -> str:
    verb = action.action.value.lower()
    if action.notional is not None:
        return f"{verb} ${action.notional:,.2f} of {action.symbol}"
    assert action.quantity is not None
    return f"{verb} {_plain(action.quantity)} {action.symbol}"


def _describe_order(order: Order) -> str:
    verb = order.side.value.lower()
    size = (
        f"${order.notional:,.2f} of {order.symbol}"
        if order.notional is not None
        else f"{_plain(order.quantity or Decimal(0))} {order.symbol}"
    )
    if order.type is OrderType.LIMIT and order.limit_price is not None:
        return f"{verb} {size} at a limit of ${order.limit_price:,.2f}"
    return f"{verb} {size}"
