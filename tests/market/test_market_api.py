"""Market data through GraphQL: shared, cached, validated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette

from domain.market.models import Timeframe
from tests.conftest import GraphQLClient

SECURITY = """
query($s: String!, $tf: Timeframe!, $from: DateTime, $to: DateTime, $limit: Int) {
  security(symbol: $s) {
    symbol name exchange sector
    quote { symbol bid ask last volume changePercent timestamp }
    bars(timeframe: $tf, from: $from, to: $to, limit: $limit) {
      timestamp open high low close volume
    }
    indicators { rsi14 macd macdSignal sma20 sma50 ema20 averageVolume20 }
    news(first: 3) { edges { cursor node { headline symbols } } pageInfo { hasNextPage endCursor } }
  }
}
"""


async def test_security_has_quote_bars_indicators_and_news(gql: GraphQLClient) -> None:
    body = await gql(SECURITY, {"s": "aapl", "tf": "DAY", "limit": 60})
    assert "errors" not in body, body
    sec = body["data"]["security"]
    assert sec["symbol"] == "AAPL" and sec["name"].startswith("Apple")
    assert sec["sector"]
    assert sec["quote"]["symbol"] == "AAPL"
    bars = sec["bars"]
    assert len(bars) == 60
    assert [b["timestamp"] for b in bars] == sorted(b["timestamp"] for b in bars)
    assert all(isinstance(b["close"], str) for b in bars)  # Decimal, never a float
    assert sec["indicators"]["rsi14"] is not None
    assert sec["indicators"]["sma50"] is not None
    assert all("AAPL" in e["node"]["symbols"] for e in sec["news"]["edges"])


async def test_unknown_symbol_is_null_and_bad_input_is_a_clear_error(gql: GraphQLClient) -> None:
    assert (await gql('{ security(symbol: "ZZZZQ") { symbol } }'))["data"]["security"] is None
    bad = await gql('{ security(symbol: "$$$") { symbol } }')
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "not a ticker symbol" in bad["errors"][0]["message"]


async def test_absurd_date_ranges_are_refused(gql: GraphQLClient) -> None:
    now = datetime.now(UTC)
    cases: list[dict[str, Any]] = [
        {"tf": "MINUTE", "from": (now - timedelta(days=400)).isoformat(), "to": now.isoformat()},
        {"tf": "DAY", "from": now.isoformat(), "to": (now - timedelta(days=3)).isoformat()},
        {"tf": "DAY", "limit": 100000},
    ]
    for case in cases:
        body = await gql(SECURITY, {"s": "MSFT", **case})
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", case


async def test_search_symbols(gql: GraphQLClient) -> None:
    found = (await gql('{ searchSymbols(query: "micro", first: 5) { symbol name } }'))["data"]
    assert "MSFT" in [s["symbol"] for s in found["searchSymbols"]]
    empty = await gql('{ searchSymbols(query: "  ") { symbol } }')
    assert empty["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_news_pages_without_overlap(gql: GraphQLClient) -> None:
    query = """query($after: String) { news(first: 5, after: $after) {
        edges { cursor node { id publishedAt } } pageInfo { hasNextPage endCursor } } }"""
    first = (await gql(query))["data"]["news"]
    assert len(first["edges"]) == 5 and first["pageInfo"]["hasNextPage"] is True
    second = (await gql(query, {"after": first["pageInfo"]["endCursor"]}))["data"]["news"]
    ids = {e["node"]["id"] for e in first["edges"]}
    assert ids.isdisjoint({e["node"]["id"] for e in second["edges"]})
    assert max(e["node"]["publishedAt"] for e in second["edges"]) < min(
        e["node"]["publishedAt"] for e in first["edges"]
    )
    bad = await gql('{ news(after: "not-a-cursor!") { edges { cursor } } }')
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_market_data_is_cached_for_everyone(gql: GraphQLClient, app: Starlette) -> None:
    market = app.state.services.market
    query = '{ security(symbol: "NVDA") { bars(timeframe: DAY, limit: 30) { close } } }'
    before = await market.cache_stats()
    first = await gql(query)
    second = await gql(query)
    after = await market.cache_stats()
    assert first == second
    assert after.get("bars:hit", 0) - before.get("bars:hit", 0) >= 1


async def test_indicators_share_one_cached_range_all_day(app: Starlette) -> None:
    """Agents ask for indicators on every run: the bars behind them must come from the cache,
    not from the provider each time (their start used to be exact to the microsecond)."""
    market = app.state.services.market
    before = await market.cache_stats()
    first = await market.indicators("KO", Timeframe.DAY)
    second = await market.indicators("KO", Timeframe.DAY)
    minute = await market.indicators("KO", Timeframe.MINUTE)  # floored within MAX_RANGE
    after = await market.cache_stats()
    assert first == second
    assert minute.rsi14 is not None
    assert after.get("bars:hit", 0) - before.get("bars:hit", 0) >= 1
