"""Orders through a user's own Alpaca account: submission, trade events, errors, routing."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from domain.brokers.alpaca import _trade_event
from domain.brokers.service import alpaca_factory
from tests.brokers.conftest import (
    Brokers,
    broker_order_id,
    connected,
    dec,
    order,
    place,
    portfolio,
    wait_for_status,
)
from tests.conftest import SignedIn
from tests.ws import graphql_ws

KEY = "PKORDERS00000000001"
SECRET = "oRdErS-Zq8RwX3vN5tY7uI9oP1aS2dF4gH6jK8lM0"
OTHER_KEY = "PKORDERS00000000002"
OTHER_SECRET = "oThEr-Lk2Jh4Gf6Ds8Aq0Wz1Xc3Vb5Nm7Qw9Er1Ty"
CANCEL = """mutation($id: ID!) { cancelOrder(id: $id) {
  __typename ... on OrderCanceled { order { status } } ... on UserError { code } } }"""


async def _user(signup: Any, brokers: Brokers, key: str = KEY, secret: str = SECRET) -> SignedIn:
    user: SignedIn = await signup()
    brokers.fake.add_account(key, secret)
    await connected(brokers, user, key, secret)
    return user


async def _accepted(user: SignedIn, **fields: Any) -> dict[str, Any]:
    placed = await place(user, broker="ALPACA", **fields)
    assert placed["__typename"] == "OrderPlaced", placed
    # Kianax has the order; the worker has not sent it yet.
    assert placed["order"]["status"] == "NEW" and placed["order"]["broker"] == "ALPACA"
    return await wait_for_status(user, placed["order"]["id"], "ACCEPTED")


async def test_an_alpaca_order_reaches_the_account_and_a_paper_order_does_not(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user = await _user(signup, brokers)
    account = brokers.account(KEY)

    accepted = await _accepted(user, symbol="AAPL", side="BUY", quantity="2")
    # The buy's cost is reserved in the Alpaca account's buying power, not paper's.
    assert dec((await portfolio(user, "ALPACA"))["reserved"]) > 0
    assert dec((await portfolio(user, "PAPER"))["reserved"]) == 0
    paper = await place(user, symbol="KO", side="BUY", quantity="3")
    assert paper["order"]["status"] == "ACCEPTED" and paper["order"]["broker"] == "PAPER"

    [sent] = account.submitted
    assert sent["symbol"] == "AAPL" and sent["qty"] == 2 and sent["side"] == "buy"
    [at_alpaca] = account.top_level_orders()
    assert at_alpaca["client_order_id"] == accepted["clientOrderId"]
    assert await broker_order_id(owner_engine, accepted["id"]) == at_alpaca["id"]


async def test_a_rejected_order_is_rejected_with_the_reason_and_releases_its_reservation(
    signup: Any, brokers: Brokers
) -> None:
    user = await _user(signup, brokers)
    brokers.account(KEY).reject_next("insufficient buying power", status=403)

    placed = await place(user, symbol="AAPL", side="BUY", quantity="2", broker="ALPACA")
    rejected = await wait_for_status(user, placed["order"]["id"], "REJECTED")

    assert "insufficient buying power" in rejected["rejectReason"]
    assert dec((await portfolio(user, "ALPACA"))["reserved"]) == 0
    assert brokers.account(KEY).top_level_orders() == []


async def test_a_submit_that_times_out_after_alpaca_accepted_leaves_exactly_one_order(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user = await _user(signup, brokers)
    account = brokers.account(KEY)
    account.delay_next_submit(2.5)  # placed at once, answered after the client gave up

    placed = await place(user, symbol="MSFT", side="BUY", quantity="1", broker="ALPACA")
    accepted = await wait_for_status(user, placed["order"]["id"], "ACCEPTED")

    [only] = account.top_level_orders()
    assert len(account.submitted) == 1  # found by client_order_id, not sent again
    assert only["client_order_id"] == placed["order"]["clientOrderId"]
    assert await broker_order_id(owner_engine, accepted["id"]) == only["id"]


async def test_an_unreachable_alpaca_is_retried_then_the_order_goes_through(
    signup: Any, brokers: Brokers
) -> None:
    user = await _user(signup, brokers)
    account = brokers.account(KEY)
    for _ in range(3):  # the adapter's two tries, then the job's first
        account.reject_next("service unavailable", status=503)

    placed = await place(user, symbol="MSFT", side="BUY", quantity="1", broker="ALPACA")
    await wait_for_status(user, placed["order"]["id"], "ACCEPTED")

    assert len(account.submitted) == 4
    assert len(account.top_level_orders()) == 1


async def test_an_order_alpaca_never_got_is_rejected_after_the_last_try(
    signup: Any, brokers: Brokers
) -> None:
    user = await _user(signup, brokers)
    brokers.service.factory = alpaca_factory("http://127.0.0.1:9")  # nothing listens there

    placed = await place(user, symbol="MSFT", side="BUY", quantity="1", broker="ALPACA")
    rejected = await wait_for_status(user, placed["order"]["id"], "REJECTED")

    assert "could not be reached" in rejected["rejectReason"]
    assert dec((await portfolio(user, "ALPACA"))["reserved"]) == 0
    assert brokers.account(KEY).submitted == []


async def test_partial_fill_then_fill_over_the_stream(
    signup: Any, brokers: Brokers, live_server: str
) -> None:
    user = await _user(signup, brokers)
    before = await portfolio(user, "ALPACA")
    async with graphql_ws(live_server, token=user.access_token) as ws:
        await ws.subscribe("subscription { orderEvents { id status filledQuantity broker } }")
        await asyncio.sleep(0.2)
        accepted = await _accepted(user, symbol="AAPL", side="BUY", quantity="10")
        broker_id = brokers.account(KEY).top_level_orders()[0]["id"]

        await brokers.fake.fill(KEY, broker_id, Decimal("4"), Decimal("100"))
        partial = await wait_for_status(user, accepted["id"], "PARTIALLY_FILLED")
        assert dec(partial["filledQuantity"]) == 4
        await brokers.fake.fill(KEY, broker_id, Decimal("6"), Decimal("101"))
        filled = await wait_for_status(user, accepted["id"], "FILLED")

        seen: list[str] = []
        while not seen or seen[-1] != "FILLED":
            event = (await ws.next_data())["orderEvents"]
            assert event["id"] == accepted["id"] and event["broker"] == "ALPACA"
            seen.append(event["status"])
    assert seen == ["NEW", "ACCEPTED", "PARTIALLY_FILLED", "FILLED"]
    assert [(dec(f["quantity"]), dec(f["price"])) for f in filled["fills"]] == [
        (Decimal(4), Decimal(100)),
        (Decimal(6), Decimal(101)),
    ]
    assert dec(filled["averageFillPrice"]) == Decimal("100.6")
    after = await portfolio(user, "ALPACA")
    [position] = after["positions"]
    assert position["symbol"] == "AAPL" and dec(position["quantity"]) == 10
    assert dec(after["cash"]) == dec(before["cash"]) - 4 * 100 - 6 * 101
    assert dec(after["reserved"]) == 0


async def test_a_replayed_fill_is_recorded_once(signup: Any, brokers: Brokers) -> None:
    user: SignedIn = await signup()
    brokers.fake.add_account(KEY, SECRET)
    connection_id = await connected(brokers, user, KEY, SECRET)
    accepted = await _accepted(user, symbol="AAPL", side="BUY", quantity="3")
    broker_id = brokers.account(KEY).top_level_orders()[0]["id"]
    data = await brokers.fake.fill(KEY, broker_id, Decimal("1"), Decimal("100"))
    await wait_for_status(user, accepted["id"], "PARTIALLY_FILLED")

    # The same execution delivered again, as after a reconnect.
    event = _trade_event(json.dumps({"stream": "trade_updates", "data": data}))
    assert event is not None and event.execution_id == data["execution_id"]
    await brokers.service.apply_event(uuid.UUID(user.user_id), uuid.UUID(connection_id), event)

    replayed = await order(user, accepted["id"])
    assert replayed["status"] == "PARTIALLY_FILLED" and len(replayed["fills"]) == 1
    [position] = (await portfolio(user, "ALPACA"))["positions"]
    assert dec(position["quantity"]) == 1


async def test_a_dropped_stream_reconnects_and_later_events_apply(
    signup: Any, brokers: Brokers
) -> None:
    user = await _user(signup, brokers)
    accepted = await _accepted(user, symbol="MSFT", side="BUY", quantity="5")
    broker_id = brokers.account(KEY).top_level_orders()[0]["id"]
    connections = brokers.fake.connection_count

    await brokers.fake.drop_connections()
    await brokers.fake.wait_for(
        lambda: brokers.fake.connection_count > connections and brokers.fake.listeners(KEY) == 1
    )
    await brokers.fake.fill(KEY, broker_id, Decimal("5"), Decimal("300"))

    filled = await wait_for_status(user, accepted["id"], "FILLED")
    assert dec(filled["filledQuantity"]) == 5


async def test_canceling_an_alpaca_order_asks_alpaca_and_closes_when_it_confirms(
    signup: Any, brokers: Brokers
) -> None:
    user = await _user(signup, brokers)
    accepted = await _accepted(
        user, symbol="KO", side="BUY", type="LIMIT", limitPrice="50.00", quantity="10"
    )
    assert dec((await portfolio(user, "ALPACA"))["reserved"]) == 500

    requested = (await user.gql(CANCEL, {"id": accepted["id"]}))["data"]["cancelOrder"]
    # Alpaca decides: until it confirms, the order may still fill.
    assert requested == {"__typename": "OrderCanceled", "order": {"status": "ACCEPTED"}}
    canceled = await wait_for_status(user, accepted["id"], "CANCELED")
    assert brokers.account(KEY).top_level_orders()[0]["status"] == "canceled"
    assert canceled["rejectReason"] == "canceled at Alpaca"
    assert dec((await portfolio(user, "ALPACA"))["reserved"]) == 0


async def test_two_users_orders_arrive_only_at_their_own_accounts(
    signup: Any, brokers: Brokers
) -> None:
    alice = await _user(signup, brokers, KEY, SECRET)
    bob = await _user(signup, brokers, OTHER_KEY, OTHER_SECRET)

    mine = await _accepted(alice, symbol="AAPL", side="BUY", quantity="1")
    theirs = await _accepted(bob, symbol="NVDA", side="BUY", quantity="2")

    [at_alice] = brokers.account(KEY).top_level_orders()
    [at_bob] = brokers.account(OTHER_KEY).top_level_orders()
    assert at_alice["symbol"] == "AAPL" and at_bob["symbol"] == "NVDA"
    # Each stream moves only its own user's order.
    await brokers.fake.fill(OTHER_KEY, at_bob["id"], Decimal("2"), Decimal("120"))
    await wait_for_status(bob, theirs["id"], "FILLED")
    assert (await order(alice, mine["id"]))["status"] == "ACCEPTED"
    assert await order(alice, theirs["id"]) is None
    assert (await portfolio(alice, "ALPACA"))["positions"] == []


async def test_placing_on_alpaca_without_a_connection_is_a_validation_error(
    signup: Any, brokers: Brokers
) -> None:
    user: SignedIn = await signup()
    refused = await place(user, symbol="AAPL", side="BUY", quantity="1", broker="ALPACA")
    assert refused["__typename"] == "ValidationError" and refused["field"] == "broker"
    body = await user.gql("{ portfolio(broker: ALPACA) { cash } }")
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await user.gql("{ orders { edges { node { id } } } }"))["data"]["orders"]["edges"] == []


async def test_liquidate_all_cancels_and_closes_at_alpaca_too(
    signup: Any, brokers: Brokers
) -> None:
    user: SignedIn = await signup()
    account = brokers.fake.add_account(KEY, SECRET)
    account.set_position("AAPL", Decimal("5"), Decimal("180"))
    await connected(brokers, user, KEY, SECRET)
    resting = await _accepted(
        user, symbol="KO", side="BUY", type="LIMIT", limitPrice="50.00", quantity="2"
    )

    result = (
        await user.gql(
            "mutation { liquidateAll { __typename"
            " ... on EmergencyResult { canceledOrders closedPositions } } }"
        )
    )["data"]["liquidateAll"]

    assert result == {"__typename": "EmergencyResult", "canceledOrders": 1, "closedPositions": 1}
    await wait_for_status(user, resting["id"], "CANCELED")
    await brokers.fake.wait_for(lambda: len(account.top_level_orders()) == 2)
    sell = account.top_level_orders()[1]
    assert (sell["symbol"], sell["side"], sell["qty"]) == ("AAPL", "sell", "5")


async def test_a_client_order_id_names_one_order_on_one_broker(
    signup: Any, brokers: Brokers
) -> None:
    user = await _user(signup, brokers)
    fields = {"symbol": "KO", "side": "BUY", "quantity": "1", "clientOrderId": "mine-1"}
    first = await place(user, broker="ALPACA", **fields)
    again = await place(user, broker="ALPACA", **fields)
    assert first["__typename"] == again["__typename"] == "OrderPlaced"
    assert first["order"]["id"] == again["order"]["id"]
    elsewhere = await place(user, broker="PAPER", **fields)
    assert elsewhere["__typename"] == "DuplicateClientOrderId"
    await wait_for_status(user, first["order"]["id"], "ACCEPTED")
    assert len(brokers.account(KEY).submitted) == 1
