"""A document is validated once, then answered from the validation cache, limits and all."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import graphql
import pytest
import strawberry.schema.schema
from graphql import DocumentNode
from starlette.applications import Starlette

from schema.root import build_schema
from tests.conftest import GraphQLClient


@pytest.fixture
def validated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The operation names of every document graphql-core really validates from now on."""
    names: list[str] = []

    def counting(schema: Any, document: DocumentNode, *args: Any, **kwargs: Any) -> Any:
        names.extend(
            d.name.value
            for d in document.definitions
            if isinstance(d, graphql.OperationDefinitionNode) and d.name is not None
        )
        return graphql.validate(schema, document, *args, **kwargs)

    # Strawberry calls the `validate` it imported, behind its validation cache.
    monkeypatch.setattr(strawberry.schema.schema, "validate", counting)
    return names


def _probe() -> str:
    # A name no other test uses, so that no earlier request has cached this document.
    return f"Probe{uuid.uuid4().hex}"


async def test_the_same_document_is_validated_once(
    gql: GraphQLClient, validated: list[str]
) -> None:
    name = _probe()
    query = f"query {name} {{ marketStatus {{ isOpen }} }}"
    first = await gql(query)
    second = await gql(query)
    assert "errors" not in first and "errors" not in second, (first, second)
    assert validated.count(name) == 1


async def test_a_cached_verdict_still_rejects_and_belongs_to_its_schema(
    app: Starlette, validated: list[str]
) -> None:
    name = _probe()
    deep = f"query {name} {{ marketStatus {{ isOpen }} }}"
    shallow_only = build_schema(max_depth=0)
    answers = [await shallow_only.execute(deep) for _ in range(2)]
    for answer in answers:
        assert answer.errors is not None
        assert "exceeds maximum operation depth of 0" in answer.errors[0].message
    assert validated.count(name) == 1
    # Another schema, other limits: its own verdict, not the first schema's cached one.
    context = SimpleNamespace(market=app.state.services.market)
    deeper = await build_schema(max_depth=2).execute(deep, context_value=context)
    assert deeper.errors is None and deeper.data is not None
    assert validated.count(name) == 2


async def test_alias_and_credential_rules_still_apply_from_the_cache(
    gql: GraphQLClient, validated: list[str]
) -> None:
    name = _probe()
    flood = (
        f"query {name} {{ " + " ".join(f"a{i}: marketStatus {{ isOpen }}" for i in range(40)) + " }"
    )
    batch = f"""mutation {name}Login {{
      a: login(input: {{email: "a@example.com", password: "x"}}) {{ __typename }}
      b: login(input: {{email: "b@example.com", password: "y"}}) {{ __typename }}
    }}"""
    for _ in range(2):
        assert "40 aliases found" in (await gql(flood))["errors"][0]["message"]
        errors: list[dict[str, Any]] = (await gql(batch))["errors"]
        assert any("must be the only field" in e["message"] for e in errors), errors
    assert validated.count(name) == 1
    assert validated.count(f"{name}Login") == 1
