"""The /graphql endpoint itself: transports, limits, masking, health."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import websockets
from starlette.applications import Starlette

from schema.root import build_schema
from tests.conftest import GraphQLClient

MARKET_STATUS = "{ marketStatus { isOpen nextOpen nextClose } }"


async def test_post_query_answers(gql: GraphQLClient) -> None:
    body = await gql(MARKET_STATUS)
    status = body["data"]["marketStatus"]
    assert isinstance(status["isOpen"], bool)
    assert status["nextOpen"].endswith("+00:00")


async def test_get_query_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/graphql", params={"query": MARKET_STATUS})
    assert response.status_code == 200
    assert "isOpen" in response.json()["data"]["marketStatus"]


async def test_get_cannot_run_a_mutation(http: httpx.AsyncClient) -> None:
    response = await http.get("/graphql", params={"query": "mutation { __typename }"})
    assert response.status_code in (400, 405)


async def test_depth_limit_rejects_deep_queries() -> None:
    schema = build_schema(max_depth=0)
    shallow = await schema.execute("{ __typename }")
    deep = await schema.execute("{ marketStatus { isOpen } }")
    assert shallow.errors is None
    assert deep.errors is not None
    assert "exceeds maximum operation depth of 0" in deep.errors[0].message


async def test_alias_limit_rejects_alias_floods(gql: GraphQLClient) -> None:
    query = "{ " + " ".join(f"a{i}: marketStatus {{ isOpen }}" for i in range(40)) + " }"
    body = await gql(query)
    assert "aliases found" in body["errors"][0]["message"]


async def test_token_limit_rejects_huge_documents(gql: GraphQLClient) -> None:
    query = "{ marketStatus { " + "isOpen " * 5000 + "} }"
    body = await gql(query)
    assert "token" in body["errors"][0]["message"].lower()


async def test_unexpected_errors_are_masked_with_a_request_id(
    http: httpx.AsyncClient, app: Starlette, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(app.state.services.market, "status", explode)
    response = await http.post(
        "/graphql", json={"query": MARKET_STATUS}, headers={"X-Request-ID": "req-abc123"}
    )
    error = response.json()["errors"][0]
    assert error["message"] == "Unexpected error."
    assert "hunter2" not in response.text
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-abc123"}
    assert response.headers["x-request-id"] == "req-abc123"
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_validation_errors_are_not_masked(gql: GraphQLClient) -> None:
    body = await gql("{ noSuchField }")
    assert "noSuchField" in body["errors"][0]["message"]


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_playground_is_served_from_our_own_assets(http: httpx.AsyncClient) -> None:
    page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text)
    assert len(assets) >= 5
    for asset in assets:
        assert (await http.get(asset)).status_code == 200, asset


async def test_websocket_refuses_the_legacy_graphql_ws_protocol(live_server: str) -> None:
    async with websockets.connect(f"ws://{live_server}/graphql", subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4406


async def test_websocket_rejects_a_bad_token_in_connection_init(live_server: str) -> None:
    async with websockets.connect(
        f"ws://{live_server}/graphql",
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
    ) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": "Bearer nope"}})
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403
