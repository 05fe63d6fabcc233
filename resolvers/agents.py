"""Thin agent resolvers: decode input, call AgentService with the actor, map the outcome."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

import strawberry

from db.engine import UnitOfWork
from domain import notifications as notes
from domain.agents import service as agents
from domain.agents.execution import agents_channel
from domain.agents.types import AgentStatus
from domain.auth import service as auth
from domain.auth.actor import Scope
from domain.triggers import spec
from kianax.broadcast import SubscriptionLost
from schema import agents as types
from schema.auth import TwoFactorRequired
from schema.context import Context, Info
from schema.errors import NotFound, RateLimited, UserError, ValidationError
from schema.errors import SubscriptionLost as Resubscribe
from schema.market import PageInfo
from schema.trading import make_cursor, parse_cursor

T = TypeVar("T")


def to_user_error(exc: agents.AgentError) -> UserError:
    if isinstance(exc, agents.AgentInvalid):
        return ValidationError(code=exc.code, message=exc.message, field=exc.field)
    if isinstance(exc, agents.RunsRateLimited):
        return RateLimited(code=exc.code, message=exc.message, retry_after_seconds=exc.retry_after)
    return NotFound(code=exc.code, message=exc.message)


async def _run(
    ctx: Context, scope: Scope, act: Callable[[UnitOfWork], Awaitable[T]]
) -> T | UserError:
    """One unit of work; an expected failure rolls it back, so bad input changes nothing.
    A missing or wrong two-factor code is asked for before anything changes, and commits:
    a failed code's audit record stays."""
    actor = ctx.require_actor(scope)
    try:
        async with ctx.db.transaction(actor.user_id) as uow:
            try:
                return await act(uow)
            except auth.TwoFactorRequired as exc:
                return TwoFactorRequired(code=exc.code, message=exc.message)
    except agents.AgentError as exc:
        return to_user_error(exc)


def _second_factor(ctx: Context, uow: UnitOfWork, code: str | None) -> agents.SecondFactor:
    actor = ctx.require_actor(Scope.AGENTS)
    return lambda: ctx.auth.require_fresh_code(uow, actor, code)


def _id(raw: strawberry.ID | str, what: str = "agent") -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise agents.AgentNotFound(f"no such {what}") from None


def _saved(saved: agents.AgentService, result: agents.Saved) -> types.AgentSaved:
    return types.AgentSaved(
        agent=types.Agent.of(result.agent),
        webhook_secrets=[
            types.WebhookSecret(
                trigger_id=strawberry.ID(str(trigger.id)),
                url=saved.webhook_url(trigger) or "",
                secret=secret,
            )
            for trigger, secret in result.webhook_secrets
        ],
    )


# ---------------------------------------------------------------- decoding input


def _llm(input: types.LlmSettingsInput | None) -> agents.LlmChoice:
    if input is None:
        return agents.LlmChoice()
    return agents.LlmChoice(input.provider, input.model, input.temperature)


def _risk(input: types.AgentRiskLimitsInput) -> agents.RiskChoice:
    return agents.RiskChoice(
        allocation_percent=input.allocation_percent,
        max_position_value=input.max_position_value,
        max_daily_trades=input.max_daily_trades,
    )


def _symbol(raw: str) -> str:
    return raw.strip().upper()


def _trigger(input: types.TriggerInput, path: str) -> agents.TriggerDraft:
    """The one config a @oneOf TriggerInput holds (GraphQL guarantees exactly one)."""
    if input.time:
        time = input.time
        config: spec.TriggerConfig = spec.TimeConfig(
            time.cron, time.timezone, time.market_days_only
        )
        return agents.TriggerDraft(config, time.cooldown_seconds)
    if input.price:
        price = input.price
        config = spec.PriceConfig(
            _symbol(price.symbol), price.change_percent, price.above, price.below,
            price.window_minutes,
        )  # fmt: skip
        return agents.TriggerDraft(config, price.cooldown_seconds)
    if input.volume:
        volume = input.volume
        config = spec.VolumeConfig(_symbol(volume.symbol), volume.multiple_of_average)
        return agents.TriggerDraft(config, volume.cooldown_seconds)
    if input.indicator:
        ind = input.indicator
        config = spec.IndicatorConfig(
            _symbol(ind.symbol), ind.indicator.strip().upper(), ind.condition
        )
        return agents.TriggerDraft(config, ind.cooldown_seconds)
    if input.news:
        news = input.news
        config = spec.NewsConfig(
            keywords=tuple(news.keywords or ()),
            symbols=tuple(_symbol(s) for s in news.symbols or ()),
            sentiment=news.sentiment,
            min_relevance=news.min_relevance,
        )
        return agents.TriggerDraft(config, news.cooldown_seconds)
    if input.webhook:
        return agents.TriggerDraft(spec.WebhookConfig())
    raise agents.AgentInvalid(f"{path}webhook", "webhook must be true to add a webhook trigger")


# ---------------------------------------------------------------- mutations


async def create_agent(info: Info, input: types.CreateAgentInput) -> types.AgentResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.AgentSaved:
        draft = agents.AgentDraft(
            name=input.name,
            description=input.description,
            prompt=input.prompt,
            llm=_llm(input.llm),
            risk=_risk(input.risk_limits),
            triggers=tuple(
                _trigger(t, f"triggers[{i}].") for i, t in enumerate(input.triggers or ())
            ),
            broker=input.broker,
        )
        saved = await ctx.agents.create(
            uow, draft, second_factor=_second_factor(ctx, uow, input.totp_code)
        )
        return _saved(ctx.agents, saved)

    return await _run(ctx, Scope.AGENTS, act)  # type: ignore[return-value]


async def update_agent(
    info: Info, id: strawberry.ID, input: types.UpdateAgentInput
) -> types.AgentResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.AgentSaved:
        changes = agents.AgentChanges(
            name=input.name,
            description=input.description,
            prompt=input.prompt,
            llm=None if input.llm is None else _llm(input.llm),
            risk=None if input.risk_limits is None else _risk(input.risk_limits),
            broker=input.broker,
        )
        saved = await ctx.agents.update(
            uow, _id(id), changes, second_factor=_second_factor(ctx, uow, input.totp_code)
        )
        return _saved(ctx.agents, saved)

    return await _run(ctx, Scope.AGENTS, act)  # type: ignore[return-value]


async def _set_status(
    info: Info, id: strawberry.ID, status: AgentStatus, totp_code: str | None = None
) -> types.AgentResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.AgentSaved:
        agent = await ctx.agents.set_status(
            uow, _id(id), status, second_factor=_second_factor(ctx, uow, totp_code)
        )
        return types.AgentSaved(agent=types.Agent.of(agent), webhook_secrets=[])

    return await _run(ctx, Scope.AGENTS, act)  # type: ignore[return-value]


async def activate_agent(
    info: Info,
    id: strawberry.ID,
    totp_code: Annotated[str | None, strawberry.argument(description=types.TOTP_CODE)] = None,
) -> types.AgentResult:
    return await _set_status(info, id, AgentStatus.ACTIVE, totp_code)


async def pause_agent(info: Info, id: strawberry.ID) -> types.AgentResult:
    return await _set_status(info, id, AgentStatus.PAUSED)


async def delete_agent(info: Info, id: strawberry.ID) -> bool:
    ctx = info.context

    async def act(uow: UnitOfWork) -> bool:
        return await ctx.agents.delete(uow, _id(id))

    result = await _run(ctx, Scope.AGENTS, act)
    return result is True


async def run_agent(info: Info, id: strawberry.ID) -> types.RunAgentResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.AgentRunQueued:
        row = await ctx.agents.run_now(uow, _id(id))
        return types.AgentRunQueued(execution=types.AgentExecution.of(row))

    return await _run(ctx, Scope.AGENTS, act)  # type: ignore[return-value]


async def add_trigger(
    info: Info, agent_id: strawberry.ID, input: types.TriggerInput
) -> types.AgentResult:
    ctx = info.context

    async def act(uow: UnitOfWork) -> types.AgentSaved:
        saved = await ctx.agents.add_trigger(uow, _id(agent_id), _trigger(input, ""))
        return _saved(ctx.agents, saved)

    return await _run(ctx, Scope.AGENTS, act)  # type: ignore[return-value]


async def remove_trigger(info: Info, id: strawberry.ID) -> bool:
    ctx = info.context

    async def act(uow: UnitOfWork) -> bool:
        return await ctx.agents.remove_trigger(uow, _id(id, "trigger"))

    result = await _run(ctx, Scope.AGENTS, act)
    return result is True


async def mark_notifications_read(info: Info, ids: list[strawberry.ID] | None = None) -> int:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    parsed: list[uuid.UUID] | None = None
    if ids is not None:
        parsed = []
        for raw in ids:
            try:
                parsed.append(uuid.UUID(str(raw)))
            except ValueError:
                continue  # not an id of ours: nothing to mark
    async with ctx.db.transaction(actor.user_id) as uow:
        return await notes.mark_read(uow, parsed, ctx.agents.clock())


# ---------------------------------------------------------------- queries


async def agents_query(
    info: Info,
    status: types.AgentStatus | None = None,  # type: ignore[valid-type]
    first: int = 20,
    after: str | None = None,
) -> types.AgentConnection:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    size = types.page_size(first)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await ctx.agents.list_agents(
            uow, status=status, before=parse_cursor(after), limit=size + 1
        )
    for row in rows:
        ctx.loaders.agent_by_id.prime(row.id, row)
    edges = [
        types.AgentEdge(cursor=make_cursor(r.created_at, r.id), node=types.Agent.of(r))
        for r in rows[:size]
    ]
    return types.AgentConnection(
        edges=edges,
        page_info=PageInfo.of(edges, len(rows) > size),
    )


async def agent(info: Info, id: strawberry.ID) -> types.Agent | None:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    try:
        agent_id = uuid.UUID(str(id))
    except ValueError:
        return None
    async with ctx.db.transaction(actor.user_id) as uow:
        row = await ctx.agents.get(uow, agent_id)
    return None if row is None else types.Agent.of(row)


async def notifications(
    info: Info, unread_only: bool = False, first: int = 20, after: str | None = None
) -> types.NotificationConnection:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    size = types.page_size(first)
    async with ctx.db.transaction(actor.user_id) as uow:
        rows = await notes.list_notifications(
            uow, unread_only=unread_only, before=parse_cursor(after), limit=size + 1
        )
    edges = [
        types.NotificationEdge(
            cursor=make_cursor(r.created_at, r.id), node=types.Notification.of(r)
        )
        for r in rows[:size]
    ]
    return types.NotificationConnection(
        edges=edges,
        page_info=PageInfo.of(edges, len(rows) > size),
    )


# ---------------------------------------------------------------- subscriptions


async def agent_executions(
    info: Info, agent_id: strawberry.ID | None = None
) -> AsyncIterator[types.AgentExecution]:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    wanted = None if agent_id is None else str(agent_id)
    # The channel comes from the actor; agentId only narrows what this user already sees.
    async with ctx.broadcast.subscribe(agents_channel(actor.user_id)) as sub:
        try:
            async for message in sub:
                if wanted is not None and message.data["agentId"] != wanted:
                    continue
                async with ctx.db.transaction(actor.user_id) as uow:
                    row = await ctx.agents.execution(uow, uuid.UUID(message.data["id"]))
                if row is not None:
                    yield types.AgentExecution.of(row)
        except SubscriptionLost as exc:
            raise Resubscribe(f"{exc}; resubscribe and refetch executions") from exc


async def notification_events(info: Info) -> AsyncIterator[types.Notification]:
    ctx = info.context
    actor = ctx.require_actor(Scope.READ)
    async with ctx.broadcast.subscribe(notes.notifications_channel(actor.user_id)) as sub:
        try:
            async for message in sub:
                yield types.Notification.from_snapshot(message.data)
        except SubscriptionLost as exc:
            raise Resubscribe(f"{exc}; resubscribe and refetch notifications") from exc
