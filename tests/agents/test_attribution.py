"""What an agent did is attributed to it: its orders name the agent and the run that placed
them, and the portfolio shows each agent's share beside the user's own."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from arq.worker import Worker

from domain.trading.paper import PaperMatcher
from tests.agents.conftest import create, run_to_end
from tests.conftest import SignedIn
from tests.trading.conftest import PLACE

ALWAYS_BUYS = "Buy $100 of MSFT. Max position size: $10,000"
ORDERS = """{ orders(first: 20) { edges { node {
  id agentId agent { id name } execution { id outcome agent { id } }
} } } }"""
ORDER = "query($id: ID!) { order(id: $id) { status filledQuantity averageFillPrice } }"
NOTIFICATIONS = "{ notifications(first: 20) { edges { node { kind title body } } } }"
ALLOCATION = """{ portfolio(broker: PAPER) {
  equity allocation { percent amount used agent { id } }
} }"""


async def orders_of(user: SignedIn) -> dict[str, dict[str, Any]]:
    body = await user.gql(ORDERS)
    assert "errors" not in body, body
    return {e["node"]["id"]: e["node"] for e in body["data"]["orders"]["edges"]}


async def filled_order(user: SignedIn, order_id: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        body = await user.gql(ORDER, {"id": order_id})
        order: dict[str, Any] = body["data"]["order"]
        if order["status"] == "FILLED":
            return order
        assert asyncio.get_running_loop().time() < deadline, order
        await asyncio.sleep(0.05)


async def notes_of(user: SignedIn) -> list[dict[str, Any]]:
    body = await user.gql(NOTIFICATIONS)
    return [e["node"] for e in body["data"]["notifications"]["edges"]]


async def allocation_of(user: SignedIn) -> tuple[Decimal, list[dict[str, Any]]]:
    body = await user.gql(ALLOCATION)
    assert "errors" not in body, body
    portfolio = body["data"]["portfolio"]
    return Decimal(portfolio["equity"]), portfolio["allocation"]


async def test_orders_and_the_portfolio_name_the_agent_and_its_run(
    signup: Any, worker: Worker, paper_broker: PaperMatcher
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    saved = await create(alice, prompt=ALWAYS_BUYS, riskLimits={"allocationPercent": "25"})
    agent_id = saved["agent"]["id"]
    execution = await run_to_end(alice, agent_id)
    assert execution["outcome"] == "ordered", execution
    [agent_order] = execution["orders"]
    placed = await alice.gql(
        PLACE, {"input": {"symbol": "AAPL", "side": "BUY", "type": "MARKET", "quantity": "2"}}
    )
    assert placed["data"]["placeOrder"]["__typename"] == "OrderPlaced", placed
    own_order = placed["data"]["placeOrder"]["order"]

    orders = await orders_of(alice)
    by_agent = orders[agent_order["id"]]
    assert by_agent["agentId"] == agent_id
    assert by_agent["agent"] == {"id": agent_id, "name": "Dip Buyer"}
    assert by_agent["execution"] == {
        "id": execution["id"],
        "outcome": "ordered",
        "agent": {"id": agent_id},
    }
    mine = orders[own_order["id"]]
    assert (mine["agentId"], mine["agent"], mine["execution"]) == (None, None, None)

    # Once the agent's order fills, Alice hears what it bought and at what price.
    filled = await filled_order(alice, agent_order["id"])
    notes = await notes_of(alice)
    bought = f"Agent Dip Buyer bought {Decimal(filled['filledQuantity']).normalize():f} MSFT"
    assert {
        "kind": "agent.filled",
        "title": "Agent Dip Buyer bought MSFT",
        "body": f"{bought} @ ${Decimal(filled['averageFillPrice']):,.2f}.",
    } in notes, notes
    assert not [n for n in notes if "AAPL" in n["title"]], "a person's own fills are not news"
    assert await notes_of(bob) == []

    equity, slices = await allocation_of(alice)
    agent_slice, own_slice = slices
    assert agent_slice["agent"] == {"id": agent_id}
    assert Decimal(agent_slice["percent"]) == 25
    assert Decimal(agent_slice["amount"]) == (equity / 4).quantize(Decimal("0.01"))
    # The agent's $100 buy, filled (cost basis) or still open (reserved), and nothing of
    # the two AAPL shares the person bought.
    assert Decimal(95) < Decimal(agent_slice["used"]) < Decimal(110)
    assert own_slice["agent"] is None
    assert Decimal(own_slice["percent"]) == 75
    assert Decimal(own_slice["amount"]) == (equity * 3 / 4).quantize(Decimal("0.01"))
    assert Decimal(own_slice["used"]) > 2 * Decimal(100)  # two AAPL shares, well above $100

    # Bob's portfolio is all his, and Bob cannot reach Alice's run through any order.
    bob_equity, [bob_slice] = await allocation_of(bob)
    assert bob_slice == {
        "percent": "100",
        "amount": str(bob_equity.quantize(Decimal("0.01"))),
        "used": "0.00",
        "agent": None,
    }
    assert await orders_of(bob) == {}
