"""Which decision models this server can run, and the defaults of each provider."""

from __future__ import annotations

from collections.abc import Callable

from domain.agents.anthropic_model import AnthropicDecisionModel
from domain.agents.decision import DecisionModel, LlmProvider
from domain.agents.openai_model import OpenAIDecisionModel
from domain.agents.rules import MODEL_NAME as RULES_MODEL
from domain.agents.rules import RulesModel

DEFAULT_MODELS = {
    LlmProvider.RULES: RULES_MODEL,
    LlmProvider.OPENAI: "gpt-4o-mini",
    LlmProvider.ANTHROPIC: "claude-haiku-4-5",
}
PROVIDER_NAMES = {
    LlmProvider.RULES: "the rules model",
    LlmProvider.OPENAI: "OpenAI",
    LlmProvider.ANTHROPIC: "Anthropic",
}
# Per attempt, and attempts after the first: with the SDKs' backoff one decision takes at
# most about a minute, well inside a run's deadline (execution.MODEL_DEADLINE_SECONDS).
LLM_TIMEOUT_SECONDS = 20.0
LLM_MAX_RETRIES = 2

ModelFactory = Callable[[], DecisionModel]


class ModelRegistry:
    """Provider -> how to build its model. The rules model is always there; an LLM provider
    only when the server has its key (KIANAX_OPENAI_API_KEY, KIANAX_ANTHROPIC_API_KEY)."""

    def __init__(
        self,
        *,
        openai_api_key: str | None = None,
        openai_base_url: str | None = None,
        anthropic_api_key: str | None = None,
        anthropic_base_url: str | None = None,
    ) -> None:
        self.factories: dict[LlmProvider, ModelFactory] = {LlmProvider.RULES: RulesModel}
        # One instance per provider: it keeps its SDK client (and connections) between runs.
        if openai_api_key:
            openai_model = OpenAIDecisionModel(
                openai_api_key,
                base_url=openai_base_url,
                timeout=LLM_TIMEOUT_SECONDS,
                max_retries=LLM_MAX_RETRIES,
            )
            self.factories[LlmProvider.OPENAI] = lambda: openai_model
        if anthropic_api_key:
            anthropic_model = AnthropicDecisionModel(
                anthropic_api_key,
                base_url=anthropic_base_url,
                timeout=LLM_TIMEOUT_SECONDS,
                max_retries=LLM_MAX_RETRIES,
            )
            self.factories[LlmProvider.ANTHROPIC] = lambda: anthropic_model

    def available(self, provider: LlmProvider) -> bool:
        return provider in self.factories

    def model(self, provider: LlmProvider) -> DecisionModel | None:
        factory = self.factories.get(provider)
        return None if factory is None else factory()
