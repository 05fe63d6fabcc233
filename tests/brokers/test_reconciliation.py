"""Reconciliation: the mirror of a broker account corrected from the broker's own view."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.brokers.base import BrokerOrder, TradeEvent, TradeEventKind
from domain.trading.types import OrderSide, OrderStatus
from jobs.brokers import reconcile_brokers
from kianax.settings import Settings
from tests.brokers.conftest import (
    SYNC,
    Brokers,
    connected,
    dec,
    order,
    place,
    portfolio,
    wait_for_status,
)
from tests.conftest import SignedIn

KEY = "PKRECONCILE00000001"
SECRET = "rEcOnCiLe-Zq8RwX3vN5tY7uI9oP1aS2dF4gH6jK8"


async def _audit(engine: AsyncEngine, user: SignedIn, kind: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT payload FROM audit_events WHERE user_id = :u AND kind = :k ORDER BY seq"),
            {"u": uuid.UUID(user.user_id), "k": kind},
        )
        return [row[0] for row in rows]


async def _setup(signup: Any, brokers: Brokers) -> tuple[SignedIn, str]:
    user: SignedIn = await signup()
    brokers.fake.add_account(KEY, SECRET, cash=Decimal("20000"))
    return user, await connected(brokers, user, KEY, SECRET)


async def _sync(user: SignedIn, connection_id: str) -> dict[str, Any]:
    body = await user.gql(SYNC, {"id": connection_id})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["syncBroker"]
    return result


async def test_sync_corrects_positions_and_cash_changed_at_alpaca_and_audits_it(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user, connection_id = await _setup(signup, brokers)
    account = brokers.account(KEY)
    placed = await place(user, symbol="AAPL", side="BUY", quantity="10", broker="ALPACA")
    await wait_for_status(user, placed["order"]["id"], "ACCEPTED")
    broker_id = account.top_level_orders()[0]["id"]
    await brokers.fake.fill(KEY, broker_id, Decimal("10"), Decimal("150"))
    await wait_for_status(user, placed["order"]["id"], "FILLED")

    # Outside Kianax: 15 more shares bought in Alpaca's own app, a deposit, TSLA sold short.
    account.set_position("AAPL", Decimal("25"), Decimal("152"))
    account.set_position("TSLA", Decimal("-2"), Decimal("250"))
    account.cash = Decimal("30000.50")
    result = await _sync(user, connection_id)

    assert result["__typename"] == "BrokerConnection", result
    assert result["status"] == "connected" and result["lastError"] is None
    shown = await portfolio(user, "ALPACA")
    assert dec(shown["cash"]) == Decimal("30000.50")
    held = {p["symbol"]: p for p in shown["positions"]}
    assert dec(held["AAPL"]["quantity"]) == 25 and dec(held["AAPL"]["averageCost"]) == 152
    assert dec(held["TSLA"]["quantity"]) == -2 and dec(held["TSLA"]["averageCost"]) == 250
    [reconciled] = await _audit(owner_engine, user, "broker.reconciled")
    corrections = reconciled["corrections"]
    assert {"symbol": "AAPL", "quantity": {"from": "10.000000000", "to": "25"}} in corrections
    assert {"symbol": "TSLA", "quantity": {"from": "0", "to": "-2"}} in corrections
    assert {"cash": {"from": "18500.0000", "to": "30000.5"}} in corrections
    assert len(await _audit(owner_engine, user, "broker.synced")) == 1

    # Nothing drifted since: nothing to correct, nothing audited as corrected.
    assert (await _sync(user, connection_id))["status"] == "connected"
    assert len(await _audit(owner_engine, user, "broker.reconciled")) == 1


async def test_events_missed_while_no_one_listened_are_recovered_from_alpaca(
    signup: Any, brokers: Brokers
) -> None:
    user, connection_id = await _setup(signup, brokers)
    account = brokers.account(KEY)
    fills = await place(user, symbol="MSFT", side="BUY", quantity="4", broker="ALPACA")
    cancels = await place(
        user,
        symbol="KO",
        side="BUY",
        type="LIMIT",
        limitPrice="40.00",
        quantity="5",
        broker="ALPACA",
    )
    for placed in (fills, cancels):
        await wait_for_status(user, placed["order"]["id"], "ACCEPTED")
    by_client = {o["client_order_id"]: o for o in account.top_level_orders()}
    at_alpaca = by_client[fills["order"]["clientOrderId"]]
    # What Alpaca did while the stream was down: no event reached Kianax.
    at_alpaca.update(status="partially_filled", filled_qty="2", filled_avg_price="301.25")
    account.set_position("MSFT", Decimal("2"), Decimal("301.25"))
    account.cash -= Decimal("602.50")
    by_client[cancels["order"]["clientOrderId"]].update(status="canceled")

    assert (await _sync(user, connection_id))["__typename"] == "BrokerConnection"

    partial = await order(user, fills["order"]["id"])
    assert partial["status"] == "PARTIALLY_FILLED"
    assert [(dec(f["quantity"]), dec(f["price"])) for f in partial["fills"]] == [
        (Decimal(2), Decimal("301.25"))
    ]
    assert (await order(user, cancels["order"]["id"]))["status"] == "CANCELED"
    shown = await portfolio(user, "ALPACA")
    assert [(p["symbol"], dec(p["quantity"])) for p in shown["positions"]] == [("MSFT", Decimal(2))]
    assert dec(shown["cash"]) == Decimal("20000") - Decimal("602.50")

    # The stream's own report of that execution, arriving late: already counted.
    late = TradeEvent(
        kind=TradeEventKind.PARTIAL_FILL,
        order=BrokerOrder(
            broker_order_id=at_alpaca["id"],
            client_order_id=at_alpaca["client_order_id"],
            symbol="MSFT",
            side=OrderSide.BUY,
            status=OrderStatus.PARTIALLY_FILLED,
            quantity=Decimal(4),
            notional=None,
            filled_quantity=Decimal(2),
            average_fill_price=Decimal("301.25"),
            submitted_at=None,
            updated_at=None,
        ),
        at=datetime.now(UTC),
        execution_id="an-execution-reconciliation-already-counted",
        fill_quantity=Decimal(2),
        fill_price=Decimal("301.25"),
    )
    await brokers.service.apply_event(uuid.UUID(user.user_id), uuid.UUID(connection_id), late)
    assert len((await order(user, fills["order"]["id"]))["fills"]) == 1
    # The rest, over the stream as usual.
    await brokers.fake.fill(KEY, at_alpaca["id"], Decimal("2"), Decimal("302"))
    filled = await wait_for_status(user, fills["order"]["id"], "FILLED")
    assert [dec(f["quantity"]) for f in filled["fills"]] == [2, 2]
    [position] = (await portfolio(user, "ALPACA"))["positions"]
    assert dec(position["quantity"]) == 4


async def test_the_cron_reconciles_every_connected_account(
    signup: Any, brokers: Brokers, settings: Settings
) -> None:
    user, _ = await _setup(signup, brokers)
    brokers.account(KEY).set_position("NVDA", Decimal("3"), Decimal("100"))
    assert settings.redis_url
    queue = brokers.service.trading.broker_orders.queue_name  # type: ignore[union-attr]
    pool = await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=queue)
    try:
        ctx = {"services": SimpleNamespace(brokers=brokers.service), "redis": pool}
        assert await reconcile_brokers(ctx) >= 1
    finally:
        await pool.aclose()
    for _ in range(200):
        positions = (await portfolio(user, "ALPACA"))["positions"]
        if positions:
            break
        await asyncio.sleep(0.05)
    assert [(p["symbol"], dec(p["quantity"])) for p in positions] == [("NVDA", Decimal(3))]


async def test_unreachable_alpaca_is_a_typed_sync_result(signup: Any, brokers: Brokers) -> None:
    user, connection_id = await _setup(signup, brokers)
    brokers.fake.stop()

    result = await _sync(user, connection_id)

    assert result["__typename"] == "BrokerUnavailable" and result["code"] == "BROKER_UNAVAILABLE"
    listed = (await user.gql("{ brokerConnections { status lastError } }"))["data"]
    [connection] = listed["brokerConnections"]
    assert connection["status"] == "connected"  # the keys are fine; Alpaca is away
    assert "could not be reached" in connection["lastError"]


async def test_revoked_keys_put_the_connection_in_error_and_a_sync_heals_it(
    signup: Any, brokers: Brokers
) -> None:
    user, connection_id = await _setup(signup, brokers)
    account = brokers.account(KEY)
    account.secret = "revoked-at-alpaca"
    await brokers.fake.drop_connections()  # the stream reconnects, and is refused

    await brokers.fake.wait_for(lambda: brokers.fake.listeners(KEY) == 0)
    for _ in range(200):
        [connection] = (await user.gql("{ brokerConnections { status lastError } }"))["data"][
            "brokerConnections"
        ]
        if connection["status"] == "error":
            break
        await asyncio.sleep(0.05)
    assert connection["status"] == "error" and "refused" in connection["lastError"]
    refused = await place(user, symbol="AAPL", side="BUY", quantity="1", broker="ALPACA")
    assert refused["__typename"] == "ValidationError"
    assert (await _sync(user, connection_id))["status"] == "error"

    account.secret = SECRET  # the keys work again (say, re-enabled at Alpaca)
    healed = await _sync(user, connection_id)
    assert healed["status"] == "connected" and healed["lastError"] is None
    await brokers.fake.wait_for(lambda: brokers.fake.listeners(KEY) == 1)
