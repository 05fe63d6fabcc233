"""Agents through GraphQL: saving with validation, quotas, allocation, status, triggers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.agents import service
from tests.agents.conftest import AGENT, AGENT_FIELDS, CREATE, create, rules_agent, run
from tests.conftest import GraphQLClient, SignedIn

UPDATE = f"""
mutation($id: ID!, $input: UpdateAgentInput!) {{
  updateAgent(id: $id, input: $input) {{
    __typename
    ... on AgentSaved {{ agent {{ {AGENT_FIELDS} }} }}
    ... on UserError {{ code message }}
    ... on ValidationError {{ field }}
  }}
}}
"""
ADD_TRIGGER = f"""
mutation($id: ID!, $input: TriggerInput!) {{
  addTrigger(agentId: $id, input: $input) {{
    __typename
    ... on AgentSaved {{ agent {{ {AGENT_FIELDS} }} webhookSecrets {{ triggerId url secret }} }}
    ... on UserError {{ code message }}
    ... on ValidationError {{ field }}
  }}
}}
"""
STATUS = """
mutation($id: ID!) {
  pause: pauseAgent(id: $id) { __typename ... on AgentSaved { agent { status } } }
}
"""
AGENTS = "{ agents(first: 50) { edges { node { id name status } } } }"


async def agents_of(user: SignedIn) -> list[dict[str, Any]]:
    body = await user.gql(AGENTS)
    return [e["node"] for e in body["data"]["agents"]["edges"]]


async def test_the_seed_strategy_saves_with_what_it_learned(signup: Any) -> None:
    user: SignedIn = await signup()
    saved = await create(user, description="Buys the dip")
    assert saved["__typename"] == "AgentSaved", saved
    agent = saved["agent"]
    assert agent["status"] == "ACTIVE" and agent["kind"] == "PROMPT"
    assert agent["symbols"] == ["AAPL"]
    assert agent["llm"] == {"provider": "RULES", "model": "rules-v1", "temperature": "0.20"}
    assert agent["riskLimits"] == {
        "maxPositionValue": "6000.0000",
        "maxDailyTrades": None,
        "allocationPercent": "10.0000",
    }
    # 10% of the fresh paper portfolio's $100,000, none of it used yet.
    assert agent["allocation"] == {
        "percent": "10.0000",
        "amount": "10000.00",
        "used": "0.00",
        "agent": {"id": agent["id"]},
    }
    assert agent["stats"] == {
        "trades": 0,
        "winRate": None,
        "realizedPnl": "0",
        "unrealizedPnl": "0.00",
        "lastRunAt": None,
        "lastSummary": None,
    }
    assert await agents_of(user) == [{"id": agent["id"], "name": "Dip Buyer", "status": "ACTIVE"}]


async def test_an_unparseable_strategy_is_refused_quoting_the_phrase(signup: Any) -> None:
    user: SignedIn = await signup()
    refused = await create(user, prompt="Buy AAPL when the moon is full")
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "prompt"
    assert '"the moon is full"' in refused["message"]
    assert await agents_of(user) == []


async def test_llm_prompts_must_name_known_symbols_and_a_configured_provider(
    signup: Any,
) -> None:
    user: SignedIn = await signup()
    # No key for OpenAI on this server.
    missing = await create(user, llm={"provider": "OPENAI"}, prompt="Trade $MSFT on momentum")
    assert missing["__typename"] == "ValidationError", missing
    assert missing["field"] == "llm.provider"
    assert "OpenAI is not configured" in missing["message"]
    # The rules model only answers to its own name.
    wrong_model = await create(user, llm={"provider": "RULES", "model": "gpt-4o"})
    assert wrong_model["field"] == "llm.model"
    too_hot = await create(user, llm={"provider": "RULES", "temperature": "2.5"})
    assert too_hot["field"] == "llm.temperature"
    unknown = await create(user, prompt="Buy ZZZZ when RSI < 30")
    assert unknown["__typename"] == "ValidationError"
    assert "ZZZZ" in unknown["message"]
    assert await agents_of(user) == []


async def test_allocations_never_add_up_to_more_than_the_portfolio(signup: Any) -> None:
    user: SignedIn = await signup()
    for bad in ("-1", "100.5", "12.00001", "NaN"):
        refused = await create(user, riskLimits={"allocationPercent": bad})
        assert refused["field"] == "riskLimits.allocationPercent", (bad, refused)
    first = await create(user, name="A", riskLimits={"allocationPercent": "60"})
    assert first["__typename"] == "AgentSaved"
    over = await create(user, name="B", riskLimits={"allocationPercent": "40.0001"})
    assert over["__typename"] == "ValidationError", over
    assert over["field"] == "riskLimits.allocationPercent"
    assert "40% is free" in over["message"]
    second = await create(user, name="B", riskLimits={"allocationPercent": "40"})
    assert second["__typename"] == "AgentSaved", second

    grow = await user.gql(
        UPDATE, {"id": first["agent"]["id"], "input": {"riskLimits": {"allocationPercent": "61"}}}
    )
    assert grow["data"]["updateAgent"]["__typename"] == "ValidationError"
    agent = (await user.gql(AGENT, {"id": first["agent"]["id"]}))["data"]["agent"]
    assert agent["riskLimits"]["allocationPercent"] == "60.0000"  # unchanged
    # Room freed by a deleted agent can be used again.
    deleted = await user.gql(
        "mutation($id: ID!) { deleteAgent(id: $id) }", {"id": second["agent"]["id"]}
    )
    assert deleted["data"]["deleteAgent"] is True
    grow = await user.gql(
        UPDATE, {"id": first["agent"]["id"], "input": {"riskLimits": {"allocationPercent": "100"}}}
    )
    assert grow["data"]["updateAgent"]["__typename"] == "AgentSaved", grow


async def test_quotas_of_agents_and_triggers(signup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "MAX_AGENTS", 2)
    monkeypatch.setattr(service, "MAX_TRIGGERS", 2)
    user: SignedIn = await signup()
    hourly = {"time": {"cron": "0 * * * *"}}
    one = await create(user, name="one", riskLimits={"allocationPercent": "1"}, triggers=[hourly])
    two = await create(user, name="two", riskLimits={"allocationPercent": "1"})
    three = await create(user, name="three", riskLimits={"allocationPercent": "1"})
    assert (one["__typename"], two["__typename"]) == ("AgentSaved", "AgentSaved")
    assert three["__typename"] == "ValidationError"
    assert three["code"] == "QUOTA_EXCEEDED"

    added = await user.gql(ADD_TRIGGER, {"id": two["agent"]["id"], "input": hourly})
    assert added["data"]["addTrigger"]["__typename"] == "AgentSaved"
    refused = await user.gql(ADD_TRIGGER, {"id": two["agent"]["id"], "input": hourly})
    assert refused["data"]["addTrigger"]["code"] == "QUOTA_EXCEEDED"
    agent = (await user.gql(AGENT, {"id": two["agent"]["id"]}))["data"]["agent"]
    assert len(agent["triggers"]) == 1


async def test_names_are_unique_per_user(signup: Any) -> None:
    user: SignedIn = await signup()
    other: SignedIn = await signup()
    assert (await create(user, riskLimits={"allocationPercent": "1"}))["__typename"] == "AgentSaved"
    again = await create(user, name="  dip   BUYER ", riskLimits={"allocationPercent": "1"})
    assert again["__typename"] == "ValidationError" and again["field"] == "name"
    # Another user's agent of the same name is theirs alone.
    assert (await create(other))["__typename"] == "AgentSaved"


async def test_update_pause_activate_and_run_refused_while_paused(signup: Any) -> None:
    user: SignedIn = await signup()
    agent_id = (await create(user))["agent"]["id"]
    updated = await user.gql(
        UPDATE,
        {
            "id": agent_id,
            "input": {
                "name": "Dip Buyer 2",
                "prompt": "Buy MSFT when RSI < 25. Sell MSFT when RSI > 75",
                "riskLimits": {"allocationPercent": "5", "maxDailyTrades": 3},
            },
        },
    )
    agent = updated["data"]["updateAgent"]["agent"]
    assert agent["name"] == "Dip Buyer 2" and agent["symbols"] == ["MSFT"]
    assert agent["riskLimits"] == {
        "maxPositionValue": None,
        "maxDailyTrades": 3,
        "allocationPercent": "5.0000",
    }
    bad = await user.gql(UPDATE, {"id": agent_id, "input": {"prompt": "Sell when RSI > 70"}})
    assert bad["data"]["updateAgent"]["__typename"] == "ValidationError"
    assert (await user.gql(AGENT, {"id": agent_id}))["data"]["agent"]["symbols"] == ["MSFT"]

    paused = await user.gql(STATUS, {"id": agent_id})
    assert paused["data"]["pause"]["agent"]["status"] == "PAUSED"
    refused = await run(user, agent_id)
    assert refused["__typename"] == "ValidationError" and "paused" in refused["message"]
    activated = await user.gql(
        "mutation($id: ID!) { activateAgent(id: $id) { ... on AgentSaved { agent { status } } } }",
        {"id": agent_id},
    )
    assert activated["data"]["activateAgent"]["agent"]["status"] == "ACTIVE"

    paused_all = await user.gql("mutation { pauseAllAgents { pausedAgents } }")
    assert paused_all["data"]["pauseAllAgents"]["pausedAgents"] == 1
    assert (await agents_of(user))[0]["status"] == "PAUSED"
    again = await user.gql("mutation { pauseAllAgents { pausedAgents } }")
    assert again["data"]["pauseAllAgents"]["pausedAgents"] == 0


async def test_unknown_ids_are_not_found(signup: Any) -> None:
    user: SignedIn = await signup()
    for raw in (str(uuid.uuid4()), "not-an-id"):
        updated = await user.gql(UPDATE, {"id": raw, "input": {"name": "x"}})
        assert updated["data"]["updateAgent"]["__typename"] == "NotFound"
        assert (await run(user, raw))["__typename"] == "NotFound"
        deleted = await user.gql("mutation($id: ID!) { deleteAgent(id: $id) }", {"id": raw})
        assert deleted["data"]["deleteAgent"] is False
        assert (await user.gql(AGENT, {"id": raw}))["data"]["agent"] is None


async def test_triggers_of_every_kind_describe_themselves(signup: Any) -> None:
    user: SignedIn = await signup()
    saved = await create(
        user,
        triggers=[
            {"time": {"cron": "30 9 * * 1-5", "timezone": "America/New_York"}},
            {"price": {"symbol": "aapl", "changePercent": "-3", "windowMinutes": 60}},
            {"volume": {"symbol": "AAPL", "multipleOfAverage": "2.5", "cooldownSeconds": 60}},
            {"indicator": {"symbol": "AAPL", "indicator": "rsi14", "condition": "< 30"}},
            {"webhook": True},
        ],
    )
    assert saved["__typename"] == "AgentSaved", saved
    triggers = saved["agent"]["triggers"]
    assert [(t["type"], t["description"], t["cooldownSeconds"]) for t in triggers] == [
        ("TIME", "Every weekday at 09:30 America/New_York", 0),
        ("PRICE", "When AAPL drops 3% within 1 hour", 900),
        ("VOLUME", "When AAPL volume exceeds 2.5x its 20-day average", 60),
        ("INDICATOR", "When AAPL RSI14 < 30", 900),
        ("WEBHOOK", "When the webhook is called", 0),
    ]
    assert triggers[1]["config"]["symbol"] == "AAPL"
    webhook = triggers[4]
    assert [t["webhookUrl"] for t in triggers[:4]] == [None] * 4
    assert webhook["webhookUrl"].endswith(f"/hooks/{webhook['id']}")
    [secret] = saved["webhookSecrets"]
    assert secret["triggerId"] == webhook["id"] and secret["url"] == webhook["webhookUrl"]
    assert secret["secret"].startswith("whsec_") and len(secret["secret"]) > 40
    # The secret is never shown again.
    again = await user.gql(AGENT, {"id": saved["agent"]["id"]})
    assert secret["secret"] not in str(again)

    removed = await user.gql("mutation($id: ID!) { removeTrigger(id: $id) }", {"id": webhook["id"]})
    assert removed["data"]["removeTrigger"] is True
    removed = await user.gql("mutation($id: ID!) { removeTrigger(id: $id) }", {"id": webhook["id"]})
    assert removed["data"]["removeTrigger"] is False
    agent = (await user.gql(AGENT, {"id": saved["agent"]["id"]}))["data"]["agent"]
    assert len(agent["triggers"]) == 4


@pytest.mark.parametrize(
    ("trigger", "field"),
    [
        ({"time": {"cron": "every day"}}, "cron"),
        ({"time": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"}}, "timezone"),
        ({"price": {"symbol": "AAPL"}}, "changePercent"),
        ({"price": {"symbol": "ZZZZ", "above": "10"}}, "symbol"),
        ({"indicator": {"symbol": "AAPL", "indicator": "RSI14", "condition": "~ 30"}}, "condition"),
        ({"volume": {"symbol": "AAPL", "multipleOfAverage": "0.5"}}, "multipleOfAverage"),
        ({"news": {"keywords": ["earnings"]}}, "news"),
        ({"webhook": False}, "webhook"),
        ({"time": {"cron": "0 9 * * *", "cooldownSeconds": -1}}, "cooldownSeconds"),
    ],
)
async def test_a_bad_trigger_is_refused_and_changes_nothing(
    signup: Any, trigger: dict[str, Any], field: str
) -> None:
    user: SignedIn = await signup()
    refused = await create(user, triggers=[{"time": {"cron": "0 10 * * *"}}, trigger])
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == f"triggers[1].{field}"
    assert await agents_of(user) == []


async def test_finished_executions_are_immutable_in_the_database(
    signup: Any, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    agent_id = (await create(user, llm={"provider": "RULES"}))["agent"]["id"]
    execution_id = uuid.uuid4()
    async with owner_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO agent_executions (id, user_id, agent_id, trigger_type, event_key,"
                " status, started_at) VALUES (:id, :user, :agent, 'MANUAL', 'k', 'RUNNING', now())"
            ),
            {"id": execution_id, "user": user.user_id, "agent": agent_id},
        )
        # While it runs it is filled in.
        await connection.execute(
            text(
                "UPDATE agent_executions SET status = 'SUCCEEDED', finished_at = now(),"
                " outcome = 'held' WHERE id = :id"
            ),
            {"id": execution_id},
        )
    for statement in (
        "UPDATE agent_executions SET outcome = 'ordered' WHERE id = :id",
        "DELETE FROM agent_executions WHERE id = :id",
    ):
        # Even the owner of the table (no row-level security in the way) cannot.
        with pytest.raises(DBAPIError, match="agent execution"):
            async with owner_engine.begin() as connection:
                await connection.execute(text(statement), {"id": execution_id})
    async with owner_engine.connect() as connection:
        outcome = await connection.scalar(
            text("SELECT outcome FROM agent_executions WHERE id = :id"), {"id": execution_id}
        )
    assert outcome == "held"


async def test_liquidate_all_pauses_the_agents_first(signup: Any) -> None:
    user: SignedIn = await signup()
    agent_id = (await create(user))["agent"]["id"]
    body = await user.gql(
        "mutation { liquidateAll { ... on EmergencyResult { pausedAgents closedPositions } } }"
    )
    assert body["data"]["liquidateAll"] == {"pausedAgents": 1, "closedPositions": 0}
    agent = (await user.gql(AGENT, {"id": agent_id}))["data"]["agent"]
    assert agent["status"] == "PAUSED"


async def test_agent_changes_need_the_agents_scope(signup: Any, gql: GraphQLClient) -> None:
    user: SignedIn = await signup()
    tokens = {}
    for scope in ("READ", "AGENTS"):
        created = await user.gql(
            'mutation($s: [ApiScope!]!) { createApiToken(name: "bot", scopes: $s) {'
            " ... on ApiTokenCreated { token } } }",
            {"s": [scope]},
        )
        tokens[scope] = created["data"]["createApiToken"]["token"]
    variables = {"input": rules_agent()}
    denied = await gql(CREATE, variables, token=tokens["READ"])
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    allowed = await gql(CREATE, variables, token=tokens["AGENTS"])
    assert allowed["data"]["createAgent"]["__typename"] == "AgentSaved"
    listed = await gql("{ agents { edges { node { name } } } }", token=tokens["READ"])
    assert listed["data"]["agents"]["edges"] == [{"node": {"name": "Dip Buyer"}}]
