"""Agents trading the user's own Alpaca account: set up with a typed refusal when it cannot
be, orders placed at Alpaca through the trading engine, the agent's share measured in that
account, a run failing cleanly when the connection is gone, and nobody else's connection
reachable through an agent."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.agents.conftest import AGENT, create, orders_of, run_to_end
from tests.agents.test_crud import UPDATE
from tests.auth.test_two_factor_and_tokens import code_for, enable_two_factor
from tests.brokers.conftest import (
    DISCONNECT,
    Brokers,
    connect,
    connected,
    portfolio,
    wait_for_status,
)
from tests.conftest import SignedIn

ALWAYS_BUYS = "Buy $100 of MSFT. Max position size: $10,000"
SECRET = "aGeNtS-Zq8RwX3vN5tY7uI9oP1aS2dF4gH6jK8lM0"
ALPACA_CASH = Decimal("40000")  # unlike the paper account's 100,000: where it is measured shows
ACTIVATE = """
mutation($id: ID!, $code: String) {
  activateAgent(id: $id, totpCode: $code) {
    __typename ... on AgentSaved { agent { status } } ... on UserError { code message }
    ... on ValidationError { field }
  }
}
"""
PAUSE = "mutation($id: ID!) { pauseAgent(id: $id) { __typename } }"
ALLOCATION = """query($broker: BrokerKind) { portfolio(broker: $broker) {
  broker equity allocation { percent amount used agent { id } } } }"""
ORDER = "query($id: ID!) { order(id: $id) { id broker agentId clientOrderId status } }"


def _key() -> str:
    return f"PKAGENT{uuid.uuid4().hex[:12].upper()}"


async def _with_alpaca(signup: Any, brokers: Brokers, **account: Any) -> tuple[SignedIn, str]:
    """A user with a connected Alpaca (paper) account, and that account's key id."""
    user: SignedIn = await signup()
    key = _key()
    brokers.fake.add_account(key, SECRET, cash=ALPACA_CASH, **account)
    await connected(brokers, user, key, SECRET)
    return user, key


async def _allocation(user: SignedIn, broker: str) -> tuple[Decimal, list[dict[str, Any]]]:
    body = await user.gql(ALLOCATION, {"broker": broker})
    assert "errors" not in body, body
    shown = body["data"]["portfolio"]
    assert shown["broker"] == broker
    return Decimal(shown["equity"]), shown["allocation"]


async def _agent(user: SignedIn, agent_id: str) -> dict[str, Any]:
    body = await user.gql(AGENT, {"id": agent_id})
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["agent"]
    return found


async def _update(user: SignedIn, agent_id: str, **fields: Any) -> dict[str, Any]:
    body = await user.gql(UPDATE, {"id": agent_id, "input": fields})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["updateAgent"]
    return result


async def _activate(user: SignedIn, agent_id: str, code: str | None = None) -> dict[str, Any]:
    body = await user.gql(ACTIVATE, {"id": agent_id, "code": code})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["activateAgent"]
    return result


async def _pause(user: SignedIn, agent_id: str) -> None:
    body = await user.gql(PAUSE, {"id": agent_id})
    assert body["data"]["pauseAgent"]["__typename"] == "AgentSaved", body


async def _alpaca_agent_then_disconnect(user: SignedIn) -> str:
    """An agent set to trade the user's Alpaca account, whose connection then goes."""
    agent_id: str = (await create(user, prompt=ALWAYS_BUYS, broker="ALPACA"))["agent"]["id"]
    [connection] = (await user.gql("{ brokerConnections { id } }"))["data"]["brokerConnections"]
    assert (await user.gql(DISCONNECT, {"id": connection["id"]}))["data"]["disconnectBroker"]
    return agent_id


async def _user_agents(engine: AsyncEngine, user: SignedIn) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT id, broker, broker_connection_id FROM agents WHERE user_id = :u"),
            {"u": uuid.UUID(user.user_id)},
        )
        return [dict(row) for row in result.mappings()]


async def test_an_alpaca_agent_orders_at_alpaca_and_is_measured_in_that_account(
    signup: Any, brokers: Brokers, worker: Worker
) -> None:
    user, key = await _with_alpaca(signup, brokers)
    saved = await create(
        user, prompt=ALWAYS_BUYS, broker="ALPACA", riskLimits={"allocationPercent": "25"}
    )
    assert saved["__typename"] == "AgentSaved", saved
    agent = saved["agent"]
    assert agent["broker"] == "ALPACA"
    # Its share is a quarter of the Alpaca account, not of the paper one.
    assert Decimal(agent["allocation"]["amount"]) == ALPACA_CASH / 4

    execution = await run_to_end(user, agent["id"])

    assert execution["status"] == "SUCCEEDED" and execution["outcome"] == "ordered", execution
    assert Decimal(execution["context"]["equity"]) == ALPACA_CASH
    [placed] = execution["orders"]
    assert placed["agentId"] == agent["id"]
    assert placed["clientOrderId"].startswith(f"ax-{uuid.UUID(execution['id']).hex}-")
    accepted = await wait_for_status(user, placed["id"], "ACCEPTED")
    assert accepted["broker"] == "ALPACA"
    alpaca = brokers.account(key)
    [sent] = alpaca.submitted
    assert sent["client_order_id"] == placed["clientOrderId"]
    assert sent["symbol"] == "MSFT" and Decimal(str(sent["notional"])) == 100
    [at_alpaca] = alpaca.top_level_orders()
    assert at_alpaca["client_order_id"] == placed["clientOrderId"]
    detail = (await user.gql(ORDER, {"id": placed["id"]}))["data"]["order"]
    assert (detail["broker"], detail["agentId"]) == ("ALPACA", agent["id"])

    # The Alpaca portfolio gives the agent its slice, with its order's reservation in use;
    # the paper portfolio is all the user's.
    equity, [agent_slice, own_slice] = await _allocation(user, "ALPACA")
    assert equity == ALPACA_CASH
    assert agent_slice["agent"] == {"id": agent["id"]}
    assert Decimal(agent_slice["percent"]) == 25
    assert Decimal(agent_slice["amount"]) == ALPACA_CASH / 4
    assert Decimal(95) < Decimal(agent_slice["used"]) < Decimal(110)
    assert own_slice["agent"] is None and Decimal(own_slice["percent"]) == 75
    _, [paper_slice] = await _allocation(user, "PAPER")
    assert paper_slice["agent"] is None and Decimal(paper_slice["percent"]) == 100
    # Agent.allocation agrees with the portfolio's slice.
    shown = await _agent(user, agent["id"])
    assert shown["allocation"] == {**agent_slice, "agent": {"id": agent["id"]}}


async def test_a_paper_agent_still_trades_paper_and_cannot_leave_what_it_holds(
    signup: Any, brokers: Brokers, worker: Worker
) -> None:
    user, key = await _with_alpaca(signup, brokers)
    saved = await create(user, prompt=ALWAYS_BUYS)  # no broker given: existing clients
    agent = saved["agent"]
    assert agent["broker"] == "PAPER"

    execution = await run_to_end(user, agent["id"])

    assert execution["outcome"] == "ordered", execution
    [placed] = execution["orders"]
    detail = (await user.gql(ORDER, {"id": placed["id"]}))["data"]["order"]
    assert (detail["broker"], detail["agentId"]) == ("PAPER", agent["id"])
    assert brokers.account(key).submitted == []
    _, [alpaca_slice] = await _allocation(user, "ALPACA")
    assert alpaca_slice["agent"] is None and Decimal(alpaca_slice["percent"]) == 100

    # Its paper order (or the position it became) would be left unmanaged by a move.
    moved = await _update(user, agent["id"], broker="ALPACA")
    assert moved["__typename"] == "ValidationError", moved
    assert moved["field"] == "broker"
    assert (await _agent(user, agent["id"]))["broker"] == "PAPER"


async def test_alpaca_without_a_connection_is_refused_and_nothing_is_saved(
    signup: Any, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()

    refused = await create(user, broker="ALPACA")

    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "broker" and "connect" in refused["message"]
    assert await _user_agents(owner_engine, user) == []
    paper = await create(user)
    moved = await _update(user, paper["agent"]["id"], broker="ALPACA", name="Renamed")
    assert moved["__typename"] == "ValidationError" and moved["field"] == "broker", moved
    agent = await _agent(user, paper["agent"]["id"])
    assert (agent["broker"], agent["name"]) == ("PAPER", "Dip Buyer")


async def test_each_account_has_its_own_hundred_percent(signup: Any, brokers: Brokers) -> None:
    user, _ = await _with_alpaca(signup, brokers)
    paper = await create(user, name="Paper", riskLimits={"allocationPercent": "80"})
    alpaca = await create(
        user, name="Alpaca", broker="ALPACA", riskLimits={"allocationPercent": "80"}
    )
    assert (paper["__typename"], alpaca["__typename"]) == ("AgentSaved", "AgentSaved")

    over = await create(user, name="More", broker="ALPACA", riskLimits={"allocationPercent": "21"})
    assert over["__typename"] == "ValidationError", over
    assert over["field"] == "riskLimits.allocationPercent" and "20% is free" in over["message"]
    # Moving brings the agent's allocation into the other account's sum.
    moved = await _update(user, paper["agent"]["id"], broker="ALPACA")
    assert moved["__typename"] == "ValidationError", moved
    assert moved["field"] == "riskLimits.allocationPercent"
    fits = await _update(
        user, paper["agent"]["id"], broker="ALPACA", riskLimits={"allocationPercent": "20"}
    )
    assert fits["__typename"] == "AgentSaved", fits
    assert fits["agent"]["broker"] == "ALPACA"
    _, slices = await _allocation(user, "ALPACA")
    assert [Decimal(s["percent"]) for s in slices] == [80, 20, 0]


async def test_a_run_after_a_disconnect_fails_and_places_nothing(
    signup: Any, brokers: Brokers, worker: Worker
) -> None:
    user, key = await _with_alpaca(signup, brokers)
    agent_id = await _alpaca_agent_then_disconnect(user)

    execution = await run_to_end(user, agent_id)

    assert execution["status"] == "FAILED", execution
    assert execution["outcome"] == "broker_unavailable"
    assert "no longer connected" in execution["error"]
    assert execution["orders"] == []
    assert await orders_of(user) == []
    assert brokers.account(key).submitted == []
    notes = await user.gql("{ notifications(first: 5) { edges { node { kind title } } } }")
    [note] = [e["node"] for e in notes["data"]["notifications"]["edges"]]
    assert note["kind"] == "agent.failed"
    # It still shows where it traded, and cannot be switched back on there.
    assert (await _agent(user, agent_id))["broker"] == "ALPACA"
    await _pause(user, agent_id)
    refused = await _activate(user, agent_id)
    assert refused["__typename"] == "ValidationError" and refused["field"] == "broker", refused


async def test_a_new_connection_does_not_inherit_the_agent_until_it_is_set_again(
    signup: Any, brokers: Brokers, worker: Worker
) -> None:
    user, old_key = await _with_alpaca(signup, brokers)
    agent_id = await _alpaca_agent_then_disconnect(user)
    new_key = _key()
    brokers.fake.add_account(new_key, SECRET, cash=Decimal("70000"))
    await connected(brokers, user, new_key, SECRET)

    failed = await run_to_end(user, agent_id)
    assert failed["outcome"] == "broker_unavailable", failed
    assert brokers.account(new_key).submitted == []

    rebound = await _update(user, agent_id, broker="ALPACA")
    assert rebound["__typename"] == "AgentSaved", rebound
    assert Decimal(rebound["agent"]["allocation"]["amount"]) == Decimal("7000")  # 10% of it
    ordered = await run_to_end(user, agent_id)
    assert ordered["outcome"] == "ordered", ordered
    [placed] = ordered["orders"]
    await wait_for_status(user, placed["id"], "ACCEPTED")
    [sent] = brokers.account(new_key).submitted
    assert sent["client_order_id"] == placed["clientOrderId"]
    assert brokers.account(old_key).submitted == []


async def test_a_live_account_needs_a_fresh_two_factor_code(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    secret, recovery = await enable_two_factor(user)
    key = _key()
    brokers.fake.add_account(key, SECRET)
    live = await connect(user, key, SECRET, environment="LIVE", totp_code=code_for(secret))
    assert live["__typename"] == "BrokerConnected", live

    missing = await create(user, broker="ALPACA")
    assert missing["__typename"] == "TwoFactorRequired", missing
    wrong = await create(user, broker="ALPACA", totpCode="000000")
    assert wrong["__typename"] == "TwoFactorRequired", wrong
    assert await _user_agents(owner_engine, user) == []
    async with owner_engine.connect() as connection:
        kinds = set(
            await connection.scalars(
                text("SELECT kind FROM audit_events WHERE user_id = :u"),
                {"u": uuid.UUID(user.user_id)},
            )
        )
    assert "auth.2fa_failed" in kinds and "agent.created" not in kinds

    saved = await create(user, broker="ALPACA", totpCode=recovery[0])
    assert saved["__typename"] == "AgentSaved", saved
    agent_id = saved["agent"]["id"]
    # A new name changes nothing the agent does with money; a new strategy does.
    renamed = await _update(user, agent_id, name="Live Dip Buyer")
    assert renamed["__typename"] == "AgentSaved", renamed
    rewritten = await _update(
        user, agent_id, prompt="Buy MSFT when RSI < 25. Sell MSFT when RSI > 75"
    )
    assert rewritten["__typename"] == "TwoFactorRequired", rewritten
    assert (await _agent(user, agent_id))["symbols"] == ["AAPL"]

    await _pause(user, agent_id)
    refused = await _activate(user, agent_id)
    assert refused["__typename"] == "TwoFactorRequired", refused
    assert (await _agent(user, agent_id))["status"] == "PAUSED"
    activated = await _activate(user, agent_id, recovery[1])
    assert activated["agent"]["status"] == "ACTIVE", activated


async def test_a_live_account_without_two_factor_needs_no_code(
    signup: Any, brokers: Brokers
) -> None:
    user: SignedIn = await signup()
    key = _key()
    brokers.fake.add_account(key, SECRET)
    live = await connect(user, key, SECRET, environment="LIVE")
    assert live["__typename"] == "BrokerConnected", live

    saved = await create(user, broker="ALPACA")

    assert saved["__typename"] == "AgentSaved", saved


async def test_nobody_reaches_another_users_connection_through_an_agent(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    alice, _ = await _with_alpaca(signup, brokers)
    bob: SignedIn = await signup()
    alices = (await create(alice, broker="ALPACA", riskLimits={"allocationPercent": "30"}))["agent"]

    refused = await create(bob, broker="ALPACA")
    assert refused["__typename"] == "ValidationError" and refused["field"] == "broker", refused
    bobs = (await create(bob))["agent"]
    moved = await _update(bob, bobs["id"], broker="ALPACA")
    assert moved["__typename"] == "ValidationError" and moved["field"] == "broker", moved
    assert (await bob.gql(AGENT, {"id": alices["id"]}))["data"]["agent"] is None
    hidden = await bob.gql(UPDATE, {"id": alices["id"], "input": {"broker": "PAPER"}})
    assert hidden["data"]["updateAgent"]["__typename"] == "NotFound"
    assert (await portfolio(bob))["broker"] == "PAPER"
    _, bob_slices = await _allocation(bob, "PAPER")
    assert [s["agent"] for s in bob_slices] == [{"id": bobs["id"]}, None]
    # Alice's Alpaca account shares itself with her agent only.
    _, alice_slices = await _allocation(alice, "ALPACA")
    assert [s["agent"] for s in alice_slices] == [{"id": alices["id"]}, None]

    # Not even a write that bypasses every owner filter can bind Bob's agent to it.
    [alice_row] = await _user_agents(owner_engine, alice)
    with pytest.raises(IntegrityError, match="fk_agents_user_id_broker_connections"):
        async with owner_engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE agents SET broker = 'ALPACA', broker_connection_id = :c WHERE id = :a"
                ),
                {"c": alice_row["broker_connection_id"], "a": uuid.UUID(bobs["id"])},
            )
    [bob_row] = await _user_agents(owner_engine, bob)
    assert (bob_row["broker"], bob_row["broker_connection_id"]) == ("PAPER", None)
