"""Builds the one Schema: root types, limits, caches, error masking."""

from __future__ import annotations

import logging

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.types import ExecutionContext

from kianax.logs import request_id_var
from schema.limits import CredentialMutationsAlone, RequestBudget
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


def build_schema(
    *, max_depth: int = 12, max_aliases: int = 30, max_tokens: int = 4000
) -> KianaxSchema:
    return KianaxSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: ParserCache(maxsize=1024),
            lambda: QueryDepthLimiter(max_depth=max_depth),
            lambda: MaxAliasesLimiter(max_alias_count=max_aliases),
            lambda: AddValidationRules([CredentialMutationsAlone]),
            lambda: ValidationCache(maxsize=1024),
            RequestBudget,
            lambda: KianaxMaskErrors(should_mask_error=_is_unexpected),
        ],
    )
