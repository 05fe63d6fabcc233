from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette

from domain.market.feed import Feed
from domain.market.simulated import SimulatedMarket
from domain.trading.paper import PaperMatcher


@pytest.fixture(scope="session")
async def paper_broker(app: Starlette, market: SimulatedMarket) -> AsyncIterator[PaperMatcher]:
    """What `kianax run` runs beside the API: the market feed and the worker's matcher."""
    svc = app.state.services
    feed = Feed(market, svc.redis, svc.broadcast, poll_interval=0.05)
    matcher = PaperMatcher(
        svc.db, svc.trading, svc.broadcast, svc.quote_demand, refresh_interval=0.5
    )
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(matcher.run())]
    await asyncio.sleep(0.3)
    yield matcher
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


PLACE = """
mutation($input: PlaceOrderInput!) {
  placeOrder(input: $input) {
    __typename
    ... on OrderPlaced { order { id status symbol side quantity notional clientOrderId } }
    ... on UserError { code message }
    ... on ValidationError { field }
    ... on RiskLimitExceeded { rule }
    ... on InsufficientBuyingPower { required available }
    ... on MarketClosed { nextOpen }
  }
}
"""
ORDER = """query($id: ID!) { order(id: $id) {
  id status filledQuantity averageFillPrice fills { id quantity price } } }"""
PORTFOLIO = """{ portfolio {
  cash equity buyingPower reserved marketValue totalPnl broker
  positions { symbol quantity averageCost marketPrice marketValue unrealizedPnl realizedPnl }
} }"""


async def place(user: Any, **fields: Any) -> dict[str, Any]:
    body = await user.gql(PLACE, {"input": fields})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["placeOrder"]
    return result


async def wait_for_status(
    user: Any, order_id: str, status: str, within: float = 5
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        order: dict[str, Any] = (await user.gql(ORDER, {"id": order_id}))["data"]["order"]
        if order["status"] == status or asyncio.get_running_loop().time() > deadline:
            assert order["status"] == status, order
            return order
        await asyncio.sleep(0.05)
