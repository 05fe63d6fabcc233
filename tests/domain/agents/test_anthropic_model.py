"""The Anthropic decision model, driving the real `anthropic` SDK against the local fake."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from domain.agents.anthropic_model import AnthropicDecisionModel
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
from tests.domain.agents.test_llm import INJECTION, action, decision, make_context
from tests.fakes.anthropic_server import (
    API_KEY,
    FakeAnthropic,
    overloaded,
    rate_limited,
    refusal_reply,
    running_fake_anthropic,
    server_error,
    text_reply,
    tool_use_reply,
)
from tests.fakes.openai_server import slow

SETTINGS = LlmSettings(LlmProvider.ANTHROPIC, "claude-haiku-4-5", Decimal("0.2"))
STRATEGY = "Buy AAPL when RSI14 drops below 30; never risk more than half the cash."


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with running_fake_anthropic() as server:
        yield server


def model(
    fake: FakeAnthropic, *, api_key: str = API_KEY, timeout: float = 5.0, max_retries: int = 1
) -> AnthropicDecisionModel:
    return AnthropicDecisionModel(
        api_key, base_url=fake.base_url, timeout=timeout, max_retries=max_retries
    )


async def test_a_valid_decision(fake: FakeAnthropic) -> None:
    fake.enqueue(
        tool_use_reply(
            decision(action(quantity="12.5"), action(action="HOLD", symbol="MSFT", quantity=None)),
            input_tokens=2000,
            output_tokens=300,
        )
    )

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    buy, hold = result.decision.actions
    assert (buy.action, buy.symbol, buy.quantity) == (DecisionAction.BUY, "AAPL", Decimal("12.5"))
    assert buy.confidence == Decimal("0.7")
    assert (hold.action, hold.symbol) == (DecisionAction.HOLD, "MSFT")
    assert result.model == "claude-haiku-4-5"
    assert (result.input_tokens, result.output_tokens) == (2000, 300)
    # 2000 * $1 + 300 * $5, per million tokens.
    assert result.cost_usd == Decimal("0.003500")
    assert result.latency_ms >= 0
    assert result.raw_output is not None and '"quantity": "12.5"' in result.raw_output
    assert len(fake.requests) == 1


async def test_what_is_sent(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply(decision(action())))

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    (request,) = fake.requests
    body = request.body
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert "anthropic-version" in request.headers
    assert body["model"] == "claude-haiku-4-5"
    assert body["max_tokens"] == MAX_OUTPUT_TOKENS
    (tool,) = body["tools"]
    assert tool["name"] == DECISION_SCHEMA_NAME
    assert tool["input_schema"] == DECISION_SCHEMA
    assert body["tool_choice"] == {
        "type": "tool",
        "name": DECISION_SCHEMA_NAME,
        "disable_parallel_tool_use": True,
    }
    # The SDK has no sampling parameters; nothing unknown may reach the API.
    assert "temperature" not in body
    (user,) = body["messages"]
    assert user["role"] == "user"
    assert STRATEGY not in body["system"]
    assert STRATEGY in user["content"]
    assert result.prompt == f"{body['system']}\n\n{user['content']}"


async def test_numbers_as_json_numbers_become_exact_decimals(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply(decision(action(quantity=None, notional=0.1))))

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    assert result.decision.actions[0].notional == Decimal("0.1")


async def test_bad_tool_input_is_invalid_output(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply({"reasoning": "RSI is low", "actions": "buy everything"}))

    with pytest.raises(ModelInvalidOutput, match="actions must be a list"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)
    assert len(fake.requests) == 1


async def test_tool_input_that_is_not_an_object_is_invalid_output(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply('{"reasoning": "RSI'))

    with pytest.raises(ModelInvalidOutput, match="decision must be an object, got str"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_symbol_outside_the_context_is_invalid_output(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply(decision(action(symbol="TSLA"))))

    with pytest.raises(ModelInvalidOutput, match="'TSLA' is not a watched symbol"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_calling_another_tool_is_invalid_output(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply(decision(action()), name="place_order"))

    with pytest.raises(ModelInvalidOutput, match="without calling record_decision"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_truncated_answer_is_invalid_output(fake: FakeAnthropic) -> None:
    fake.enqueue(text_reply("I will record", stop_reason="max_tokens"))

    with pytest.raises(ModelInvalidOutput, match="cut off"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_refusal_stop(fake: FakeAnthropic) -> None:
    fake.enqueue(refusal_reply("This request may enable harm."))

    with pytest.raises(ModelRefused, match="This request may enable harm"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_a_refusal_stop_without_explanation(fake: FakeAnthropic) -> None:
    fake.enqueue(refusal_reply(None))

    with pytest.raises(ModelRefused, match="Claude declined to answer"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_an_answer_in_words_is_a_refusal(fake: FakeAnthropic) -> None:
    fake.enqueue(text_reply("I'm not able to make trading decisions for you."))

    with pytest.raises(ModelRefused, match="not able to make trading decisions"):
        await model(fake).decide(STRATEGY, make_context(), SETTINGS)


async def test_rate_limit_then_success_is_retried_by_the_sdk(fake: FakeAnthropic) -> None:
    fake.enqueue(rate_limited(retry_after="0"), tool_use_reply(decision(action())))

    result = await model(fake, max_retries=2).decide(STRATEGY, make_context(), SETTINGS)

    assert result.decision.actions[0].symbol == "AAPL"
    assert [r.retry_count for r in fake.requests] == [0, 1]
    assert fake.requests[0].body == fake.requests[1].body


async def test_overloaded_then_success_honours_retry_after(fake: FakeAnthropic) -> None:
    fake.enqueue(overloaded({"retry-after-ms": "1"}), tool_use_reply(decision(action())))

    result = await model(fake).decide(STRATEGY, make_context(), SETTINGS)

    assert len(fake.requests) == 2
    # Without the header the SDK would back off for at least 375 ms.
    assert result.latency_ms < 350


async def test_server_errors_on_every_attempt_are_unavailable(fake: FakeAnthropic) -> None:
    fake.enqueue(*[server_error({"retry-after-ms": "1"})] * 3)

    with pytest.raises(ModelUnavailable, match="Anthropic answered 500"):
        await model(fake, max_retries=2).decide(STRATEGY, make_context(), SETTINGS)
    assert len(fake.requests) == 3


async def test_timeout_is_unavailable_within_a_bounded_time(fake: FakeAnthropic) -> None:
    fake.enqueue(*[slow(tool_use_reply(decision(action())), 10)] * 2)

    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"did not answer within 0\.3s"):
        await model(fake, timeout=0.3, max_retries=1).decide(STRATEGY, make_context(), SETTINGS)
    elapsed = time.monotonic() - started

    assert len(fake.requests) == 2
    # Two 0.3 s attempts and one backoff of at most 0.5 s, far below the 10 s reply.
    assert 0.6 <= elapsed < 3


async def test_a_rejected_key_is_not_retried(fake: FakeAnthropic) -> None:
    with pytest.raises(ModelError, match=r"Anthropic rejected the request \(401\)") as raised:
        await model(fake, api_key="sk-ant-wrong", max_retries=3).decide(
            STRATEGY, make_context(), SETTINGS
        )
    assert not isinstance(raised.value, ModelUnavailable)
    assert len(fake.requests) == 1


def test_an_empty_key_is_refused_rather_than_read_from_the_environment() -> None:
    with pytest.raises(ValueError, match="API key is required"):
        AnthropicDecisionModel("")


async def test_prompt_injection_stays_inside_the_data_blocks(fake: FakeAnthropic) -> None:
    fake.enqueue(tool_use_reply(decision(action())))
    news = ({"headline": f"Breaking: {INJECTION}", "source": "Wire"},)

    await model(fake).decide(f"Buy dips. {INJECTION}", make_context(news=news), SETTINGS)

    body = fake.requests[0].body
    system, user = body["system"], body["messages"][0]["content"]
    assert INJECTION not in system
    assert user.count(INJECTION) == 2
    nonce = system.split("<strategy-")[1].split(">")[0]
    strategy_block = user.split(f"<strategy-{nonce}>")[1].split(f"</strategy-{nonce}>")[0]
    context_block = user.split(f"<context-{nonce}>")[1].split(f"</context-{nonce}>")[0]
    # Both occurrences are inside the blocks, none in the instructions around them.
    assert strategy_block.count(INJECTION) == 1
    assert context_block.count(INJECTION) == 1
