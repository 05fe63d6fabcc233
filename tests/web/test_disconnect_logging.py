"""A client that leaves mid-stream is a normal event, not an error; real errors still are."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.types import Message
from uvicorn.protocols.utils import ClientDisconnected

from domain.market import codec, models
from domain.market.service import quote_channel
from tests.ws import graphql_ws

SYMBOL = "XLE"
QUOTES = "subscription($s: [String!]!) { quotes(symbols: $s) { symbol last } }"


class Peer:
    """The server side of one WebSocket, as uvicorn presents it to the app.

    Once `armed`, the client is gone when the next `next` message is sent: the send raises
    what uvicorn raises (`ClientDisconnected`, or `failure` if given) and, like uvicorn's
    `connection_lost`, the disconnect is queued for the app to receive.
    """

    def __init__(self, failure: Exception | None = None) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.failed_sends = 0
        self.armed = False
        self.gone = False
        self.failure = failure

    def client_sends(self, message: dict[str, Any]) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

    async def receive(self) -> Message:
        return await self.incoming.get()

    async def send(self, message: Message) -> None:
        if self.gone:
            self.failed_sends += 1
            raise ClientDisconnected
        text = message.get("text")
        if text is None:
            return  # websocket.accept or websocket.close
        sent: dict[str, Any] = json.loads(text)
        if self.armed and sent["type"] == "next":
            self.failed_sends += 1
            if self.failure is not None:
                raise self.failure
            self.gone = True
            self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1006})
            raise ClientDisconnected
        self.sent.append(sent)

    def nexts(self) -> set[str]:
        return {m["id"] for m in self.sent if m["type"] == "next"}


SCOPE = {
    "type": "websocket",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "scheme": "ws",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "root_path": "",
    "path": "/graphql",
    "raw_path": b"/graphql",
    "query_string": b"",
    "headers": [(b"host", b"kianax.test"), (b"sec-websocket-protocol", b"graphql-transport-ws")],
    "subprotocols": ["graphql-transport-ws"],
    "state": {},
    "extensions": {},
}


async def publish_quote(app: Starlette) -> None:
    quote = models.Quote(
        symbol=SYMBOL,
        bid=None,
        ask=None,
        last=Decimal("123.45"),
        volume=Decimal(0),
        timestamp=datetime.now(UTC),
    )
    await app.state.services.broadcast.publish(quote_channel(SYMBOL), codec.quote_to_dict(quote))


async def until(condition: Callable[[], object], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def connect(app: Starlette, peer: Peer, ops: list[str]) -> asyncio.Task[None]:
    """A client that subscribes each of `ops` to `quotes`, served by the app in a task."""
    peer.incoming.put_nowait({"type": "websocket.connect"})
    peer.client_sends({"type": "connection_init", "payload": {}})
    for op in ops:
        peer.client_sends(
            {
                "id": op,
                "type": "subscribe",
                "payload": {"query": QUOTES, "variables": {"s": [SYMBOL]}},
            }
        )
    return asyncio.create_task(app(dict(SCOPE), peer.receive, peer.send))


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_leaving_while_quotes_are_sent_logs_no_error(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    peer = Peer()
    served = connect(app, peer, ["1", "2"])
    # Each subscription first sends the last known quote, then waits on the channel.
    await until(lambda: peer.nexts() == {"1", "2"}, "both subscriptions to stream")
    peer.armed = True
    # Both wake on the next quote (this one, or one from another test run on this Redis):
    # the first send finds the client gone, the second is refused by Starlette because the
    # first failed.
    await publish_quote(app)
    await until(lambda: peer.failed_sends > 0, "a send to the departed client")
    async with asyncio.timeout(5):
        await served  # the connection ends without an exception
    assert errors(caplog) == [], [r.getMessage() for r in errors(caplog)]


async def test_a_send_failing_for_another_reason_is_still_an_error(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    peer = Peer(failure=RuntimeError("the transport broke"))
    peer.armed = True  # the very first quote's send fails
    served = connect(app, peer, ["1"])
    try:
        await until(lambda: errors(caplog), "the failure to be logged")
    finally:
        peer.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        async with asyncio.timeout(5):
            await served
    [record] = errors(caplog)
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the transport broke"


async def test_an_error_raised_in_a_subscription_is_still_logged_and_masked(
    app: Starlette,
    live_server: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def explode(symbols: Any) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(app.state.services.market, "quotes", explode)
    async with graphql_ws(live_server) as ws:
        op = await ws.subscribe(QUOTES, {"s": [SYMBOL]})
        message = await ws.receive()
        assert await ws.receive() == {"id": op, "type": "complete"}
    assert message["id"] == op and message["type"] == "next", message
    [error] = message["payload"]["errors"]
    assert error["message"] == "Unexpected error."
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    [logged] = [r for r in errors(caplog) if r.exc_info and "hunter2" in str(r.exc_info[1])]
    assert logged.name == "kianax.graphql"
