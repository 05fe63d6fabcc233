"""Abuse limits: depth, aliases, credential mutations alone, a per-user budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    ValidationRule,
)
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension

from domain.auth.ratelimit import REQUESTS_PER_USER, RateLimiter
from schema.errors import RateLimitedError

# Each attempt at these must be its own request, so that rate limits count attempts and a
# single document cannot carry a hundred password guesses.
CREDENTIAL_MUTATIONS = frozenset(
    {
        "register",
        "login",
        "completeTwoFactorLogin",
        "refreshToken",
        "changePassword",
        "requestPasswordReset",
        "resetPassword",
        "verifyEmail",
        "confirmTotp",
        "disableTotp",
        "connectBroker",
    }
)


class CredentialMutationsAlone(ValidationRule):
    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        if node.operation is not OperationType.MUTATION:
            return
        fields = [s for s in node.selection_set.selections if isinstance(s, FieldNode)]
        sensitive = [f.name.value for f in fields if f.name.value in CREDENTIAL_MUTATIONS]
        if sensitive and len(node.selection_set.selections) > 1:
            self.report_error(
                GraphQLError(
                    f"{sensitive[0]} must be the only field of its mutation (no batching)",
                    node,
                )
            )


def validation_rules(*, max_depth: int, max_aliases: int) -> list[type[ASTValidationRule]]:
    """The schema's own validation rules, for one AddValidationRules built once per schema.

    ValidationCache keys its entries by the rule classes, and each QueryDepthLimiter or
    MaxAliasesLimiter makes a new class: made per request, they made every request a miss.
    """
    return [
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        CredentialMutationsAlone,
    ]


class RequestBudget(SchemaExtension):
    """Each signed-in user gets a budget of operations per minute, across all replicas."""

    async def on_execute(self) -> AsyncIterator[None]:
        ctx = self.execution_context.context
        actor = getattr(ctx, "actor", None)
        if actor is not None:
            wait = await RateLimiter(ctx.redis).hit(REQUESTS_PER_USER, str(actor.user_id))
            if wait is not None:
                raise RateLimitedError(
                    f"request budget exceeded; retry in {wait} seconds", retryAfterSeconds=wait
                )
        yield
