"""The vocabulary of agents, shared by the service, the executor, the models and the schema."""

from __future__ import annotations

import enum


class AgentKind(enum.StrEnum):
    PROMPT = "PROMPT"  # a strategy in words, decided by the rules model or an LLM
    WORKFLOW = "WORKFLOW"  # a visual workflow (another area; not created here yet)


class AgentStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


class ExecutionStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"  # the model decided; orders were placed or refused by risk checks
    FAILED = "FAILED"  # no usable decision (model error) or an unexpected error
    SKIPPED = "SKIPPED"  # not run: the agent was paused or deleted, or its trigger removed
