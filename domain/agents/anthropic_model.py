"""Decisions by a Claude model, through the official `anthropic` SDK: one Messages call
that must answer by calling the single tool `record_decision`, whose input schema is the
decision schema.

Retries are the SDK's own: 408, 409, 429, 5xx (529 "overloaded" included), timeouts and
connection errors are retried up to `max_retries` times with exponential backoff (0.5 s
doubling to at most 8 s, minus up to 25% jitter) or after the server's
`retry-after-ms`/`retry-after` when it sends a positive one. `timeout` bounds each
attempt, so one call takes at most about `(max_retries + 1) * timeout` plus the backoff.

The installed SDK (2.x) has no sampling parameters on `messages.create`, so
`LlmSettings.temperature` is not sent to Anthropic.
"""

from __future__ import annotations

import json
import time

import anthropic
from anthropic.types import Message, TextBlock, ToolUseBlock

from domain.agents.decision import (
    DecisionContext,
    LlmSettings,
    ModelError,
    ModelInvalidOutput,
    ModelRefused,
    ModelResult,
    ModelUnavailable,
)
from domain.agents.llm import (
    DECISION_SCHEMA,
    DECISION_SCHEMA_NAME,
    MAX_OUTPUT_TOKENS,
    HostedModel,
    cost_usd,
    parse_decision,
    render_prompt,
)

__all__ = ["AnthropicDecisionModel"]

_TOOL_DESCRIPTION = (
    "Record the trading agent's decision: the actions to take now (HOLD when none) and "
    "the reasoning behind them. This is the only way to answer."
)


class AnthropicDecisionModel(HostedModel):
    """A DecisionModel on one user's Anthropic key."""

    provider = "Anthropic"

    async def decide(
        self, strategy: str, context: DecisionContext, settings: LlmSettings
    ) -> ModelResult:
        system, user = render_prompt(strategy, context)
        started = time.monotonic()
        client = self._shared(
            lambda: anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        )
        try:
            message = await client.messages.create(
                model=settings.model,
                max_tokens=MAX_OUTPUT_TOKENS,
                system=system,
                messages=[{"role": "user", "content": user}],
                tools=[
                    {
                        "name": DECISION_SCHEMA_NAME,
                        "description": _TOOL_DESCRIPTION,
                        "input_schema": DECISION_SCHEMA,
                    }
                ],
                tool_choice={
                    "type": "tool",
                    "name": DECISION_SCHEMA_NAME,
                    "disable_parallel_tool_use": True,
                },
            )
        except anthropic.APIError as exc:
            raise self._error(exc) from exc
        latency_ms = round((time.monotonic() - started) * 1000)

        tool_input = _tool_input(message)
        input_tokens = message.usage.input_tokens
        output_tokens = message.usage.output_tokens
        return ModelResult(
            decision=parse_decision(tool_input, symbols=context.symbols.keys()),
            model=message.model,
            prompt=f"{system}\n\n{user}",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd(message.model, input_tokens, output_tokens),
            latency_ms=latency_ms,
            raw_output=json.dumps(tool_input, ensure_ascii=False),
        )

    def _error(self, exc: anthropic.APIError) -> ModelError:
        retried = f"with {self._max_retries} retries allowed"
        if isinstance(exc, anthropic.APITimeoutError):
            return ModelUnavailable(
                f"Anthropic did not answer within {self._timeout:g}s, {retried}"
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return ModelUnavailable(f"Anthropic could not be reached, {retried}: {exc}")
        if isinstance(exc, anthropic.APIStatusError) and (
            exc.status_code in (408, 409, 429) or exc.status_code >= 500
        ):
            return ModelUnavailable(
                f"Anthropic answered {exc.status_code}, {retried}: {exc.message}"
            )
        if isinstance(exc, anthropic.APIStatusError):
            # A bad key, an unknown model, a request too large: retrying cannot help, and
            # the message tells the user what to fix.
            return ModelError(f"Anthropic rejected the request ({exc.status_code}): {exc.message}")
        return ModelError(f"Anthropic's answer could not be read: {exc.message}")


def _tool_input(message: Message) -> object:
    if message.stop_reason == "refusal":
        explanation = message.stop_details.explanation if message.stop_details else None
        raise ModelRefused(explanation or "Claude declined to answer")
    if message.stop_reason == "max_tokens":
        raise ModelInvalidOutput(f"the answer was cut off at {MAX_OUTPUT_TOKENS} tokens")
    calls = [
        block
        for block in message.content
        if isinstance(block, ToolUseBlock) and block.name == DECISION_SCHEMA_NAME
    ]
    if not calls:
        # The tool is forced, so an answer in words is the model declining to decide.
        text = " ".join(b.text for b in message.content if isinstance(b, TextBlock)).strip()
        if text:
            raise ModelRefused(text)
        raise ModelInvalidOutput(f"Claude answered without calling {DECISION_SCHEMA_NAME}")
    if len(calls) > 1:
        raise ModelInvalidOutput(f"Claude called {DECISION_SCHEMA_NAME} {len(calls)} times")
    return calls[0].input
