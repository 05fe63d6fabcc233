"""A local stand-in for Alpaca's Trading API: the REST endpoints and the trade-updates
WebSocket that `domain.brokers.alpaca` uses, in the JSON shapes alpaca-py's models parse,
so tests can drive the real SDK against it.

Accounts are keyed by API key id: each `add_account(key_id, secret)` is a separate
Alpaca account with its own orders, positions and stream listeners, and a request is
served from the account whose APCA-API-KEY-ID / APCA-API-SECRET-KEY headers it carries.

The server runs in its own thread and event loop, so it works from sync tests and from
any test event loop. Script it per account (`reject_next`, `delay_next_submit`,
`set_position`), move orders with `fill` and `push`, drop every stream connection with
`drop_connections()`, and read back `account.orders`, `account.submitted` and `requests`.
Like Alpaca, the fake itself sends `new` when it accepts an order, `canceled` when one is
canceled, and `replaced` then `new` when one is replaced.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from tests.fakes.threaded import ThreadedServer

Json = dict[str, Any]
_T = TypeVar("_T")
_WAIT_SECONDS = 10.0
_Handler = Callable[[Request, "FakeAccount"], Awaitable[Response]]

# Alpaca's open order statuses (GET /v2/orders?status=open); the rest are closed.
OPEN_STATUSES = frozenset(
    {
        "new",
        "accepted",
        "pending_new",
        "partially_filled",
        "held",
        "done_for_day",
        "pending_cancel",
        "pending_replace",
        "accepted_for_bidding",
        "stopped",
        "suspended",
        "calculated",
    }
)
# What `push` does to the order's status for each event it sends.
_EVENT_STATUS = {
    "new": "new",
    "accepted": "accepted",
    "pending_new": "pending_new",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
    "done_for_day": "done_for_day",
    "pending_cancel": "pending_cancel",
}
_EVENT_STAMP = {"canceled": "canceled_at", "expired": "expired_at", "rejected": "failed_at"}
_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
_TIME_IN_FORCE = ("day", "gtc", "opg", "cls", "ioc", "fok")
_ERROR_CODES = {403: 40310000, 404: 40410000, 422: 42210000}


@dataclass
class _Holding:
    quantity: Decimal
    average_price: Decimal
    current_price: Decimal


@dataclass(eq=False)
class FakeAccount:
    key_id: str
    secret: str
    account_number: str
    cash: Decimal
    equity: Decimal
    buying_power: Decimal
    pattern_day_trader: bool = False
    trading_blocked: bool = False
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Every order the account holds, by id, in submission order (bracket legs included).
    orders: dict[str, Json] = field(default_factory=dict)
    # Every POST /v2/orders body, accepted or not.
    submitted: list[Json] = field(default_factory=list)
    holdings: dict[str, _Holding] = field(default_factory=dict)
    legs: dict[str, list[str]] = field(default_factory=dict)
    _rejections: deque[tuple[int, str]] = field(default_factory=deque)
    _delays: deque[float] = field(default_factory=deque)

    def reject_next(self, message: str, *, status: int = 422) -> None:
        """Refuse the next POST /v2/orders with this HTTP status and Alpaca message."""
        self._rejections.append((status, message))

    def delay_next_submit(self, seconds: float) -> None:
        """Record the next order at once but answer its POST only after `seconds`."""
        self._delays.append(seconds)

    def set_position(
        self,
        symbol: str,
        quantity: Decimal,
        average_price: Decimal,
        current_price: Decimal | None = None,
    ) -> None:
        self.holdings[symbol] = _Holding(
            quantity, average_price, current_price if current_price is not None else average_price
        )

    def order_by_client_id(self, client_order_id: str) -> Json | None:
        return next(
            (o for o in self.orders.values() if o["client_order_id"] == client_order_id), None
        )

    def top_level_orders(self) -> list[Json]:
        """The orders a client placed (bracket legs left out)."""
        leg_ids = {leg for legs in self.legs.values() for leg in legs}
        return [o for o in self.orders.values() if o["id"] not in leg_ids]


@dataclass(eq=False)
class _Connection:
    id: int
    socket: WebSocket
    account: FakeAccount | None = None
    streams: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: Json) -> None:
        # Like Alpaca's paper stream: JSON in binary frames.
        async with self.lock:
            await self.socket.send_bytes(json.dumps(message).encode())


class FakeAlpaca(ThreadedServer):
    name = "fake Alpaca"

    def __init__(self, *, page_size: int = 500) -> None:
        super().__init__()
        # Caps every requested page of GET /v2/orders, so a test can force paging.
        self.page_size = page_size
        self.accounts: dict[str, FakeAccount] = {}
        self.requests: list[str] = []
        self._connections: dict[int, _Connection] = {}
        self._connection_count = 0
        self._last_stamp = datetime(2000, 1, 1, tzinfo=UTC)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def add_account(
        self,
        key_id: str,
        secret: str,
        *,
        cash: Decimal = Decimal("100000"),
        equity: Decimal | None = None,
        buying_power: Decimal | None = None,
        account_number: str | None = None,
        pattern_day_trader: bool = False,
        trading_blocked: bool = False,
    ) -> FakeAccount:
        account = FakeAccount(
            key_id=key_id,
            secret=secret,
            account_number=account_number or f"PA{len(self.accounts) + 1:010d}",
            cash=cash,
            equity=cash if equity is None else equity,
            buying_power=cash * 2 if buying_power is None else buying_power,
            pattern_day_trader=pattern_day_trader,
            trading_blocked=trading_blocked,
        )
        self.accounts[key_id] = account
        return account

    # --- order events (call from any thread or event loop) ----------------------------

    async def fill(self, key_id: str, order_id: str, quantity: Decimal, price: Decimal) -> Json:
        """Execute `quantity` of an order at `price`: a `partial_fill` or, once nothing is
        left, a `fill` event. Returns the event's `data`."""
        return await self._on_server_loop(self._fill(key_id, order_id, quantity, price))

    async def push(self, key_id: str, event: str, order_id: str) -> Json:
        """Send a non-fill trade update (`canceled`, `expired`, `rejected`, ...), moving the
        order's status as Alpaca would. Returns the event's `data`."""
        return await self._on_server_loop(self._push_event(key_id, event, order_id))

    async def drop_connections(self, code: int = 1011) -> None:
        """Close every stream connection: 1011 is an error close, 1001 a clean "going away"."""
        await self._on_server_loop(self._drop(code))

    def listeners(self, key_id: str) -> int:
        """Open stream connections of this account listening to trade_updates."""
        return sum(
            1
            for conn in list(self._connections.values())
            if conn.account is not None
            and conn.account.key_id == key_id
            and "trade_updates" in conn.streams
        )

    @property
    def connection_count(self) -> int:
        return self._connection_count

    # --- the app ----------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/account", self._guard(self._account), methods=["GET"]),
                Route("/v2/positions", self._guard(self._positions), methods=["GET"]),
                Route(
                    "/v2/orders:by_client_order_id",
                    self._guard(self._order_by_client_id),
                    methods=["GET"],
                ),
                Route("/v2/orders", self._guard(self._submit), methods=["POST"]),
                Route("/v2/orders", self._guard(self._list_orders), methods=["GET"]),
                Route("/v2/orders/{order_id}", self._guard(self._replace), methods=["PATCH"]),
                Route("/v2/orders/{order_id}", self._guard(self._cancel), methods=["DELETE"]),
                WebSocketRoute("/stream", self._stream),
            ]
        )

    def _guard(self, handler: _Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            query = f"?{request.url.query}" if request.url.query else ""
            self.requests.append(f"{request.method} {request.url.path}{query}")
            account = self.accounts.get(request.headers.get("apca-api-key-id", ""))
            if account is None or request.headers.get("apca-api-secret-key") != account.secret:
                return _error(401, "request is not authorized", code=40110000)
            return await handler(request, account)

        return guarded

    async def _account(self, request: Request, account: FakeAccount) -> Response:
        market_value = sum(
            (h.quantity * h.current_price for h in account.holdings.values()), Decimal(0)
        )
        return JSONResponse(
            {
                "id": account.id,
                "account_number": account.account_number,
                "status": "ACTIVE",
                "crypto_status": "ACTIVE",
                "currency": "USD",
                "buying_power": _num(account.buying_power),
                "regt_buying_power": _num(account.buying_power),
                "daytrading_buying_power": "0",
                "non_marginable_buying_power": _num(account.cash),
                "cash": _num(account.cash),
                "accrued_fees": "0",
                "pending_transfer_out": None,
                "pending_transfer_in": "0",
                "portfolio_value": _num(account.equity),
                "pattern_day_trader": account.pattern_day_trader,
                "trading_blocked": account.trading_blocked,
                "transfers_blocked": False,
                "account_blocked": False,
                "created_at": "2024-01-02T15:04:05.123456Z",
                "trade_suspended_by_user": False,
                "multiplier": "2",
                "shorting_enabled": True,
                "equity": _num(account.equity),
                "last_equity": _num(account.equity),
                "long_market_value": _num(market_value),
                "short_market_value": "0",
                "initial_margin": "0",
                "maintenance_margin": "0",
                "last_maintenance_margin": "0",
                "sma": "0",
                "daytrade_count": 0,
                "options_buying_power": _num(account.cash),
                "options_approved_level": 0,
                "options_trading_level": 0,
            }
        )

    async def _positions(self, request: Request, account: FakeAccount) -> Response:
        return JSONResponse([_position(s, h) for s, h in account.holdings.items()])

    async def _submit(self, request: Request, account: FakeAccount) -> Response:
        body = await request.json()
        account.submitted.append(body)
        if account._rejections:
            status, message = account._rejections.popleft()
            return _error(status, message)
        problem = _order_problem(body)
        if problem is not None:
            return _error(422, problem, code=40010001)
        if body.get("client_order_id") and account.order_by_client_id(body["client_order_id"]):
            return _error(422, "client_order_id must be unique", code=40010001)
        order = self._new_order(account, body)
        await self._push_event(account.key_id, "new", order["id"])
        if account._delays:
            # The order is placed; only the answer is late.
            await asyncio.sleep(account._delays.popleft())
        return JSONResponse(self._render(account, order, nested=True))

    async def _list_orders(self, request: Request, account: FakeAccount) -> Response:
        query = request.query_params
        status = query.get("status", "open")
        nested = query.get("nested", "false").lower() == "true"
        after, until = _parse_time(query.get("after")), _parse_time(query.get("until"))
        limit = min(int(query.get("limit", 50)), 500, self.page_size)
        orders = account.top_level_orders() if nested else list(account.orders.values())
        chosen = [
            o
            for o in orders
            if (status == "all" or (status == "open") == (o["status"] in OPEN_STATUSES))
            and (after is None or _submitted(o) > after)
            and (until is None or _submitted(o) < until)
        ]
        chosen.sort(key=_submitted, reverse=query.get("direction") != "asc")
        return JSONResponse([self._render(account, o, nested=nested) for o in chosen[:limit]])

    async def _order_by_client_id(self, request: Request, account: FakeAccount) -> Response:
        order = account.order_by_client_id(request.query_params.get("client_order_id", ""))
        if order is None:
            return _error(404, "order not found")
        return JSONResponse(self._render(account, order, nested=True))

    async def _cancel(self, request: Request, account: FakeAccount) -> Response:
        order = account.orders.get(request.path_params["order_id"])
        if order is None:
            return _error(404, "order not found")
        if order["status"] not in OPEN_STATUSES:
            return _error(422, "order is not cancelable")
        await self._push_event(account.key_id, "canceled", order["id"])
        return Response(status_code=204)

    async def _replace(self, request: Request, account: FakeAccount) -> Response:
        old = account.orders.get(request.path_params["order_id"])
        if old is None:
            return _error(404, "order not found")
        if old["status"] not in OPEN_STATUSES:
            return _error(422, "order is not replaceable")
        body = await request.json()
        stamp = self._stamp()
        new = {
            **old,
            "id": str(uuid.uuid4()),
            "client_order_id": body.get("client_order_id") or str(uuid.uuid4()),
            "created_at": stamp,
            "updated_at": stamp,
            "submitted_at": stamp,
            "replaces": old["id"],
            "status": "accepted",
            "filled_qty": "0",
            "filled_avg_price": None,
        }
        for name in ("qty", "limit_price", "stop_price", "time_in_force"):
            if body.get(name) is not None:
                new[name] = _num(body[name]) if name != "time_in_force" else body[name]
        if body.get("trail") is not None:
            new["trail_percent" if old["trail_percent"] else "trail_price"] = _num(body["trail"])
        account.orders[new["id"]] = new
        old.update(status="replaced", replaced_by=new["id"], replaced_at=stamp, updated_at=stamp)
        await self._send(account, _update("replaced", self._render(account, old), stamp))
        await self._push_event(account.key_id, "new", new["id"])
        return JSONResponse(self._render(account, new, nested=True))

    # --- the trade-updates stream -----------------------------------------------------

    async def _stream(self, ws: WebSocket) -> None:
        await ws.accept()
        self._connection_count += 1
        conn = _Connection(self._connection_count, ws)
        self._connections[conn.id] = conn
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                request = json.loads(message.get("text") or message.get("bytes") or b"{}")
                action, data = request.get("action"), request.get("data") or {}
                if action in ("authenticate", "auth"):
                    # alpaca-py sends {"action": "authenticate", "data": {"key_id", "secret_key"}};
                    # Alpaca's docs also show {"action": "auth", "key", "secret"}.
                    key_id = data.get("key_id") or request.get("key")
                    secret = data.get("secret_key") or request.get("secret")
                    account = self.accounts.get(str(key_id))
                    if account is None or secret != account.secret:
                        await conn.send(_authorization("unauthorized"))
                        await ws.close(1008)
                        return
                    conn.account = account
                    await conn.send(_authorization("authorized"))
                elif action == "listen":
                    if conn.account is None:
                        await conn.send(_authorization("unauthorized", action="listen"))
                        continue
                    conn.streams = set(data.get("streams") or []) & {"trade_updates"}
                    await conn.send(
                        {"stream": "listening", "data": {"streams": sorted(conn.streams)}}
                    )
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass
        finally:
            self._connections.pop(conn.id, None)

    async def _send(self, account: FakeAccount, message: Json) -> None:
        for conn in list(self._connections.values()):
            if conn.account is account and "trade_updates" in conn.streams:
                try:
                    await conn.send(message)
                except (OSError, RuntimeError):
                    continue  # closing under us

    async def _drop(self, code: int) -> None:
        for conn in list(self._connections.values()):
            self._connections.pop(conn.id, None)
            try:
                await conn.socket.close(code)
            except (OSError, RuntimeError):
                continue

    async def _fill(self, key_id: str, order_id: str, quantity: Decimal, price: Decimal) -> Json:
        account = self.accounts[key_id]
        order = account.orders[order_id]
        before = Decimal(order["filled_qty"])
        filled = before + quantity
        average = (before * Decimal(order["filled_avg_price"] or 0) + quantity * price) / filled
        done = order["qty"] is not None and filled >= Decimal(order["qty"])
        stamp = self._stamp()
        order.update(
            filled_qty=_num(filled),
            filled_avg_price=_num(average.quantize(Decimal("0.0001"))),
            status="filled" if done else "partially_filled",
            updated_at=stamp,
            filled_at=stamp if done else None,
        )
        signed = quantity if order["side"] == "buy" else -quantity
        position = _hold(account, order["symbol"], signed, price)
        data = {
            **_update("fill" if done else "partial_fill", self._render(account, order), stamp),
            "execution_id": str(uuid.uuid4()),
            "price": _num(price),
            "qty": _num(quantity),
            "position_qty": _num(position),
        }
        await self._send(account, {"stream": "trade_updates", "data": data})
        return data

    async def _push_event(self, key_id: str, event: str, order_id: str) -> Json:
        account = self.accounts[key_id]
        order = account.orders[order_id]
        stamp = self._stamp()
        if event in _EVENT_STATUS:
            order.update(status=_EVENT_STATUS[event], updated_at=stamp)
        if event in _EVENT_STAMP:
            order[_EVENT_STAMP[event]] = stamp
        data = _update(event, self._render(account, order), stamp)
        await self._send(account, {"stream": "trade_updates", "data": data})
        return data

    # --- orders -----------------------------------------------------------------------

    def _new_order(self, account: FakeAccount, body: Json) -> Json:
        stamp = self._stamp()
        order_class = body.get("order_class") or "simple"
        order = _order(body, stamp, order_class)
        account.orders[order["id"]] = order
        exit_side = "sell" if body["side"] == "buy" else "buy"
        legs: list[Json] = []
        if body.get("take_profit"):
            tp = {"type": "limit", "limit_price": body["take_profit"]["limit_price"]}
            legs.append(_order({**body, **tp, "side": exit_side}, stamp, order_class, leg=True))
        if body.get("stop_loss"):
            sl = {"type": "stop", "stop_price": body["stop_loss"]["stop_price"]}
            legs.append(_order({**body, **sl, "side": exit_side}, stamp, order_class, leg=True))
        for leg in legs:
            account.orders[leg["id"]] = leg
        if legs:
            account.legs[order["id"]] = [leg["id"] for leg in legs]
        return order

    def _render(self, account: FakeAccount, order: Json, *, nested: bool = False) -> Json:
        leg_ids = account.legs.get(order["id"])
        if not nested or not leg_ids:
            return dict(order)
        return {**order, "legs": [dict(account.orders[i]) for i in leg_ids]}

    def _stamp(self) -> str:
        # Strictly increasing, so submission order is always visible in the timestamps.
        self._last_stamp = max(datetime.now(UTC), self._last_stamp + timedelta(microseconds=1))
        return self._last_stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def running_fake_alpaca(*, page_size: int = 500) -> Iterator[FakeAlpaca]:
    fake = FakeAlpaca(page_size=page_size)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def _order(body: Json, stamp: str, order_class: str, *, leg: bool = False) -> Json:
    symbol = str(body["symbol"])
    return {
        "id": str(uuid.uuid4()),
        "client_order_id": (None if leg else body.get("client_order_id")) or str(uuid.uuid4()),
        "created_at": stamp,
        "updated_at": stamp,
        "submitted_at": stamp,
        "filled_at": None,
        "expired_at": None,
        "expires_at": None,
        "canceled_at": None,
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca:{symbol}")),
        "symbol": symbol,
        "asset_class": "us_equity",
        "notional": _num(body.get("notional")),
        "qty": _num(body.get("qty")),
        "filled_qty": "0",
        "filled_avg_price": None,
        "order_class": order_class,
        "order_type": body["type"],
        "type": body["type"],
        "side": body["side"],
        "position_intent": "buy_to_open" if body["side"] == "buy" else "sell_to_close",
        "time_in_force": body["time_in_force"],
        "limit_price": _num(body.get("limit_price")),
        "stop_price": _num(body.get("stop_price")),
        "status": "held" if leg else "accepted",
        "extended_hours": bool(body.get("extended_hours")),
        "legs": None,
        "trail_percent": _num(body.get("trail_percent")),
        "trail_price": _num(body.get("trail_price")),
        "hwm": None,
        "subtag": None,
        "source": None,
    }


def _order_problem(body: Json) -> str | None:
    """The request-shape checks Alpaca answers with 422 (not its trading rules)."""
    if not body.get("symbol"):
        return "symbol is required"
    if body.get("side") not in ("buy", "sell"):
        return "side must be buy or sell"
    if body.get("type") not in _TYPES:
        return "invalid order type"
    if body.get("time_in_force") not in _TIME_IN_FORCE:
        return "invalid time_in_force"
    if (body.get("qty") is None) == (body.get("notional") is None):
        return "qty or notional is required, not both"
    kind = body["type"]
    if kind in ("limit", "stop_limit") and body.get("limit_price") is None:
        return "limit_price is required"
    if kind in ("stop", "stop_limit") and body.get("stop_price") is None:
        return "stop_price is required"
    if kind == "trailing_stop" and body.get("trail_percent") is body.get("trail_price") is None:
        return "trail_percent or trail_price is required"
    order_class = body.get("order_class")
    take_profit, stop_loss = body.get("take_profit"), body.get("stop_loss")
    if order_class == "bracket" and not (take_profit and stop_loss):
        return "bracket orders require take_profit and stop_loss"
    if order_class == "oto" and not (take_profit or stop_loss):
        return "oto orders require take_profit or stop_loss"
    return None


def _hold(account: FakeAccount, symbol: str, signed: Decimal, price: Decimal) -> Decimal:
    """Apply a fill to the position; returns the new position quantity."""
    held = account.holdings.get(symbol)
    if held is None or held.quantity == 0:
        account.holdings[symbol] = _Holding(signed, price, price)
        return signed
    quantity = held.quantity + signed
    if quantity == 0:
        del account.holdings[symbol]
        return quantity
    if (held.quantity > 0) == (signed > 0):
        held.average_price = (held.quantity * held.average_price + signed * price) / quantity
    elif (held.quantity > 0) != (quantity > 0):
        held.average_price = price  # flipped from long to short or back
    held.quantity = quantity
    held.current_price = price
    return quantity


def _position(symbol: str, held: _Holding) -> Json:
    cost = held.quantity * held.average_price
    value = held.quantity * held.current_price
    return {
        "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca:{symbol}")),
        "symbol": symbol,
        "exchange": "NASDAQ",
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": _num(held.average_price),
        "qty": _num(held.quantity),
        "side": "long" if held.quantity > 0 else "short",
        "market_value": _num(value),
        "cost_basis": _num(cost),
        "unrealized_pl": _num(value - cost),
        "unrealized_plpc": _num((value - cost) / abs(cost)) if cost else "0",
        "unrealized_intraday_pl": _num(value - cost),
        "unrealized_intraday_plpc": "0",
        "current_price": _num(held.current_price),
        "lastday_price": _num(held.average_price),
        "change_today": "0",
        "qty_available": _num(held.quantity),
    }


def _update(event: str, order: Json, stamp: str) -> Json:
    return {"event": event, "order": order, "timestamp": stamp}


def _authorization(status: str, *, action: str = "authenticate") -> Json:
    return {"stream": "authorization", "data": {"action": action, "status": status}}


def _error(status_code: int, message: str, *, code: int | None = None) -> JSONResponse:
    body = {"code": code or _ERROR_CODES.get(status_code, 40010001), "message": message}
    return JSONResponse(body, status_code=status_code)


def _num(value: object) -> str | None:
    """A number the way Alpaca writes it: a plain decimal string."""
    if value is None:
        return None
    return format(Decimal(str(value)).normalize(), "f")


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _submitted(order: Json) -> datetime:
    return datetime.fromisoformat(order["submitted_at"])
