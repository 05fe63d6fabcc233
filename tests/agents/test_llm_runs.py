"""Agents on OpenAI and Anthropic: the real SDKs against the local fakes, through runAgent,
the worker and the trading engine. Every answer ends in a recorded execution with the right
outcome, and only a valid decision that passes the risk checks places an order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from arq.worker import Worker
from starlette.applications import Starlette

from domain.agents.anthropic_model import AnthropicDecisionModel
from domain.agents.decision import LlmProvider
from domain.agents.openai_model import OpenAIDecisionModel
from tests.agents.conftest import create, orders_of, run_to_end
from tests.conftest import SignedIn
from tests.domain.agents.test_llm import action, decision
from tests.fakes import anthropic_server, openai_server
from tests.fakes.openai_server import Reply, ScriptedServer, slow

PROMPT = "Trade MSFT: buy it when it looks oversold, sell it on strength. Ignore the news."
NOTIFICATIONS = "{ notifications(first: 20) { edges { node { kind title body } } } }"


@dataclass(frozen=True)
class Provider:
    """How to script one provider's fake: a decision, malformed output, a refusal, a 429."""

    name: str
    model: str
    start: Callable[[], Any]
    build: Callable[[Any, float], Any]  # (the running fake, timeout) -> a decision model
    answer: Callable[[dict[str, Any]], Reply]
    malformed: Callable[[], Reply]
    refusal: Callable[[], Reply]
    rate_limited: Callable[[], Reply]
    invalid_error: str
    tokens: tuple[int, int]  # what the fake reports by default, (input, output)


OPENAI = Provider(
    name="OPENAI",
    model="gpt-4o-mini",
    start=openai_server.running_fake_openai,
    build=lambda fake, timeout: OpenAIDecisionModel(
        openai_server.API_KEY,
        base_url=fake.base_url,
        timeout=timeout,
        max_retries=1,
    ),
    answer=openai_server.decision_reply,
    malformed=openai_server.malformed_reply,
    refusal=lambda: openai_server.refusal_reply("I can't help with trading."),
    rate_limited=lambda: openai_server.rate_limited(retry_after="0"),
    invalid_error="the answer is not JSON",
    tokens=(1200, 150),
)
ANTHROPIC = Provider(
    name="ANTHROPIC",
    model="claude-haiku-4-5",
    start=anthropic_server.running_fake_anthropic,
    build=lambda fake, timeout: AnthropicDecisionModel(
        anthropic_server.API_KEY,
        base_url=fake.base_url,
        timeout=timeout,
        max_retries=1,
    ),
    answer=anthropic_server.tool_use_reply,
    # The tool's input is JSON by construction; malformed means not the decision's shape.
    malformed=lambda: anthropic_server.tool_use_reply({"reasoning": "RSI", "actions": "all in"}),
    refusal=lambda: anthropic_server.refusal_reply("This request may enable harm."),
    rate_limited=lambda: anthropic_server.rate_limited(retry_after="0"),
    invalid_error="actions must be a list",
    tokens=(1500, 200),
)


@dataclass
class Llm:
    provider: Provider
    fake: ScriptedServer


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=lambda p: p.name.lower())
def llm(
    request: pytest.FixtureRequest, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Llm]:
    """The provider's fake, and this server's registry pointed at it (short timeouts)."""
    provider: Provider = request.param
    factories = app.state.services.agents.executor.models.factories
    with provider.start() as fake:
        monkeypatch.setitem(
            factories, LlmProvider(provider.name), lambda: provider.build(fake, 0.5)
        )
        yield Llm(provider, fake)


def msft(**fields: Any) -> dict[str, Any]:
    return action(symbol="MSFT", **fields)


async def llm_agent(user: SignedIn, llm: Llm, **risk: str) -> str:
    saved = await create(
        user,
        name="Momentum",
        prompt=PROMPT,
        llm={"provider": llm.provider.name},
        riskLimits={"allocationPercent": "20", **risk},
    )
    assert saved["__typename"] == "AgentSaved", saved
    assert saved["agent"]["symbols"] == ["MSFT"]
    assert saved["agent"]["llm"]["model"] == llm.provider.model
    agent_id: str = saved["agent"]["id"]
    return agent_id


async def notes_of(user: SignedIn) -> list[dict[str, Any]]:
    body = await user.gql(NOTIFICATIONS)
    return [e["node"] for e in body["data"]["notifications"]["edges"]]


async def test_a_valid_decision_places_the_order(signup: Any, llm: Llm, worker: Worker) -> None:
    user: SignedIn = await signup()
    agent_id = await llm_agent(user, llm)
    llm.fake.enqueue(llm.provider.answer(decision(msft(quantity="3"))))

    execution = await run_to_end(user, agent_id)

    assert execution["status"] == "SUCCEEDED", execution
    assert execution["outcome"] == "ordered"
    assert execution["model"] == llm.provider.model
    assert (execution["inputTokens"], execution["outputTokens"]) == llm.provider.tokens
    assert Decimal(execution["costUsd"]) > 0
    assert execution["latencyMs"] >= 0
    assert PROMPT in execution["prompt"]
    assert set(execution["context"]["symbols"]) == {"MSFT"}
    [made] = execution["decisions"]
    assert (made["action"], made["symbol"], made["quantity"]) == ("BUY", "MSFT", "3")
    [order] = execution["orders"]
    assert (order["symbol"], order["side"], order["quantity"]) == ("MSFT", "BUY", "3.000000000")
    assert order["agentId"] == agent_id
    assert order["clientOrderId"] == f"ax-{execution['id'].replace('-', '')}-0"
    assert [o["id"] for o in await orders_of(user)] == [order["id"]]
    assert len(llm.fake.requests) == 1
    # The fill may be noted too, by the paper matcher, whenever it runs.
    [note] = [n for n in await notes_of(user) if n["kind"] == "agent.order"]
    assert note["title"] == "Agent Momentum: BUY MSFT"


async def test_rate_limited_then_answered_is_retried_into_one_run(
    signup: Any, llm: Llm, worker: Worker
) -> None:
    user: SignedIn = await signup()
    agent_id = await llm_agent(user, llm)
    llm.fake.enqueue(llm.provider.rate_limited(), llm.provider.answer(decision(msft())))

    execution = await run_to_end(user, agent_id)

    assert (execution["status"], execution["outcome"]) == ("SUCCEEDED", "ordered"), execution
    assert len(llm.fake.requests) == 2
    assert len(await orders_of(user)) == 1


@pytest.mark.parametrize(
    ("script", "outcome", "error"),
    [
        ("malformed", "invalid_output", None),
        ("refusal", "refused", None),
        ("timeout", "unavailable", "did not answer within 0.5s"),
        ("hold", "held", None),
        ("foreign_symbol", "invalid_output", "'TSLA' is not a watched symbol"),
    ],
)
async def test_no_usable_decision_places_no_order(
    signup: Any, llm: Llm, worker: Worker, script: str, outcome: str, error: str | None
) -> None:
    user: SignedIn = await signup()
    agent_id = await llm_agent(user, llm)
    provider = llm.provider
    replies = {
        "malformed": [provider.malformed()],
        "refusal": [provider.refusal()],
        # Longer than the 0.5 s timeout, on the first attempt and on the retry.
        "timeout": [slow(provider.answer(decision(msft())), 5)] * 2,
        "hold": [provider.answer(decision(msft(action="HOLD", quantity=None)))],
        # An injected instruction to trade something else is refused, not half-obeyed.
        "foreign_symbol": [provider.answer(decision(msft(), action(symbol="TSLA")))],
    }[script]
    llm.fake.enqueue(*replies)

    execution = await run_to_end(user, agent_id)

    assert execution["outcome"] == outcome, execution
    assert execution["orders"] == []
    assert await orders_of(user) == []
    if outcome == "held":
        assert execution["status"] == "SUCCEEDED"
        assert await notes_of(user) == []
        return
    assert execution["status"] == "FAILED"
    expected = error or (provider.invalid_error if outcome == "invalid_output" else "")
    assert expected in execution["error"]
    assert execution["decisions"] == []
    [note] = await notes_of(user)
    assert note["kind"] == "agent.failed" and note["title"] == "Agent Momentum: run failed"


async def test_a_buy_beyond_the_allocation_is_reduced_to_fit(
    signup: Any, llm: Llm, worker: Worker
) -> None:
    user: SignedIn = await signup()
    agent_id = await llm_agent(user, llm)  # 20% of $100,000
    llm.fake.enqueue(llm.provider.answer(decision(msft(quantity="1000"))))

    execution = await run_to_end(user, agent_id)

    assert execution["outcome"] == "ordered", execution
    [check] = execution["riskCheck"]
    assert check["placed"] is True
    assert check["reducedFrom"] == {
        "quantity": "1000",
        "notional": None,
        "rule": "agent_allocation",
    }
    [order] = execution["orders"]
    price = Decimal(execution["context"]["symbols"]["MSFT"]["price"])
    quantity = Decimal(order["quantity"])
    assert 0 < quantity < 1000
    assert quantity * price <= Decimal("20000") < (quantity + 1) * price * Decimal("1.01")


async def test_a_buy_beyond_the_max_position_is_refused_with_the_rule(
    signup: Any, llm: Llm, worker: Worker
) -> None:
    user: SignedIn = await signup()
    agent_id = await llm_agent(user, llm, maxPositionValue="1000")
    llm.fake.enqueue(llm.provider.answer(decision(msft(quantity="100"))))

    execution = await run_to_end(user, agent_id)

    assert (execution["status"], execution["outcome"]) == ("SUCCEEDED", "risk_rejected")
    [check] = execution["riskCheck"]
    assert check["placed"] is False
    assert check["rule"] == "agent_max_position_value"
    assert "its limit is $1,000.00" in check["message"]
    assert execution["orders"] == [] and await orders_of(user) == []
    assert "agent_max_position_value" in execution["summary"]
    [note] = await notes_of(user)
    assert note["kind"] == "agent.order_refused"
