"""Manual trading through GraphQL on the paper broker."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.trading.paper import PaperMatcher
from tests.conftest import GraphQLClient, SignedIn
from tests.trading.conftest import PORTFOLIO, place, wait_for_status
from tests.ws import graphql_ws

STARTING = Decimal("100000")


async def test_market_buy_fills_and_portfolio_reconciles(
    signup: Any, paper_broker: PaperMatcher
) -> None:
    user: SignedIn = await signup()
    placed = await place(user, symbol="AAPL", side="BUY", quantity="10")
    assert placed["__typename"] == "OrderPlaced", placed
    assert placed["order"]["status"] == "ACCEPTED"
    filled = await wait_for_status(user, placed["order"]["id"], "FILLED")
    assert Decimal(filled["filledQuantity"]) == 10
    assert len(filled["fills"]) == 1
    price = Decimal(filled["fills"][0]["price"])

    portfolio = (await user.gql(PORTFOLIO))["data"]["portfolio"]
    assert portfolio["broker"] == "PAPER"
    assert Decimal(portfolio["cash"]) == STARTING - 10 * price
    assert Decimal(portfolio["reserved"]) == 0
    [position] = portfolio["positions"]
    assert position["symbol"] == "AAPL" and Decimal(position["quantity"]) == 10
    assert Decimal(position["averageCost"]) == price
    # Cash + cost basis + realized P&L reconcile to the starting balance to the cent.
    cost_basis = Decimal(position["quantity"]) * Decimal(position["averageCost"])
    assert Decimal(portfolio["cash"]) + cost_basis - Decimal(position["realizedPnl"]) == STARTING

    sell = await place(user, symbol="AAPL", side="SELL", quantity="4")
    sold = await wait_for_status(user, sell["order"]["id"], "FILLED")
    sell_price = Decimal(sold["fills"][0]["price"])
    after = (await user.gql(PORTFOLIO))["data"]["portfolio"]
    [position] = after["positions"]
    assert Decimal(position["quantity"]) == 6
    assert Decimal(position["realizedPnl"]) == 4 * (sell_price - price)
    assert Decimal(after["cash"]) == STARTING - 10 * price + 4 * sell_price


async def test_subscriber_sees_new_accepted_filled_then_portfolio(
    signup: Any, live_server: str, paper_broker: PaperMatcher
) -> None:
    user: SignedIn = await signup()
    async with graphql_ws(live_server, token=user.access_token) as ws:
        await ws.subscribe("subscription { orderEvents { id status symbol filledQuantity } }")
        await ws.subscribe(
            "subscription { portfolioUpdates { cash positions { symbol quantity } } }"
        )
        await asyncio.sleep(0.2)
        placed = await place(user, symbol="MSFT", side="BUY", quantity="3")
        statuses: list[str] = []
        portfolio = None
        while portfolio is None or len(statuses) < 3:
            data = await ws.next_data()
            if "orderEvents" in data:
                assert data["orderEvents"]["id"] == placed["order"]["id"]
                statuses.append(data["orderEvents"]["status"])
            else:
                portfolio = data["portfolioUpdates"]
        assert statuses == ["NEW", "ACCEPTED", "FILLED"]
        assert portfolio["positions"] == [{"symbol": "MSFT", "quantity": "3.000000000"}]


async def test_client_order_id_makes_placement_idempotent(signup: Any) -> None:
    user: SignedIn = await signup()
    order = {"symbol": "KO", "side": "BUY", "type": "LIMIT", "limitPrice": "1.00", "quantity": "5"}
    first = await place(user, **order, clientOrderId="my-key-1")
    second = await place(user, **order, clientOrderId="my-key-1")
    assert first["__typename"] == second["__typename"] == "OrderPlaced"
    assert first["order"]["id"] == second["order"]["id"]
    different = await place(user, **{**order, "quantity": "6"}, clientOrderId="my-key-1")
    assert different["__typename"] == "DuplicateClientOrderId"
    listed = (await user.gql('{ orders(symbol: "KO") { edges { node { id } } } }'))["data"]
    assert len(listed["orders"]["edges"]) == 1


async def test_limit_order_rests_and_cancel_releases_buying_power(signup: Any) -> None:
    user: SignedIn = await signup()
    placed = await place(
        user, symbol="JPM", side="BUY", type="LIMIT", limitPrice="1.00", quantity="100"
    )
    order_id = placed["order"]["id"]
    reserved = Decimal((await user.gql(PORTFOLIO))["data"]["portfolio"]["reserved"])
    assert reserved == Decimal("100.00")
    cancel = """mutation($id: ID!) { cancelOrder(id: $id) {
        __typename ... on OrderCanceled { order { status } } ... on UserError { code } } }"""
    done = (await user.gql(cancel, {"id": order_id}))["data"]["cancelOrder"]
    assert done == {"__typename": "OrderCanceled", "order": {"status": "CANCELED"}}
    portfolio = (await user.gql(PORTFOLIO))["data"]["portfolio"]
    assert Decimal(portfolio["reserved"]) == 0 and Decimal(portfolio["buyingPower"]) == STARTING
    again = (await user.gql(cancel, {"id": order_id}))["data"]["cancelOrder"]
    assert again["__typename"] == "ValidationError"


async def test_expected_failures_are_typed(signup: Any) -> None:
    user: SignedIn = await signup()
    both = await place(user, symbol="AAPL", side="BUY", quantity="1", notional="100")
    assert both["__typename"] == "ValidationError"
    too_big = await place(user, symbol="AAPL", side="BUY", quantity="100000")
    assert too_big["__typename"] == "InsufficientBuyingPower"
    assert Decimal(too_big["required"]) > Decimal(too_big["available"]) == STARTING
    short = await place(user, symbol="AAPL", side="SELL", quantity="1")
    assert short["__typename"] == "RiskLimitExceeded" and short["rule"] == "short_selling"
    unknown = await place(user, symbol="NOPEZ", side="BUY", quantity="1")
    assert unknown["__typename"] == "ValidationError"
    limits = """mutation { updateRiskLimits(input: {maxPositionValue: "1000"}) {
        __typename ... on RiskLimitsUpdated { riskLimits { maxPositionValue allowShort } } } }"""
    updated = (await user.gql(limits))["data"]["updateRiskLimits"]
    assert Decimal(updated["riskLimits"]["maxPositionValue"]) == 1000
    assert updated["riskLimits"]["allowShort"] is False
    capped = await place(user, symbol="AAPL", side="BUY", quantity="50")
    assert capped["__typename"] == "RiskLimitExceeded" and capped["rule"] == "max_position_value"
    bad_limits = """mutation { updateRiskLimits(input: {maxPositionPercent: "250"}) {
        __typename ... on ValidationError { field message } } }"""
    refused = (await user.gql(bad_limits))["data"]["updateRiskLimits"]
    assert refused["__typename"] == "ValidationError" and refused["field"] == "max_position_percent"
    # Nothing was placed by any of the refusals.
    assert (await user.gql("{ orders { edges { node { id } } } }"))["data"]["orders"]["edges"] == []


async def test_concurrent_orders_never_overspend(signup: Any, app: Any) -> None:
    user: SignedIn = await signup()
    # 50 limit buys of $3,000 each against $100,000: at most 33 can be accepted.
    results = await asyncio.gather(
        *(
            place(user, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="3000")
            for _ in range(50)
        )
    )
    kinds = [r["__typename"] for r in results]
    accepted = kinds.count("OrderPlaced")
    assert accepted == 33
    assert set(kinds) == {"OrderPlaced", "InsufficientBuyingPower"}
    portfolio = (await user.gql(PORTFOLIO))["data"]["portfolio"]
    assert Decimal(portfolio["reserved"]) == accepted * Decimal(3000)
    assert Decimal(portfolio["buyingPower"]) >= 0


async def test_user_b_can_neither_see_nor_cancel_user_a_orders(signup: Any) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    placed = await place(
        alice, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="1"
    )
    order_id = placed["order"]["id"]
    assert (await bob.gql("query($id: ID!) { order(id: $id) { id } }", {"id": order_id}))["data"][
        "order"
    ] is None
    assert (await bob.gql("{ orders { edges { node { id } } } }"))["data"]["orders"]["edges"] == []
    assert (await bob.gql("{ fills { edges { node { id } } } }"))["data"]["fills"]["edges"] == []
    cancel = (
        """mutation($id: ID!) { cancelOrder(id: $id) { __typename ... on UserError { code } } }"""
    )
    attempt = (await bob.gql(cancel, {"id": order_id}))["data"]["cancelOrder"]
    assert attempt == {"__typename": "NotFound", "code": "NOT_FOUND"}
    still = await alice.gql("query($id: ID!) { order(id: $id) { status } }", {"id": order_id})
    assert still["data"]["order"]["status"] == "ACCEPTED"
    bob_portfolio = (await bob.gql(PORTFOLIO))["data"]["portfolio"]
    assert Decimal(bob_portfolio["reserved"]) == 0 and bob_portfolio["positions"] == []


async def test_order_events_are_per_user(
    signup: Any, live_server: str, paper_broker: PaperMatcher
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    async with graphql_ws(live_server, token=bob.access_token) as ws:
        await ws.subscribe("subscription { orderEvents { id } }")
        await asyncio.sleep(0.2)
        await place(alice, symbol="KO", side="BUY", quantity="1")
        mine = await place(
            bob, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="1"
        )
        first = await ws.next_data()
        assert first["orderEvents"]["id"] == mine["order"]["id"]


async def test_order_subscription_needs_a_user(live_server: str) -> None:
    async with graphql_ws(live_server) as ws:
        op = await ws.subscribe("subscription { orderEvents { id } }")
        message = await ws.receive()
        assert message["id"] == op
        assert message["payload"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_read_only_token_cannot_trade(signup: Any, gql: GraphQLClient) -> None:
    user: SignedIn = await signup()
    created = await user.gql(
        'mutation { createApiToken(name: "ro", scopes: [READ]) {'
        " ... on ApiTokenCreated { token } } }"
    )
    token = created["data"]["createApiToken"]["token"]
    body = await gql(
        'mutation { placeOrder(input: {symbol: "AAPL", side: BUY, quantity: "1"}) { __typename } }',
        token=token,
    )
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert (await gql("{ portfolio { cash } }", token=token))["data"]["portfolio"]["cash"]


async def test_close_position_and_liquidate(signup: Any, paper_broker: PaperMatcher) -> None:
    user: SignedIn = await signup()
    for symbol in ("AAPL", "MSFT"):
        placed = await place(user, symbol=symbol, side="BUY", quantity="2")
        await wait_for_status(user, placed["order"]["id"], "FILLED")
    close = """mutation { closePosition(symbol: "AAPL") {
        __typename ... on OrderPlaced { order { id side quantity } } } }"""
    closing = (await user.gql(close))["data"]["closePosition"]
    assert closing["order"]["side"] == "SELL" and Decimal(closing["order"]["quantity"]) == 2
    await wait_for_status(user, closing["order"]["id"], "FILLED")
    await place(user, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="1")
    result = (
        await user.gql(
            "mutation { liquidateAll { __typename"
            " ... on EmergencyResult { canceledOrders closedPositions } } }"
        )
    )["data"]["liquidateAll"]
    assert result == {"__typename": "EmergencyResult", "canceledOrders": 1, "closedPositions": 1}
    nothing = await user.gql('mutation { closePosition(symbol: "AAPL") { __typename } }')
    assert nothing["data"]["closePosition"]["__typename"] == "ValidationError"


async def test_trading_is_audited(
    signup: Any, owner_engine: AsyncEngine, paper_broker: PaperMatcher
) -> None:
    user: SignedIn = await signup()
    placed = await place(user, symbol="AAPL", side="BUY", quantity="1")
    await wait_for_status(user, placed["order"]["id"], "FILLED")
    await place(user, symbol="AAPL", side="SELL", quantity="5")
    limit = await place(
        user, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="1"
    )
    await user.gql(
        "mutation($id: ID!) { cancelOrder(id: $id) { __typename } }", {"id": limit["order"]["id"]}
    )
    async with owner_engine.connect() as connection:
        kinds = set(
            (
                await connection.execute(
                    text("SELECT kind FROM audit_events WHERE user_id = :u"),
                    {"u": uuid.UUID(user.user_id)},
                )
            ).scalars()
        )
    assert {"order.placed", "order.filled", "order.risk_rejected", "order.canceled"} <= kinds


async def test_csv_export_has_only_my_rows(signup: Any, paper_broker: PaperMatcher) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    placed = await place(alice, symbol="AAPL", side="BUY", quantity="1")
    await wait_for_status(alice, placed["order"]["id"], "FILLED")
    await place(bob, symbol="KO", side="BUY", type="LIMIT", limitPrice="1.00", quantity="1")
    http = alice.gql.http
    orders = await http.get(
        "/export/orders.csv", headers={"Authorization": f"Bearer {alice.access_token}"}
    )
    assert orders.status_code == 200 and orders.headers["content-type"].startswith("text/csv")
    lines = orders.text.strip().splitlines()
    assert lines[0].startswith("id,clientOrderId")
    assert len(lines) == 2 and placed["order"]["id"] in lines[1]
    fills = await http.get(
        "/export/fills.csv", headers={"Authorization": f"Bearer {alice.access_token}"}
    )
    assert len(fills.text.strip().splitlines()) == 2
    assert (await http.get("/export/orders.csv")).status_code == 401
