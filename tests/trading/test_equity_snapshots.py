"""The quarter-hour equity snapshots: a held portfolio's history moves with prices between
its fills, and only accounts that hold something are snapshotted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette

from domain.trading.paper import PaperMatcher
from jobs.portfolios import snapshot_due, snapshot_portfolios
from tests.conftest import SignedIn
from tests.trading.conftest import place, wait_for_status

HISTORY = "{ portfolio(broker: PAPER) { equity history(range: DAY) { timestamp equity } } }"


async def history_of(user: SignedIn) -> list[dict[str, Any]]:
    body = await user.gql(HISTORY)
    assert "errors" not in body, body
    points: list[dict[str, Any]] = body["data"]["portfolio"]["history"]
    return points


def test_snapshots_are_due_in_sessions_and_at_the_close_only() -> None:
    wednesday = datetime(2026, 11, 18, tzinfo=UTC)
    assert snapshot_due(wednesday.replace(hour=15))  # 10:00 in New York
    assert snapshot_due(wednesday.replace(hour=21))  # 16:00: the closing point
    assert not snapshot_due(wednesday.replace(hour=21, minute=15))
    assert not snapshot_due(wednesday.replace(hour=14))  # 09:00, before the open
    assert not snapshot_due(datetime(2026, 11, 21, 15, tzinfo=UTC))  # a Saturday
    # The day after Thanksgiving closes at 13:00 in New York (18:00 UTC).
    assert snapshot_due(datetime(2026, 11, 27, 18, tzinfo=UTC))
    assert not snapshot_due(datetime(2026, 11, 27, 18, 15, tzinfo=UTC))


async def test_held_portfolios_get_a_point_and_empty_ones_none(
    app: Starlette, signup: Any, paper_broker: PaperMatcher
) -> None:
    holder: SignedIn = await signup()
    idle: SignedIn = await signup()
    placed = await place(holder, symbol="KO", side="BUY", quantity="3")
    await wait_for_status(holder, placed["order"]["id"], "FILLED")
    before = await history_of(holder)
    idle_before = await history_of(idle)

    taken = await snapshot_portfolios({"services": app.state.services})

    after = await history_of(holder)
    assert taken >= 1  # other tests' users may hold positions too
    # One more stored point; the last point is always "now", so the new one is second last.
    assert len(after) == len(before) + 1, (before, after)
    stamps = [datetime.fromisoformat(p["timestamp"]) for p in (before[-1], after[-2], after[-1])]
    assert stamps == sorted(stamps), ("the new point lies between the two reads", before, after)
    idle_after = await history_of(idle)
    assert len(idle_after) == len(idle_before), (idle_before, idle_after)
