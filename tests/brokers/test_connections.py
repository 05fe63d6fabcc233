"""Connecting, listing, disconnecting and syncing broker accounts, and keeping keys secret."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.brokers.crypto import DecryptionFailed, KeyRing, SealedSecret, open_sealed
from kianax.settings import Settings
from tests.auth.test_two_factor_and_tokens import code_for, enable_two_factor
from tests.brokers.conftest import (
    CONNECTIONS,
    DISCONNECT,
    SYNC,
    Brokers,
    connect,
    connected,
    place,
    portfolio,
)
from tests.conftest import GraphQLClient, SignedIn

KEY = "PKCONNECT0000000001"
SECRET = "sEcReT-Zq8RwX3vN5tY7uI9oP1aS2dF4gH6jK8lM0"
OTHER_KEY = "PKCONNECT0000000002"
OTHER_SECRET = "0tHeR-Lk2Jh4Gf6Ds8Aq0Wz1Xc3Vb5Nm7Qw9Er1Ty"
CONNECT_DOC = (
    "mutation($input: ConnectBrokerInput!) { connectBroker(input: $input) { __typename } }"
)


async def _rows(engine: AsyncEngine, user: SignedIn, table: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT * FROM {table} WHERE user_id = :u"),  # noqa: S608 - fixed names
            {"u": uuid.UUID(user.user_id)},
        )
        return [dict(row) for row in result.mappings()]


async def test_connect_with_good_keys_shows_the_broker_account_and_only_a_key_hint(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    account = brokers.fake.add_account(
        KEY,
        SECRET,
        cash=Decimal("50000"),
        equity=Decimal("60000"),
        account_number="PA0000000777",
    )
    account.set_position("AAPL", Decimal("5"), Decimal("180"), Decimal("190"))

    result = await connect(user, KEY, SECRET)

    assert result["__typename"] == "BrokerConnected", result
    connection = result["connection"]
    assert connection["provider"] == "ALPACA"
    assert connection["environment"] == "PAPER"
    assert connection["status"] == "connected"
    assert connection["accountNumber"] == "PA0000000777"
    assert connection["keyHint"] == "…0001"
    listed = (await user.gql(CONNECTIONS))["data"]["brokerConnections"]
    assert listed == [connection]
    # The broker's account is now the default portfolio; paper stays available.
    shown = await portfolio(user)
    assert shown["broker"] == "ALPACA"
    assert Decimal(shown["cash"]) == 50000
    # Valued at Kianax's market prices, against the broker's equity when connected.
    equity = Decimal(shown["cash"]) + Decimal(shown["marketValue"])
    assert Decimal(shown["totalPnl"]) == equity - 60000
    [position] = shown["positions"]
    assert position["symbol"] == "AAPL" and Decimal(position["quantity"]) == 5
    assert Decimal(position["averageCost"]) == 180
    paper = await portfolio(user, "PAPER")
    assert paper["broker"] == "PAPER" and paper["positions"] == []
    # Neither the key id nor the secret is anywhere in what the API said.
    said = json.dumps([result, listed, shown], ensure_ascii=False)
    assert KEY not in said and SECRET not in said
    audit = await _rows(owner_engine, user, "audit_events")
    assert "broker.connected" in {row["kind"] for row in audit}
    logged = json.dumps([row["payload"] for row in audit], ensure_ascii=False)
    assert KEY not in logged and SECRET not in logged and "…0001" in logged


async def test_the_database_holds_no_plaintext_key_and_the_sealed_keys_open_only_for_the_owner(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine, settings: Settings
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    brokers.fake.add_account(KEY + "A", SECRET)
    brokers.fake.add_account(OTHER_KEY, OTHER_SECRET)
    assert (await connect(alice, KEY + "A", SECRET))["__typename"] == "BrokerConnected"
    assert (await connect(bob, OTHER_KEY, OTHER_SECRET))["__typename"] == "BrokerConnected"

    [row] = await _rows(owner_engine, alice, "broker_connections")
    stored = repr(row).encode() + b"".join(v for v in row.values() if isinstance(v, bytes))
    for plaintext in (KEY + "A", SECRET, SECRET[-12:], KEY[:12]):
        assert plaintext.encode() not in stored
    async with owner_engine.connect() as connection:
        dump = await connection.scalar(
            text("SELECT string_agg(t::text, '|') FROM broker_connections t")
        )
    assert SECRET not in dump and KEY + "A" not in dump and OTHER_SECRET not in dump

    ring = KeyRing.from_base64(settings.master_key_ring)
    sealed = SealedSecret(row["key_id"], row["wrapped_key"], row["ciphertext"])
    opened = json.loads(open_sealed(ring, sealed, user_id=row["user_id"], connection_id=row["id"]))
    assert opened == {"keyId": KEY + "A", "secret": SECRET}
    [bob_row] = await _rows(owner_engine, bob, "broker_connections")
    for user_id, connection_id in (
        (bob_row["user_id"], bob_row["id"]),  # moved to Bob's row
        (row["user_id"], bob_row["id"]),  # or to another connection of Alice's
    ):
        try:
            open_sealed(ring, sealed, user_id=user_id, connection_id=connection_id)
        except DecryptionFailed:
            continue
        raise AssertionError("a sealed key opened for the wrong row")


async def test_tampered_or_moved_keys_put_the_connection_in_error_not_a_500(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    brokers.fake.add_account(KEY + "T", SECRET)
    brokers.fake.add_account(OTHER_KEY + "T", OTHER_SECRET)
    alice_id = await connected(brokers, alice, KEY + "T", SECRET)
    bob_id = await connected(brokers, bob, OTHER_KEY + "T", OTHER_SECRET)

    async with owner_engine.begin() as connection:
        # One flipped bit in Alice's ciphertext; Alice's whole sealed key copied onto Bob's row.
        await connection.execute(
            text(
                "UPDATE broker_connections "
                "SET ciphertext = set_byte(ciphertext, 19, get_byte(ciphertext, 19) # 1) "
                "WHERE id = :id"
            ),
            {"id": uuid.UUID(alice_id)},
        )
        await connection.execute(
            text(
                "UPDATE broker_connections b SET key_id = a.key_id, wrapped_key = a.wrapped_key, "
                "ciphertext = a.ciphertext FROM broker_connections a "
                "WHERE a.id = :a AND b.id = :b"
            ),
            {"a": uuid.UUID(alice_id), "b": uuid.UUID(bob_id)},
        )

    for user, connection_id in ((alice, alice_id), (bob, bob_id)):
        synced = await user.gql(SYNC, {"id": connection_id})
        assert "errors" not in synced, synced
        result = synced["data"]["syncBroker"]
        assert result["__typename"] == "BrokerConnection"
        assert result["status"] == "error"
        assert "cannot be decrypted" in result["lastError"]
        [listed] = (await user.gql(CONNECTIONS))["data"]["brokerConnections"]
        assert listed["status"] == "error"
        refused = await place(user, symbol="AAPL", side="BUY", quantity="1", broker="ALPACA")
        assert refused["__typename"] == "ValidationError" and refused["field"] == "broker"
    # The worker stops streaming an account whose keys it cannot open.
    await brokers.fake.wait_for(lambda: brokers.fake.listeners(KEY + "T") == 0)
    audit = await _rows(owner_engine, alice, "audit_events")
    assert "broker.connection_error" in {row["kind"] for row in audit}


async def test_bad_keys_are_rejected_and_nothing_is_stored(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    brokers.fake.add_account(KEY + "B", SECRET)

    wrong = await connect(user, KEY + "B", SECRET + "x")
    assert wrong["__typename"] == "BrokerRejectedCredentials", wrong
    assert wrong["code"] == "BROKER_REJECTED_CREDENTIALS"
    unknown = await connect(user, "PKNOSUCHKEY000000", SECRET)
    assert unknown["__typename"] == "BrokerRejectedCredentials"
    malformed = await connect(user, "bad key!", SECRET)
    assert malformed["__typename"] == "ValidationError" and malformed["field"] == "apiKeyId"
    right = await connect(user, KEY + "B", SECRET)
    assert right["__typename"] == "BrokerConnected"  # the right keys still work afterwards
    again = await connect(user, KEY + "B", SECRET)
    assert again["__typename"] == "ValidationError" and again["field"] == "provider"

    rows = await _rows(owner_engine, user, "broker_connections")
    assert len(rows) == 1
    accounts = await _rows(owner_engine, user, "accounts")
    assert [a["broker"] for a in accounts if a["broker"] == "ALPACA"] == ["ALPACA"]


async def test_unreachable_broker_is_a_typed_result(signup: Any, brokers: Brokers) -> None:
    user: SignedIn = await signup()
    brokers.fake.stop()
    result = await connect(user, KEY + "U", SECRET)
    assert result["__typename"] == "BrokerUnavailable", result
    assert result["code"] == "BROKER_UNAVAILABLE"
    assert (await user.gql(CONNECTIONS))["data"]["brokerConnections"] == []


async def test_a_live_connection_needs_a_fresh_two_factor_code(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    secret, _ = await enable_two_factor(user)
    brokers.fake.add_account(KEY + "L", SECRET)

    missing = await connect(user, KEY + "L", SECRET, environment="LIVE")
    assert missing["__typename"] == "TwoFactorRequired", missing
    wrong = await connect(user, KEY + "L", SECRET, environment="LIVE", totp_code="000000")
    assert wrong["__typename"] == "TwoFactorRequired"
    # Refused before the keys were tried: Alpaca never heard of them.
    assert not [r for r in brokers.fake.requests if r.startswith("GET /v2/account")]
    assert await _rows(owner_engine, user, "broker_connections") == []
    audit = {row["kind"] for row in await _rows(owner_engine, user, "audit_events")}
    assert "auth.2fa_failed" in audit

    done = await connect(user, KEY + "L", SECRET, environment="LIVE", totp_code=code_for(secret))
    assert done["__typename"] == "BrokerConnected", done
    assert done["connection"]["environment"] == "LIVE"


async def test_api_tokens_cannot_connect_or_disconnect(
    signup: Any, brokers: Brokers, gql: GraphQLClient
) -> None:
    user: SignedIn = await signup()
    created = await user.gql(
        'mutation { createApiToken(name: "bot", scopes: [READ, TRADE]) {'
        " ... on ApiTokenCreated { token } } }"
    )
    token = created["data"]["createApiToken"]["token"]
    body = await gql(
        CONNECT_DOC,
        {
            "input": {
                "provider": "ALPACA",
                "environment": "PAPER",
                "apiKeyId": KEY,
                "apiSecret": SECRET,
            }
        },
        token=token,
    )
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    body = await gql(DISCONNECT, {"id": str(uuid.uuid4())}, token=token)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert (await gql(CONNECTIONS, token=token))["data"]["brokerConnections"] == []


async def test_disconnect_erases_the_keys_keeps_the_account_and_stops_the_stream(
    signup: Any, brokers: Brokers, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    brokers.fake.add_account(KEY + "D", SECRET)
    connection_id = await connected(brokers, user, KEY + "D", SECRET)

    assert (await user.gql(DISCONNECT, {"id": connection_id}))["data"]["disconnectBroker"] is True
    assert (await user.gql(DISCONNECT, {"id": connection_id}))["data"]["disconnectBroker"] is False

    [row] = await _rows(owner_engine, user, "broker_connections")
    assert row["status"] == "disconnected"
    assert row["key_id"] is row["wrapped_key"] is row["ciphertext"] is None
    assert row["key_hint"] == "…001D"
    assert (
        len([a for a in await _rows(owner_engine, user, "accounts") if a["broker"] == "ALPACA"])
        == 1
    )
    await brokers.fake.wait_for(lambda: brokers.fake.listeners(KEY + "D") == 0)
    assert (await portfolio(user))["broker"] == "PAPER"
    synced = (await user.gql(SYNC, {"id": connection_id}))["data"]["syncBroker"]
    assert synced["__typename"] == "ValidationError"
    # A new connection after a disconnect is allowed.
    assert (await connect(user, KEY + "D", SECRET))["__typename"] == "BrokerConnected"


async def test_a_second_user_sees_and_touches_nothing_of_the_first(
    signup: Any, brokers: Brokers
) -> None:
    alice: SignedIn = await signup()
    bob: SignedIn = await signup()
    brokers.fake.add_account(KEY + "I", SECRET)
    connection_id = await connected(brokers, alice, KEY + "I", SECRET)

    assert (await bob.gql(CONNECTIONS))["data"]["brokerConnections"] == []
    assert (await bob.gql(DISCONNECT, {"id": connection_id}))["data"]["disconnectBroker"] is False
    synced = (await bob.gql(SYNC, {"id": connection_id}))["data"]["syncBroker"]
    assert synced == {"__typename": "NotFound", "code": "NOT_FOUND", "message": synced["message"]}
    assert (await portfolio(bob))["broker"] == "PAPER"
    refused = await place(bob, symbol="AAPL", side="BUY", quantity="1", broker="ALPACA")
    assert refused["__typename"] == "ValidationError" and refused["field"] == "broker"
    garbage = (await bob.gql(SYNC, {"id": "not-an-id"}))["data"]["syncBroker"]
    assert garbage["__typename"] == "NotFound"

    [mine] = (await alice.gql(CONNECTIONS))["data"]["brokerConnections"]
    assert mine["id"] == connection_id and mine["status"] == "connected"
    assert brokers.fake.listeners(KEY + "I") == 1
