"""Builds the one Schema: root types, limits, caches, error masking."""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.execution import Executor
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
)
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import ExecutionContext

from kianax.logs import request_id_var
from schema.limits import RequestBudget, validation_rules
from schema.roots.agents import AgentsMutation, AgentsQuery, AgentsSubscription
from schema.roots.auth import AuthMutation, AuthQuery
from schema.roots.brokers import BrokerMutation, BrokerQuery
from schema.roots.market import MarketQuery, MarketSubscription
from schema.roots.trading import TradingMutation, TradingQuery, TradingSubscription

log = logging.getLogger("kianax.graphql")


# Each area contributes its root fields; the roots are their union.
@strawberry.type
class Query(AuthQuery, MarketQuery, TradingQuery, BrokerQuery, AgentsQuery):
    pass


@strawberry.type
class Mutation(AuthMutation, TradingMutation, BrokerMutation, AgentsMutation):
    pass


@strawberry.type
class Subscription(MarketSubscription, TradingSubscription, AgentsSubscription):
    pass


def _is_unexpected(error: GraphQLError) -> bool:
    # Syntax, validation and variable-coercion errors are GraphQL's own, for the client.
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError)


class KianaxMaskErrors(MaskErrors):
    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.extensions = {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id_var.get()}
        return masked


class KianaxSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            if _is_unexpected(error):
                original = error.original_error
                log.error(
                    "unexpected error in %s",
                    ".".join(str(p) for p in error.path or ()),
                    exc_info=(type(original), original, original.__traceback__)
                    if original
                    else None,
                )


class PerEventMemoExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, minus graphql-core 3.3's memory leak in subscriptions (bench F1).

    graphql-core 3.3.1 and 3.3.2 (the latest release) build each event's executor as a
    shallow copy of the subscription's (``build_per_event_executor``), so every event shares
    one ``_relevant_sub_fields`` memo, keyed by the identity of a field list that each event
    creates afresh and kept alive by the memo: an entry per event for as long as the
    subscription lives (~1 KB per quote delivered). No version avoids it: strawberry 0.341
    needs 3.3 (3.2 does not even import), and 3.3.0 shares the memo too, keyed by ids of
    objects it lets die (their reuse can return another field's entry; 3.3.1 fixed that).
    https://github.com/graphql-python/graphql-core/blob/v3.3.2/src/graphql/execution/executor.py
    We found no upstream report. tests/web/test_subscription_memory.py fails once graphql-core
    stops sharing the memo: then this class and its use in build_schema can go.
    """

    def build_per_event_executor(self, payload: Any) -> Executor[Any]:
        executor = super().build_per_event_executor(payload)
        # A memo per event still spares the work for every item of a list within the event.
        # _stream_usages is shared the same way, but only @stream fills it and this schema
        # has no @stream.
        executor._relevant_sub_fields = {}
        return executor


def build_schema(
    *, max_depth: int = 12, max_aliases: int = 30, max_tokens: int = 4000
) -> KianaxSchema:
    rules = validation_rules(max_depth=max_depth, max_aliases=max_aliases)
    return KianaxSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: ParserCache(maxsize=1024),
            lambda: AddValidationRules(rules),
            lambda: ValidationCache(maxsize=1024),
            RequestBudget,
            lambda: KianaxMaskErrors(should_mask_error=_is_unexpected),
        ],
        execution_context_class=PerEventMemoExecutor,
    )
