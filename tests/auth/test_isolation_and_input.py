"""Two users never see each other; bad input gets a typed error and changes nothing."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from db.models import User
from tests.conftest import REGISTER, GraphQLClient, SignedIn, client_for


async def test_two_users_see_only_themselves(signup: Any) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    await alice.gql('mutation { createApiToken(name: "a", scopes: [READ]) { __typename } }')
    assert (await bob.gql("{ me { email } }"))["data"]["me"]["email"] == bob.email
    assert (await bob.gql("{ apiTokens { id } }"))["data"]["apiTokens"] == []
    bob_sessions = (await bob.gql("{ sessions { id } }"))["data"]["sessions"]
    alice_sessions = (await alice.gql("{ sessions { id } }"))["data"]["sessions"]
    assert {s["id"] for s in bob_sessions}.isdisjoint({s["id"] for s in alice_sessions})
    # Bob cannot end Alice's session: it is simply not found.
    revoke = "mutation($id: ID!) { revokeSession(id: $id) }"
    assert (await bob.gql(revoke, {"id": alice_sessions[0]["id"]}))["data"][
        "revokeSession"
    ] is False
    assert (await alice.gql("{ me { email } }"))["data"]["me"]["email"] == alice.email


async def _user_count(owner_engine: AsyncEngine) -> int:
    async with owner_engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(User)) or 0)


async def test_bad_registration_input_is_typed_and_changes_nothing(
    app: Starlette, owner_engine: AsyncEngine
) -> None:
    before = await _user_count(owner_engine)
    cases = [
        ("", "correct horse battery", "email"),
        ("not-an-email", "correct horse battery", "email"),
        ("a" * 400 + "@example.com", "correct horse battery", "email"),
        ("valid@example.com", "", "password"),
        ("valid@example.com", "x" * 10_000, "password"),
        ("valid@example.com", "password123", "password"),
    ]
    for email, password, field in cases:
        async with client_for(app) as client:
            body = await GraphQLClient(client)(
                REGISTER, {"input": {"email": email, "password": password}}
            )
        result = body["data"]["register"]
        assert result["__typename"] == "ValidationError", (email[:20], result)
        assert result["field"] == field
    # A lone surrogate smuggled in as a JSON escape is not text either.
    variables = '{"input": {"email": "bad\\udcff@x.com", "password": "correct horse battery"}}'
    raw = f'{{"query": {json.dumps(REGISTER)}, "variables": {variables}}}'
    async with client_for(app) as client:
        response = await client.post(
            "/graphql", content=raw.encode(), headers={"content-type": "application/json"}
        )
    assert response.json()["data"]["register"]["field"] == "email"
    assert await _user_count(owner_engine) == before


async def test_wrong_types_are_graphql_errors_not_500s(gql: GraphQLClient) -> None:
    body = await gql(REGISTER, {"input": {"email": 42, "password": ["x"]}})
    assert body["data"] is None
    assert "String cannot represent" in body["errors"][0]["message"]


async def test_non_utf8_body_is_a_400(gql: GraphQLClient) -> None:
    response = await gql.http.post(
        "/graphql", content=b'{"query": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_rls_blocks_reading_users_without_a_user(
    owner_engine: AsyncEngine, signup: Any
) -> None:
    await signup()
    async with owner_engine.connect() as connection:
        await connection.execute(text("SET ROLE kianax_app"))
        assert await connection.scalar(select(func.count()).select_from(User)) == 0


async def test_audit_log_shows_only_my_events(signup: Any) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    query = "{ auditLog(first: 50) { edges { cursor node { kind entity hash payload } } } }"
    alice_events = (await alice.gql(query))["data"]["auditLog"]["edges"]
    bob_events = (await bob.gql(query))["data"]["auditLog"]["edges"]
    assert [e["node"]["kind"] for e in alice_events] == ["auth.registered"]
    assert len(alice_events[0]["node"]["hash"]) == 64
    assert {e["node"]["hash"] for e in alice_events}.isdisjoint(
        {e["node"]["hash"] for e in bob_events}
    )
    anonymous = await alice.gql.http.post("/graphql", json={"query": query})
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
