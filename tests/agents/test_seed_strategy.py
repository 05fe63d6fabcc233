"""The seed example strategy on the simulated market, end to end: runAgent -> worker job ->
rules model -> risk checks -> paper order -> fill -> notification; then the sell."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from arq.worker import Worker
from starlette.applications import Starlette

from domain.market.indicators import compute_indicators
from domain.market.models import Timeframe
from domain.market.simulated import SimulatedMarket
from domain.trading.paper import PaperMatcher
from tests.agents.conftest import AGENT, create, orders_of, run_to_end
from tests.conftest import SignedIn
from tests.trading.conftest import PORTFOLIO, wait_for_status

NOTIFICATIONS = "{ notifications(first: 20) { edges { node { kind title body readAt } } } }"


async def wait_for_quote(app: Starlette, market: SimulatedMarket, symbol: str) -> Any:
    """The quote the API serves (the feed's, in Redis) once it shows the scripted market."""
    svc = app.state.services
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        expected = market.quote_now(symbol)
        served = await svc.market.quote(symbol)
        assert expected is not None and served is not None
        if abs(served.last - expected.last) / expected.last < Decimal("0.002"):
            return served
        assert asyncio.get_running_loop().time() < deadline, (served, expected)
        await asyncio.sleep(0.05)


async def rsi(market: SimulatedMarket, clock: Callable[[], datetime], symbol: str) -> Decimal:
    now = clock()
    bars = await market.bars(symbol, Timeframe.DAY, now - timedelta(days=400), now, 300)
    value = compute_indicators(bars).rsi14
    assert value is not None
    return value


async def test_the_seed_strategy_buys_the_dip_then_sells_the_rally(
    app: Starlette,
    signup: Any,
    market: SimulatedMarket,
    clock: Callable[[], datetime],
    paper_broker: PaperMatcher,
    worker: Worker,
) -> None:
    user: SignedIn = await signup()
    saved = await create(user)
    assert saved["__typename"] == "AgentSaved", saved
    agent_id = saved["agent"]["id"]
    svc = app.state.services

    async with svc.quote_demand.hold(["AAPL"]):  # the feed streams AAPL for this test
        # Nothing to do on an ordinary day: the agent holds and says why.
        held = await run_to_end(user, agent_id)
        assert held["status"] == "SUCCEEDED", held
        assert held["outcome"] == "held"
        assert held["orders"] == [] and held["decisions"][0]["action"] == "HOLD"
        assert "AAPL: no rule fired" in held["reasoning"]

        # Fifteen sessions of decline and a 4% drop today: RSI14 < 30, down 3%+.
        market.script_trend("AAPL", Decimal("-3"), days=15)
        market.script_move("AAPL", Decimal("-4"), over=timedelta(seconds=1))
        await asyncio.sleep(1.1)
        assert await rsi(market, clock, "AAPL") < 30
        quote = await wait_for_quote(app, market, "AAPL")
        assert quote.change_percent is not None and quote.change_percent <= -3

        bought = await run_to_end(user, agent_id)
        assert bought["status"] == "SUCCEEDED", bought
        assert bought["outcome"] == "ordered"
        assert bought["model"] == "rules-v1" and bought["costUsd"] == "0.000000"
        assert bought["triggerType"] == "MANUAL" and bought["trigger"] is None
        [decision] = bought["decisions"]
        assert (decision["action"], decision["symbol"]) == ("BUY", "AAPL")
        # The strategy's own limit: $5,000, well within the agent's $10,000 allocation.
        assert Decimal(decision["notional"]) == Decimal("5000.00")
        assert "RSI14" in decision["reasoning"] and "max position $5,000" in decision["reasoning"]
        snapshot = bought["context"]["symbols"]["AAPL"]
        assert Decimal(snapshot["indicators"]["rsi14"]) < 30
        assert Decimal(snapshot["change_percent"]) <= -3
        assert Decimal(bought["context"]["cash_available"]) == Decimal("10000")
        [check] = bought["riskCheck"]
        assert check["placed"] is True and check["rule"] is None
        assert {c["rule"] for c in check["checks"]} >= {"agent_allocation", "buying_power"}
        assert all(c["passed"] for c in check["checks"])
        [order] = bought["orders"]
        assert order["agentId"] == agent_id and order["side"] == "BUY"
        assert Decimal(order["notional"]) == Decimal("5000.00")
        filled = await wait_for_status(user, order["id"], "FILLED")
        assert Decimal(filled["filledQuantity"]) * Decimal(filled["averageFillPrice"]) <= 5000

        portfolio = (await user.gql(PORTFOLIO))["data"]["portfolio"]
        [position] = portfolio["positions"]
        assert position["symbol"] == "AAPL"
        assert Decimal(position["quantity"]) == Decimal(filled["filledQuantity"])
        notes = (await user.gql(NOTIFICATIONS))["data"]["notifications"]["edges"]
        [note] = [n["node"] for n in notes if n["node"]["kind"] == "agent.order"]
        assert note["title"] == "Agent Dip Buyer: BUY AAPL"
        assert note["body"].startswith(
            "Agent Dip Buyer placed an order to buy $5,000.00 of AAPL @ $"
        )

        # Fifteen sessions of rally on top: RSI14 > 70, so the agent sells all it holds.
        market.script_trend("AAPL", Decimal("6"), days=15)
        await asyncio.sleep(0.2)
        assert await rsi(market, clock, "AAPL") > 70
        await wait_for_quote(app, market, "AAPL")
        sold = await run_to_end(user, agent_id)
        assert sold["outcome"] == "ordered", sold
        [decision] = sold["decisions"]
        assert decision["action"] == "SELL"
        assert Decimal(decision["quantity"]) == Decimal(filled["filledQuantity"])
        [order] = sold["orders"]
        await wait_for_status(user, order["id"], "FILLED")

    portfolio = (await user.gql(PORTFOLIO))["data"]["portfolio"]
    assert portfolio["positions"] == []
    assert Decimal(portfolio["cash"]) > Decimal("100000")  # bought low, sold high
    agent = (await user.gql(AGENT, {"id": agent_id}))["data"]["agent"]
    stats = agent["stats"]
    assert stats["trades"] == 2 and Decimal(stats["winRate"]) == 100
    assert Decimal(stats["realizedPnl"]) > 0 and Decimal(stats["unrealizedPnl"]) == 0
    assert stats["lastSummary"].startswith("Placed: sell")
    assert agent["allocation"]["used"] == "0.00"
    assert {o["agentId"] for o in await orders_of(user)} == {agent_id}
