"""Two users: the second sees nothing of the first's agents, triggers, executions and
notifications -- not found, not forbidden -- over HTTP and over subscriptions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.worker import Worker

from domain.trading.paper import PaperMatcher
from tests.agents.conftest import AGENT, create, executions, run, run_to_end
from tests.conftest import SignedIn
from tests.ws import graphql_ws

ALWAYS_BUYS = "Buy $100 of MSFT. Max position size: $10,000"
NOTIFICATIONS = "{ notifications(first: 20) { edges { node { id kind title } } } }"


async def notes_of(user: SignedIn) -> list[dict[str, Any]]:
    body = await user.gql(NOTIFICATIONS)
    return [e["node"] for e in body["data"]["notifications"]["edges"]]


async def settled_notes(user: SignedIn, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10
    while len(notes := await notes_of(user)) < count:
        assert asyncio.get_running_loop().time() < deadline, notes
        await asyncio.sleep(0.05)
    return notes


async def test_a_second_user_sees_nothing_of_the_first(
    signup: Any, worker: Worker, paper_broker: PaperMatcher
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    saved = await create(alice, prompt=ALWAYS_BUYS, triggers=[{"webhook": True}])
    agent_id = saved["agent"]["id"]
    trigger_id = saved["agent"]["triggers"][0]["id"]
    execution = await run_to_end(alice, agent_id)
    assert execution["outcome"] == "ordered"
    # The order placed, then filled.
    filled, note = await settled_notes(alice, 2)
    assert (filled["kind"], note["kind"]) == ("agent.filled", "agent.order")

    assert (await bob.gql("{ agents { edges { node { id } } } }"))["data"]["agents"]["edges"] == []
    assert (await bob.gql(AGENT, {"id": agent_id}))["data"]["agent"] is None
    assert await notes_of(bob) == []
    for mutation in (
        'updateAgent(id: $id, input: {name: "mine now"})',
        "pauseAgent(id: $id)",
        "activateAgent(id: $id)",
        "addTrigger(agentId: $id, input: {webhook: true})",
    ):
        body = await bob.gql(
            f"mutation($id: ID!) {{ r: {mutation} {{ __typename }} }}", {"id": agent_id}
        )
        assert body["data"]["r"]["__typename"] == "NotFound", (mutation, body)
    assert (await run(bob, agent_id))["__typename"] == "NotFound"
    deleted = await bob.gql("mutation($id: ID!) { deleteAgent(id: $id) }", {"id": agent_id})
    assert deleted["data"]["deleteAgent"] is False
    removed = await bob.gql("mutation($id: ID!) { removeTrigger(id: $id) }", {"id": trigger_id})
    assert removed["data"]["removeTrigger"] is False
    marked = await bob.gql(
        "mutation($ids: [ID!]) { markNotificationsRead(ids: $ids) }", {"ids": [note["id"]]}
    )
    assert marked["data"]["markNotificationsRead"] == 0
    paused = await bob.gql("mutation { pauseAllAgents { pausedAgents } }")
    assert paused["data"]["pauseAllAgents"]["pausedAgents"] == 0

    # Alice's agent, trigger, run and notification are all as they were.
    agent = (await alice.gql(AGENT, {"id": agent_id}))["data"]["agent"]
    assert agent["name"] == "Dip Buyer" and agent["status"] == "ACTIVE"
    assert [t["id"] for t in agent["triggers"]] == [trigger_id]
    assert len(await executions(alice, agent_id)) == 1
    marked = await alice.gql("mutation { markNotificationsRead }")
    assert marked["data"]["markNotificationsRead"] == 2
    unread = await alice.gql("{ notifications(unreadOnly: true) { edges { node { id } } } }")
    assert unread["data"]["notifications"]["edges"] == []


@pytest.mark.parametrize("narrowed", [False, True])
async def test_subscriptions_carry_only_the_subscribers_own_runs(
    signup: Any, live_server: str, worker: Worker, narrowed: bool
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    agent_id = (await create(alice, prompt=ALWAYS_BUYS))["agent"]["id"]
    # Bob naming Alice's agent changes nothing: his channel is derived from him.
    argument = f'(agentId: "{agent_id}")' if narrowed else ""
    runs = f"subscription {{ agentExecutions{argument} {{ id status outcome agent {{ id }} }} }}"
    notes = "subscription { notifications { kind title body } }"
    async with (
        graphql_ws(live_server, token=alice.access_token) as alice_ws,
        graphql_ws(live_server, token=bob.access_token) as bob_ws,
    ):
        for ws in (alice_ws, bob_ws):
            await ws.subscribe(runs)
            await ws.subscribe(notes)
        await asyncio.sleep(0.3)
        queued = await run(alice, agent_id)
        statuses: list[str] = []
        notification = None
        while notification is None or "SUCCEEDED" not in statuses:
            data = await alice_ws.next_data(wait=10)
            if "agentExecutions" in data:
                event = data["agentExecutions"]
                assert event["id"] == queued["execution"]["id"]
                assert event["agent"]["id"] == agent_id
                statuses.append(event["status"])
            else:
                notification = data["notifications"]
        assert statuses == ["RUNNING", "SUCCEEDED"]
        assert notification["kind"] == "agent.order"
        assert notification["title"] == "Agent Dip Buyer: BUY MSFT"

        with pytest.raises(TimeoutError):
            await bob_ws.receive(wait=1.0)


async def test_an_agent_filter_narrows_the_users_own_stream(
    signup: Any, live_server: str, worker: Worker
) -> None:
    alice: SignedIn = await signup()
    first = await create(
        alice, name="first", prompt=ALWAYS_BUYS, riskLimits={"allocationPercent": "5"}
    )
    second = await create(
        alice, name="second", prompt=ALWAYS_BUYS, riskLimits={"allocationPercent": "5"}
    )
    wanted = second["agent"]["id"]
    async with graphql_ws(live_server, token=alice.access_token) as ws:
        await ws.subscribe(
            f'subscription {{ agentExecutions(agentId: "{wanted}") {{ agent {{ id }} status }} }}'
        )
        await asyncio.sleep(0.3)
        await run_to_end(alice, first["agent"]["id"])
        await run(alice, wanted)
        data = await ws.next_data(wait=10)
        assert data["agentExecutions"]["agent"]["id"] == wanted
