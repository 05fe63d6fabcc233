"""The portfolio query: valuation, its SQL budget, history and performance."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from decimal import Decimal
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from domain.trading.paper import PaperMatcher
from tests.conftest import SignedIn
from tests.trading.conftest import PORTFOLIO, place, wait_for_status

_counting: ContextVar[list[str] | None] = ContextVar("counting", default=None)


@contextlib.contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    """Statements run on behalf of this task only (the paper matcher shares the engine)."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _counting.get() is statements:
            statements.append(statement)

    token = _counting.set(statements)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
        _counting.reset(token)


async def test_portfolio_sql_count_does_not_grow_with_positions(
    app: Starlette, signup: Any, paper_broker: PaperMatcher
) -> None:
    user: SignedIn = await signup()
    engine = app.state.services.db.engine.sync_engine
    await user.gql(PORTFOLIO)  # opens the paper account
    with counting_statements(engine) as empty:
        await user.gql(PORTFOLIO)
    for symbol in ("AAPL", "MSFT", "NVDA", "KO", "JPM"):
        placed = await place(user, symbol=symbol, side="BUY", quantity="1")
        await wait_for_status(user, placed["order"]["id"], "FILLED")
    query = PORTFOLIO.replace("realizedPnl }", "realizedPnl security { name sector } }")
    with counting_statements(engine) as full:
        body = await user.gql(query)
    assert len(body["data"]["portfolio"]["positions"]) == 5
    # set app.user_id, the account, its positions: quotes and security details come from
    # the shared Redis cache, so five positions cost what none do.
    assert len(empty) == len(full) == 3, full


async def test_history_and_performance_after_trades(
    signup: Any, paper_broker: PaperMatcher
) -> None:
    user: SignedIn = await signup()
    buy = await place(user, symbol="MSFT", side="BUY", quantity="2")
    await wait_for_status(user, buy["order"]["id"], "FILLED")
    sell = await place(user, symbol="MSFT", side="SELL", quantity="2")
    await wait_for_status(user, sell["order"]["id"], "FILLED")
    body = await user.gql(
        """{ portfolio { equity history(range: DAY) { timestamp equity }
            performance { totalReturnPercent maxDrawdownPercent winRate trades } } }"""
    )
    portfolio = body["data"]["portfolio"]
    history = portfolio["history"]
    assert len(history) >= 3  # a snapshot per fill, plus now
    assert Decimal(history[-1]["equity"]) == Decimal(portfolio["equity"])
    performance = portfolio["performance"]
    assert performance["trades"] == 1
    assert performance["winRate"] in ("0.0000", "1.0000")
    assert Decimal(performance["maxDrawdownPercent"]) >= 0


async def test_portfolio_is_per_user(signup: Any, paper_broker: PaperMatcher) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    placed = await place(alice, symbol="NVDA", side="BUY", quantity="1")
    await wait_for_status(alice, placed["order"]["id"], "FILLED")
    bobs = (await bob.gql(PORTFOLIO))["data"]["portfolio"]
    assert bobs["positions"] == [] and Decimal(bobs["cash"]) == 100000
    history = (await bob.gql("{ portfolio { history(range: ALL) { equity } } }"))["data"]
    assert [Decimal(p["equity"]) for p in history["portfolio"]["history"]] == [100000]


async def test_me_shows_my_risk_limits(signup: Any) -> None:
    user: SignedIn = await signup()
    await user.gql("mutation { updateRiskLimits(input: {maxDailyTrades: 7}) { __typename } }")
    other: SignedIn = await signup()
    mine = (await user.gql("{ me { riskLimits { maxDailyTrades allowShort } } }"))["data"]
    theirs = (await other.gql("{ me { riskLimits { maxDailyTrades } } }"))["data"]
    assert mine["me"]["riskLimits"] == {"maxDailyTrades": 7, "allowShort": False}
    assert theirs["me"]["riskLimits"] == {"maxDailyTrades": None}
