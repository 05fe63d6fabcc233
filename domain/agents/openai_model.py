"""Decisions by an OpenAI model, through the official `openai` SDK: one Chat Completion
whose answer is held to the decision schema by strict Structured Outputs.

Retries are the SDK's own: 408, 409, 429, 5xx, timeouts and connection errors are retried
up to `max_retries` times with exponential backoff (0.5 s doubling to at most 8 s, minus
up to 25% jitter) or after the server's `retry-after-ms`/`retry-after`, when it sends one
of at most two minutes. `timeout` bounds each attempt, so one call takes at most about
`(max_retries + 1) * timeout` plus the backoff.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import openai
from openai.types.chat import ChatCompletion

from domain.agents.decision import (
    Decision,
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

__all__ = ["OpenAIDecisionModel"]


class OpenAIDecisionModel(HostedModel):
    """A DecisionModel on one user's OpenAI key."""

    provider = "OpenAI"

    async def decide(
        self, strategy: str, context: DecisionContext, settings: LlmSettings
    ) -> ModelResult:
        system, user = render_prompt(strategy, context)
        started = time.monotonic()
        client = self._shared(
            lambda: openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
        )
        try:
            completion = await client.chat.completions.create(
                model=settings.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": DECISION_SCHEMA_NAME,
                        "strict": True,
                        "schema": DECISION_SCHEMA,
                    },
                },
                temperature=float(settings.temperature),
                max_completion_tokens=MAX_OUTPUT_TOKENS,
            )
        except openai.APIError as exc:
            raise self._error(exc) from exc
        latency_ms = round((time.monotonic() - started) * 1000)

        usage = completion.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        content = _content(completion)
        return ModelResult(
            decision=_decision(content, context),
            model=completion.model,
            prompt=f"{system}\n\n{user}",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd(completion.model, input_tokens, output_tokens),
            latency_ms=latency_ms,
            raw_output=content,
        )

    def _error(self, exc: openai.APIError) -> ModelError:
        retried = f"with {self._max_retries} retries allowed"
        if isinstance(exc, openai.APITimeoutError):
            return ModelUnavailable(f"OpenAI did not answer within {self._timeout:g}s, {retried}")
        if isinstance(exc, openai.APIConnectionError):
            return ModelUnavailable(f"OpenAI could not be reached, {retried}: {exc}")
        if isinstance(exc, openai.APIStatusError) and (
            exc.status_code in (408, 409, 429) or exc.status_code >= 500
        ):
            return ModelUnavailable(f"OpenAI answered {exc.status_code}, {retried}: {exc.message}")
        if isinstance(exc, openai.APIStatusError):
            # A bad key, an unknown model, a parameter the model does not take: retrying
            # cannot help, and the message tells the user what to fix.
            return ModelError(f"OpenAI rejected the request ({exc.status_code}): {exc.message}")
        return ModelError(f"OpenAI's answer could not be read: {exc.message}")


def _content(completion: ChatCompletion) -> str:
    if not completion.choices:
        raise ModelInvalidOutput("OpenAI answered without a choice")
    choice = completion.choices[0]
    if choice.message.refusal:
        raise ModelRefused(choice.message.refusal)
    if choice.finish_reason == "content_filter":
        raise ModelRefused("OpenAI's content filter withheld the answer")
    if choice.finish_reason == "length":
        raise ModelInvalidOutput(f"the answer was cut off at {MAX_OUTPUT_TOKENS} tokens")
    if not choice.message.content:
        raise ModelInvalidOutput("OpenAI answered with no content")
    return choice.message.content


def _decision(content: str, context: DecisionContext) -> Decision:
    try:
        # Decimal, not float, so "quantity": 0.1 arrives as exactly 0.1.
        obj = json.loads(content, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ModelInvalidOutput(f"the answer is not JSON: {exc}") from None
    return parse_decision(obj, symbols=context.symbols.keys())
