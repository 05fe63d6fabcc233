"""The OpenAI decision model, driving the real `openai` SDK against the local fake."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from domain.agents.decision import (
    DecisionAction,
    LlmProvider,
    LlmSettings,
    ModelError,
    ModelInvalidOutput,
    ModelRefused,
    ModelUnavailable,
)
from domain.agents.llm import DECISION_SCHEMA, DECISION_SCHEMA_NAME, MAX_OUTPUT_TOKENS
from domain.agents.openai_model import OpenAIDecisionModel
from domain.agents.registry import ModelRegistry
from tests.domain.agents.test_llm import INJECTION, action, decision, make_context
from tests.fakes.openai_server import (
    API_KEY,
    FakeOpenAI,
    completion_reply,
    decision_reply,
    malformed_reply,
    rate_limited,
    refusal_reply,
    running_fake_openai,
    server_error,
    slow,
)

SETTINGS = LlmSettings(LlmProvider.OPENAI, "gpt-4o-mini", Decimal("0.2"))
STRATEGY = "Buy AAPL when RSI14 drops below 30; never risk more than half the cash."


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as server:
        yield server


def model(
    fake: FakeOpenAI, *, api_key: str = API_KEY, timeout: float = 5.0, max_retries: int = 1
) -> OpenAIDecisionModel:
    return OpenAIDecisionModel(
        api_key, base_url=fake.base_url, timeout=timeout, max_retries=max_retries
    )


async def test_a_valid_decision(fake: FakeOpenAI) -> None:
    fake.enqueue(
        decision_reply(
            decision(action(quantity="12.5"), action(action="HOLD", symbol="MSFT", quantity=None)),
            prompt_tokens=2000,
            completion_tokens=300,
        )
    )

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    buy, hold = result.decision.actions
    assert (buy.action, buy.symbol, buy.quantity) == (DecisionAction.BUY, "AAPL", Decimal("12.5"))
    assert buy.confidence == Decimal("0.7")
    assert (hold.action, hold.symbol) == (DecisionAction.HOLD, "MSFT")
    assert result.decision.confidence == Decimal("0.6")
    assert result.model == "gpt-4o-mini"
    assert (result.input_tokens, result.output_tokens) == (2000, 300)
    # 2000 * $0.15 + 300 * $0.60, per million tokens.
    assert result.cost_usd == Decimal("0.000480")
    assert result.latency_ms >= 0
    assert result.raw_output is not None and '"quantity": "12.5"' in result.raw_output
    assert len(fake.requests) == 1


async def test_what_is_sent(fake: FakeOpenAI) -> None:
    fake.enqueue(decision_reply(decision(action())))

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    (request,) = fake.requests
    body = request.body
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == MAX_OUTPUT_TOKENS
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": DECISION_SCHEMA_NAME, "strict": True, "schema": DECISION_SCHEMA},
    }
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert STRATEGY not in system["content"]
    assert STRATEGY in user["content"]
    assert result.prompt == f"{system['content']}\n\n{user['content']}"


async def test_numbers_in_the_answer_stay_exact(fake: FakeOpenAI) -> None:
    answer = json.dumps(decision(action(quantity=None, notional="NOTIONAL")))
    # More digits than a float holds: only decoding straight to Decimal keeps them all.
    fake.enqueue(completion_reply(answer.replace('"NOTIONAL"', "1234.56789012345678901")))

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    assert result.decision.actions[0].notional == Decimal("1234.56789012345678901")


async def test_malformed_json_is_invalid_output(fake: FakeOpenAI) -> None:
    fake.enqueue(malformed_reply())

    with pytest.raises(ModelInvalidOutput, match="the answer is not JSON"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)
    assert len(fake.requests) == 1


async def test_a_symbol_outside_the_context_is_invalid_output(fake: FakeOpenAI) -> None:
    fake.enqueue(decision_reply(decision(action(symbol="TSLA"))))

    with pytest.raises(ModelInvalidOutput, match="'TSLA' is not a watched symbol"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_truncated_answer_is_invalid_output(fake: FakeOpenAI) -> None:
    fake.enqueue(completion_reply('{"reasoning": "RSI', finish_reason="length"))

    with pytest.raises(ModelInvalidOutput, match="cut off"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_refusal(fake: FakeOpenAI) -> None:
    fake.enqueue(refusal_reply("I can't help with that."))

    with pytest.raises(ModelRefused, match="I can't help with that"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_content_filter_stop_is_a_refusal(fake: FakeOpenAI) -> None:
    fake.enqueue(completion_reply(None, finish_reason="content_filter"))

    with pytest.raises(ModelRefused, match="content filter"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_rate_limit_then_success_is_retried_by_the_sdk(fake: FakeOpenAI) -> None:
    fake.enqueue(rate_limited(retry_after="0"), decision_reply(decision(action())))

    result = await model(fake, max_retries=2).decide(STRATEGY, make_context(), SETTINGS)

    assert result.decision.actions[0].symbol == "AAPL"
    assert [r.retry_count for r in fake.requests] == [0, 1]
    assert fake.requests[0].body == fake.requests[1].body


async def test_server_error_then_success_honours_retry_after(fake: FakeOpenAI) -> None:
    fake.enqueue(server_error({"retry-after-ms": "1"}), decision_reply(decision(action())))

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    assert len(fake.requests) == 2
    # Without the header the SDK would back off for at least 375 ms.
    assert result.latency_ms < 350


async def test_rate_limited_on_every_attempt_is_unavailable(fake: FakeOpenAI) -> None:
    fake.enqueue(*[rate_limited(retry_after="0")] * 2)

    with pytest.raises(ModelUnavailable, match="OpenAI answered 429"):
        await model(fake, max_retries=1).decide(STRATEGY, make_context(), SETTINGS)
    assert len(fake.requests) == 2


async def test_timeout_is_unavailable_within_a_bounded_time(fake: FakeOpenAI) -> None:
    fake.enqueue(*[slow(decision_reply(decision(action())), 10)] * 2)

    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"did not answer within 0\.3s"):
        await model(fake, timeout=0.3, max_retries=1).decide(STRATEGY, make_context(), SETTINGS)
    elapsed = time.monotonic() - started

    assert len(fake.requests) == 2
    # Two 0.3 s attempts and one backoff of at most 0.5 s, far below the 10 s reply.
    assert 0.6 <= elapsed < 3


async def test_a_rejected_key_is_not_retried(fake: FakeOpenAI) -> None:
    with pytest.raises(ModelError, match=r"OpenAI rejected the request \(401\)") as raised:
        await model(fake, api_key="sk-wrong", max_retries=3).decide(
            STRATEGY, make_context(), SETTINGS
        )
    assert not isinstance(raised.value, ModelUnavailable)
    assert len(fake.requests) == 1


def test_an_empty_key_is_refused_rather_than_read_from_the_environment() -> None:
    with pytest.raises(ValueError, match="API key is required"):
        OpenAIDecisionModel("")


async def test_prompt_injection_stays_inside_the_data_blocks(fake: FakeOpenAI) -> None:
    fake.enqueue(decision_reply(decision(action())))
    news = ({"headline": f"Breaking: {INJECTION}", "source": "Wire"},)

    await model(fake).decide(f"Buy dips. {INJECTION}", make_context(news=news), SETTINGS)

    system, user = (m["content"] for m in fake.requests[0].body["messages"])
    assert INJECTION not in system
    assert user.count(INJECTION) == 2
    nonce = system.split("<strategy-")[1].split(">")[0]
    strategy_block = user.split(f"<strategy-{nonce}>")[1].split(f"</strategy-{nonce}>")[0]
    context_block = user.split(f"<context-{nonce}>")[1].split(f"</context-{nonce}>")[0]
    # Both occurrences are inside the blocks, none in the instructions around them.
    assert strategy_block.count(INJECTION) == 1
    assert context_block.count(INJECTION) == 1


async def test_one_client_serves_every_decision(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a client costs ~45 ms of CPU (its TLS context): the server's model keeps one
    per event loop instead of one per decision."""
    built: list[openai.AsyncOpenAI] = []

    class Counted(openai.AsyncOpenAI):
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            built.append(self)

    monkeypatch.setattr(openai, "AsyncOpenAI", Counted)
    registry = ModelRegistry(openai_api_key=API_KEY, openai_base_url=fake.base_url)
    fake.enqueue(decision_reply(decision(action())), decision_reply(decision(action())))
    for _ in range(2):
        found = registry.model(LlmProvider.OPENAI)
        assert found is not None
        result = await found.decide(STRATEGY, make_context(), SETTINGS)
        assert result.decision.actions[0].symbol == "AAPL"
    assert len(built) == 1
    assert len(fake.requests) == 2
