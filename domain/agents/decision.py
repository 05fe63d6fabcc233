"""What an agent's model sees and what it may answer. Shared by every model and the executor."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from domain.market.indicators import Indicators
from domain.trading.types import OrderType


class DecisionAction(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


class LlmProvider(enum.StrEnum):
    RULES = "RULES"
    OPENAI = "OPENAI"
    ANTHROPIC = "ANTHROPIC"


@dataclass(frozen=True, slots=True)
class LlmSettings:
    provider: LlmProvider = LlmProvider.RULES
    model: str = "rules-v1"
    temperature: Decimal = Decimal("0.2")


@dataclass(frozen=True, slots=True)
class Action:
    action: DecisionAction
    symbol: str | None
    reasoning: str
    quantity: Decimal | None = None
    notional: Decimal | None = None
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    confidence: Decimal | None = None  # 0..1


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    reasoning: str
    confidence: Decimal | None = None


@dataclass(frozen=True, slots=True)
class SymbolSnapshot:
    """One watched symbol at decision time. Prices are the latest quote's."""

    symbol: str
    price: Decimal
    change_percent: Decimal | None  # versus the previous session's close
    volume: Decimal
    indicators: Indicators
    position_quantity: Decimal = Decimal(0)  # the agent's own position
    average_cost: Decimal | None = None


@dataclass(frozen=True, slots=True)
class DecisionContext:
    """Everything a model may use. News and prompts inside it are data, never instructions."""

    now: datetime
    symbols: dict[str, SymbolSnapshot]
    cash_available: Decimal  # what the agent may still spend within its allocation
    allocation: Decimal  # the agent's whole allocation in dollars
    equity: Decimal  # the user's whole portfolio
    news: tuple[dict[str, Any], ...] = ()
    recent_decisions: tuple[dict[str, Any], ...] = ()
    trigger: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelResult:
    decision: Decision
    model: str
    prompt: str  # exactly what was sent (or, for the rules model, the parsed strategy)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms: int = 0
    raw_output: str | None = None


class ModelError(Exception):
    """A model run that produced no usable decision. `outcome` is recorded on the execution."""

    outcome = "model_error"


class ModelRefused(ModelError):
    outcome = "refused"


class ModelInvalidOutput(ModelError):
    outcome = "invalid_output"


class ModelUnavailable(ModelError):
    outcome = "unavailable"  # after retries: timeouts, 429s, 5xx


class DecisionModel(Protocol):
    async def decide(
        self, strategy: str, context: DecisionContext, settings: LlmSettings
    ) -> ModelResult: ...
