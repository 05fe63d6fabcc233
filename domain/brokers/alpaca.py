"""Alpaca as a `Broker`, through the official alpaca-py SDK.

REST calls go through the SDK's synchronous `TradingClient` on worker threads, with two
changes (see `_TradingClient`): every request has a timeout, and the SDK's own retry loop
is off, because whether to send an order again is this module's decision (`submit`).

The trade-updates stream speaks Alpaca's small WebSocket protocol directly with
`websockets` rather than through the SDK's `TradingStream` (see `trade_events`).

Errors: 401 (and a 403 without an Alpaca error code) -> `BrokerAuthError`; 429, 5xx,
timeouts and connection failures -> `BrokerUnavailable`; any other refusal ->
`BrokerRejected` with Alpaca's own message. Exceptions raised here never chain the SDK's
or `requests`' exceptions, which hold the request and with it the API secret header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from alpaca.common.enums import BaseURL, Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, PositionSide, QueryOrderStatus
from alpaca.trading.enums import OrderSide as AlpacaSide
from alpaca.trading.enums import TimeInForce as AlpacaTimeInForce
from alpaca.trading.models import Order, Position, TradeAccount, TradeUpdate
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from alpaca.trading.requests import OrderRequest as AlpacaOrderRequest
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from domain.brokers.base import (
    BrokerAccount,
    BrokerAuthError,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    BrokerRejected,
    BrokerUnavailable,
    TradeEvent,
    TradeEventKind,
)
from domain.trading.types import (
    BrokerKind,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    TimeInForce,
)

__all__ = ["AlpacaBroker"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Alpaca's largest page of GET /v2/orders.
_ORDERS_PAGE = 500
_MAX_CLIENT_ORDER_ID = 128
_MAX_MESSAGE = 300
# A stream connection that stayed up this long was healthy even if no order moved.
_HEALTHY_STREAM_SECONDS = 60.0
# Decimal places Alpaca takes for quantities and notional amounts.
_AMOUNT_PLACES = 9
# Beyond this many significant digits a Decimal no longer survives the SDK's floats.
_FLOAT_DIGITS = 15

_SIDES = {OrderSide.BUY: AlpacaSide.BUY, OrderSide.SELL: AlpacaSide.SELL}
_SIDES_BACK = {AlpacaSide.BUY: OrderSide.BUY, AlpacaSide.SELL: OrderSide.SELL}
_TIME_IN_FORCE = {
    TimeInForce.DAY: AlpacaTimeInForce.DAY,
    TimeInForce.GTC: AlpacaTimeInForce.GTC,
    TimeInForce.IOC: AlpacaTimeInForce.IOC,
    TimeInForce.FOK: AlpacaTimeInForce.FOK,
}
_DAY_OR_GTC = frozenset({TimeInForce.DAY, TimeInForce.GTC})

# The price fields each order type requires; the others must be absent.
_PRICE_FIELDS: dict[OrderType, frozenset[str]] = {
    OrderType.MARKET: frozenset(),
    OrderType.LIMIT: frozenset({"limit_price"}),
    OrderType.STOP: frozenset({"stop_price"}),
    OrderType.STOP_LIMIT: frozenset({"limit_price", "stop_price"}),
    OrderType.TRAILING_STOP: frozenset({"trail_percent"}),
}

# Alpaca order statuses with one Kianax meaning. Every one of Alpaca's open states means
# Alpaca has the order, which Kianax calls ACCEPTED (Kianax's NEW is "not yet
# acknowledged by the broker", so this adapter never reports it). `replaced` is terminal
# for that broker order id: it will never fill again and lives on as a new order with a
# new id (what `replace` returns), so it reads as CANCELED; trade events tell it apart
# with `TradeEventKind.REPLACED`.
_STATUSES: dict[str, OrderStatus] = {
    "new": OrderStatus.ACCEPTED,
    "accepted": OrderStatus.ACCEPTED,
    "pending_new": OrderStatus.ACCEPTED,
    "accepted_for_bidding": OrderStatus.ACCEPTED,
    "pending_review": OrderStatus.ACCEPTED,
    "held": OrderStatus.ACCEPTED,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
    "replaced": OrderStatus.CANCELED,
}
# The others (done_for_day, pending_cancel, pending_replace, stopped, suspended,
# calculated) are still open, and the fills so far decide: see `_status`.

# Alpaca trade-update events worth telling Kianax about. The rest (pending_new,
# pending_cancel, pending_replace, done_for_day, calculated, restated, stopped,
# suspended, order_cancel_rejected, order_replace_rejected) change nothing Kianax tracks.
_EVENT_KINDS: dict[str, TradeEventKind] = {
    "new": TradeEventKind.NEW,
    "accepted": TradeEventKind.NEW,
    "partial_fill": TradeEventKind.PARTIAL_FILL,
    "fill": TradeEventKind.FILL,
    "canceled": TradeEventKind.CANCELED,
    "expired": TradeEventKind.EXPIRED,
    "rejected": TradeEventKind.REJECTED,
    "replaced": TradeEventKind.REPLACED,
}
_FILL_KINDS = frozenset({TradeEventKind.FILL, TradeEventKind.PARTIAL_FILL})


class _OutcomeUnknown(BrokerUnavailable):
    """The request may have reached Alpaca: a timeout, a dropped connection or a 5xx."""


class _NotFound(BrokerRejected):
    pass


class _DuplicateClientOrderId(BrokerRejected):
    pass


class _TradingClient(TradingClient):
    """alpaca-py's `TradingClient` with a request timeout and without its retry loop.

    The SDK sends requests without a timeout (a stalled connection would hold a worker
    thread forever) and retries 429/504 itself, sleeping 3 s between up to 3 attempts.
    """

    def __init__(
        self, api_key: str, secret_key: str, *, paper: bool, url: str | None, timeout: float
    ) -> None:
        super().__init__(api_key=api_key, secret_key=secret_key, paper=paper, url_override=url)
        self._timeout = timeout
        self._retry = 0

    def _one_request(
        self, method: str, url: str, opts: dict[str, Any], retry: int
    ) -> dict[str, Any]:
        return cast(
            "dict[str, Any]",
            super()._one_request(method, url, {**opts, "timeout": self._timeout}, retry),
        )


class _FrameLogsOff(logging.LoggerAdapter[logging.Logger]):
    """websockets logs every frame at DEBUG, showing its start and end, and the first
    frame of a stream session carries the API secret. This logger never enables DEBUG."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


class AlpacaBroker:
    """`Broker` backed by one Alpaca account (paper or live), identified by its API key.

    `base_url` replaces the SDK's REST root (`https://paper-api.alpaca.markets` or
    `https://api.alpaca.markets`; the SDK appends `/v2`). `stream_url` is the full
    trade-stream URL; when only `base_url` is given it is that host's `/stream`.
    `timeout` bounds every REST request and the stream's handshake.
    """

    kind = BrokerKind.ALPACA

    def __init__(
        self,
        api_key_id: str,
        api_secret: str,
        *,
        paper: bool,
        base_url: str | None = None,
        stream_url: str | None = None,
        timeout: float = 10.0,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
    ) -> None:
        if not api_key_id or not api_secret:
            raise BrokerAuthError("an Alpaca API key id and secret are both required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        root = base_url.rstrip("/") if base_url else None
        self._rest = _TradingClient(api_key_id, api_secret, paper=paper, url=root, timeout=timeout)
        self._key_id = api_key_id
        self._secret = api_secret
        self._stream_url = _stream_url(paper, root, stream_url)
        self._timeout = timeout
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay

    def __repr__(self) -> str:
        return f"AlpacaBroker(stream_url={self._stream_url!r})"

    # --- account --------------------------------------------------------------------

    async def account(self) -> BrokerAccount:
        account = cast(TradeAccount, await self._call(self._rest.get_account))
        return BrokerAccount(
            account_number=account.account_number,
            cash=_decimal(account.cash) or Decimal(0),
            equity=_decimal(account.equity or account.portfolio_value) or Decimal(0),
            buying_power=_decimal(account.buying_power) or Decimal(0),
            currency=account.currency or "USD",
            pattern_day_trader=bool(account.pattern_day_trader),
            trading_blocked=bool(
                account.trading_blocked
                or account.account_blocked
                or account.trade_suspended_by_user
            ),
        )

    async def positions(self) -> list[BrokerPosition]:
        positions = cast(list[Position], await self._call(self._rest.get_all_positions))
        return [_position(p) for p in positions]

    # --- orders ---------------------------------------------------------------------

    async def submit(self, request: OrderRequest, client_order_id: str) -> BrokerOrder:
        """Place the order under `client_order_id`, Alpaca's idempotency key.

        An order must never be sent twice, and a timeout does not mean it was not placed.
        So when the outcome is unknown (timeout, dropped connection, 5xx) the order is
        looked up by client_order_id first: found, it is the answer; not found, it is sent
        once more. A resend is safe even if the first request lands later, because Alpaca
        refuses a second order with the same client_order_id, and that refusal is also
        resolved by looking the order up.
        """
        order_data = _alpaca_order(request, client_order_id)
        for attempt in (1, 2):
            try:
                placed = cast(Order, await self._call(self._rest.submit_order, order_data))
            except _DuplicateClientOrderId:
                existing = await self._find_in_doubt(client_order_id)
                if existing is None:
                    raise BrokerUnavailable(
                        "Alpaca reports this client_order_id as used but cannot find the order yet"
                    ) from None
                return _same_order(existing, request, client_order_id)
            except _OutcomeUnknown as exc:
                existing = await self._find_in_doubt(client_order_id)
                if existing is not None:
                    return _same_order(existing, request, client_order_id)
                log.warning(
                    "Alpaca order %s: %s and not found by client_order_id (attempt %d)",
                    client_order_id,
                    exc,
                    attempt,
                )
                continue
            return _broker_order(placed)
        raise BrokerUnavailable(
            "Alpaca did not answer, and has no order under this client_order_id; submitting "
            "again with the same client_order_id is safe"
        )

    async def cancel(self, broker_order_id: str) -> None:
        await self._call(self._rest.cancel_order_by_id, _order_id(broker_order_id))

    async def replace(
        self,
        broker_order_id: str,
        *,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> BrokerOrder:
        """Alpaca replaces an order with a new one: the result has a new broker order id and
        a client_order_id generated by Alpaca, and the old order ends as `replaced`.

        Not retried: a replace whose outcome is unknown raises `BrokerUnavailable`, and the
        caller reconciles with `orders()`.
        """
        order_id = _order_id(broker_order_id)
        problem = _replace_problem(quantity, limit_price, stop_price)
        if problem is not None:
            raise BrokerRejected(f"Alpaca does not accept this replacement: {problem}")
        changes = ReplaceOrderRequest(
            qty=None if quantity is None else int(quantity),
            limit_price=_float(limit_price),
            stop_price=_float(stop_price),
        )
        replaced = await self._call(self._rest.replace_order_by_id, order_id, changes)
        return _broker_order(cast(Order, replaced))

    async def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        found = await self._order_by_client_id(client_order_id)
        return None if found is None else _broker_order(found)

    async def orders(self, *, open_only: bool, after: datetime | None = None) -> list[BrokerOrder]:
        """Orders submitted after `after` (all of them when None), oldest first.

        Alpaca pages by time, not by cursor, so each page starts just before the newest
        submission time seen; orders sharing that instant come back again and are skipped,
        and the last request is the one that brings nothing new.
        Multi-leg option orders (no single symbol or side) are left out.
        """
        status = QueryOrderStatus.OPEN if open_only else QueryOrderStatus.ALL
        found: dict[str, Order] = {}
        cursor = after
        while True:
            page = cast(
                list[Order],
                await self._call(
                    self._rest.get_orders,
                    GetOrdersRequest(
                        status=status, limit=_ORDERS_PAGE, after=cursor, direction=Sort.ASC
                    ),
                ),
            )
            fresh = [o for o in page if str(o.id) not in found]
            found.update((str(o.id), o) for o in fresh)
            # A short page is not trusted to be the last (a server may cap pages lower):
            # paging ends when a page brings nothing new.
            if not fresh:
                break
            cursor = max(o.submitted_at for o in page) - timedelta(microseconds=1)
        ordered = sorted(found.values(), key=lambda o: o.submitted_at)
        return [_broker_order(o) for o in ordered if _representable(o)]

    # --- the trade-updates stream ---------------------------------------------------

    async def trade_events(self) -> AsyncGenerator[TradeEvent, None]:
        """Events from Alpaca's `trade_updates` stream, reconnecting until the caller stops.

        Implemented on `websockets` rather than alpaca-py's `TradingStream`, which runs
        only as a whole event loop of its own (`run()`), retries a refused API key forever
        (logging only), reads event quantities and prices as floats, notices a stop
        request only between 5-second receive timeouts, and goes through the deprecated
        `websockets.legacy` client, which logs the frame carrying the secret at DEBUG.

        Alpaca does not replay what happened while the stream was down: after a
        reconnect the caller should reconcile with `orders()`. A refused API key ends the
        iterator with `BrokerAuthError`; any other failure reconnects with capped
        exponential backoff.
        """
        loop = asyncio.get_running_loop()
        delay = self._reconnect_delay
        while True:
            started = loop.time()
            delivered = False
            try:
                async with connect(
                    self._stream_url,
                    open_timeout=self._timeout,
                    close_timeout=self._timeout,
                    logger=_FrameLogsOff(log, {}),
                ) as ws:
                    await self._listen(ws)
                    log.info("listening to Alpaca trade updates at %s", self._stream_url)
                    async for message in ws:
                        event = _trade_event(message)
                        if event is not None:
                            delivered = True
                            yield event
                reason = "closed by Alpaca"
            except (OSError, WebSocketException, BrokerUnavailable) as exc:
                reason = type(exc).__name__
            if delivered or loop.time() - started >= _HEALTHY_STREAM_SECONDS:
                delay = self._reconnect_delay
            log.warning("Alpaca trade stream dropped (%s); reconnecting in %.2fs", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _listen(self, ws: ClientConnection) -> None:
        # The same handshake alpaca-py's TradingStream sends.
        await ws.send(
            json.dumps(
                {
                    "action": "authenticate",
                    "data": {"key_id": self._key_id, "secret_key": self._secret},
                }
            )
        )
        async with asyncio.timeout(self._timeout):
            reply = await _reply(ws, "authorization")
            if reply.get("status") != "authorized":
                raise BrokerAuthError("Alpaca refused the API key for the trade stream")
            await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
            reply = await _reply(ws, "listening")
        if "trade_updates" not in (reply.get("streams") or []):
            raise BrokerUnavailable("Alpaca did not open the trade_updates stream")

    # --- calling the SDK ------------------------------------------------------------

    async def _order_by_client_id(self, client_order_id: str) -> Order | None:
        try:
            found = await self._call(self._rest.get_order_by_client_id, client_order_id)
        except _NotFound:
            return None
        return cast(Order, found)

    async def _find_in_doubt(self, client_order_id: str) -> Order | None:
        try:
            return await self._order_by_client_id(client_order_id)
        except BrokerAuthError:
            raise
        except BrokerError:
            raise BrokerUnavailable(
                "Alpaca could not confirm whether the order was placed; look it up by "
                "client_order_id before placing it again"
            ) from None

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        # The translated error is raised outside the `except` blocks on purpose: chaining
        # would keep the SDK's exception, whose request holds the secret header.
        try:
            return await asyncio.to_thread(fn, *args)
        except APIError as exc:
            error = _api_error(exc)
        except OSError as exc:  # every `requests` exception is an OSError (IOError)
            error = _OutcomeUnknown(f"Alpaca did not answer ({type(exc).__name__})")
        except ValidationError:
            error = BrokerError("Alpaca sent a response Kianax cannot read")
        raise error


# --- Kianax -> Alpaca ------------------------------------------------------------------


def _alpaca_order(request: OrderRequest, client_order_id: str) -> AlpacaOrderRequest:
    problem = _order_problem(request, client_order_id)
    if problem is not None:
        raise BrokerRejected(f"Alpaca does not accept this order: {problem}")
    fields: dict[str, Any] = {
        "symbol": request.symbol,
        "side": _SIDES[request.side],
        "time_in_force": _TIME_IN_FORCE[request.time_in_force],
        "client_order_id": client_order_id,
        "qty": _float(request.quantity),
        "notional": _float(request.notional),
        "extended_hours": request.extended_hours or None,
    }
    take_profit, stop_loss = request.take_profit_price, request.stop_loss_price
    if take_profit is not None or stop_loss is not None:
        both = take_profit is not None and stop_loss is not None
        fields["order_class"] = OrderClass.BRACKET if both else OrderClass.OTO
        if take_profit is not None:
            fields["take_profit"] = TakeProfitRequest(limit_price=float(take_profit))
        if stop_loss is not None:
            fields["stop_loss"] = StopLossRequest(stop_price=float(stop_loss))
    limit, stop = _float(request.limit_price), _float(request.stop_price)
    try:
        match request.type:
            case OrderType.MARKET:
                return MarketOrderRequest(**fields)
            case OrderType.LIMIT:
                return LimitOrderRequest(**fields, limit_price=limit)
            case OrderType.STOP:
                return StopOrderRequest(**fields, stop_price=stop)
            case OrderType.STOP_LIMIT:
                return StopLimitOrderRequest(**fields, limit_price=limit, stop_price=stop)
            case OrderType.TRAILING_STOP:
                return TrailingStopOrderRequest(
                    **fields, trail_percent=_float(request.trail_percent)
                )
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"] if exc.errors() else "invalid order"
    raise BrokerRejected(f"Alpaca does not accept this order: {problem}")


def _order_problem(request: OrderRequest, client_order_id: str) -> str | None:
    """What Alpaca would refuse about this order, found before sending it."""
    r = request
    if not r.symbol.strip():
        return "a symbol is required"
    if not 0 < len(client_order_id) <= _MAX_CLIENT_ORDER_ID:
        return f"client_order_id must have 1 to {_MAX_CLIENT_ORDER_ID} characters"
    if (r.quantity is None) == (r.notional is None):
        return "give exactly one of quantity or notional"
    amount = r.quantity if r.quantity is not None else r.notional
    assert amount is not None
    if not _is_amount(amount):
        return f"quantity and notional must be positive with at most {_AMOUNT_PLACES} decimals"
    prices = {
        "limit_price": r.limit_price,
        "stop_price": r.stop_price,
        "trail_percent": r.trail_percent,
    }
    wanted = _PRICE_FIELDS[r.type]
    for name, value in prices.items():
        if name in wanted and value is None:
            return f"a {r.type} order needs {name}"
        if name not in wanted and value is not None:
            return f"{name} does not apply to a {r.type} order"
    if r.trail_percent is not None and not _is_amount(r.trail_percent):
        return "trail_percent must be positive"
    for name, price in (
        ("limit_price", r.limit_price),
        ("stop_price", r.stop_price),
        ("take_profit_price", r.take_profit_price),
        ("stop_loss_price", r.stop_loss_price),
    ):
        if price is not None and not _is_price(price):
            return (
                f"{name} {price} is not a valid price (positive, at most 2 decimals from "
                "$1 up and 4 below)"
            )
    has_legs = r.take_profit_price is not None or r.stop_loss_price is not None
    fractional = r.quantity is not None and r.quantity != r.quantity.to_integral_value()
    if r.notional is not None or fractional:
        what = "notional" if r.notional is not None else "fractional-share"
        if r.time_in_force is not TimeInForce.DAY:
            return f"{what} orders must be DAY orders"
        if r.type is OrderType.TRAILING_STOP:
            return f"{what} orders cannot be trailing stops"
        if has_legs:
            return f"{what} orders cannot have take-profit or stop-loss legs"
    if r.extended_hours:
        if r.type is not OrderType.LIMIT:
            return "extended-hours orders must be LIMIT orders"
        if r.time_in_force not in _DAY_OR_GTC:
            return "extended-hours orders must be DAY or GTC"
        if has_legs:
            return "extended-hours orders cannot have take-profit or stop-loss legs"
    if r.type is OrderType.TRAILING_STOP and r.time_in_force not in _DAY_OR_GTC:
        return "trailing stops must be DAY or GTC"
    if has_legs:
        if r.type is OrderType.TRAILING_STOP:
            return "a trailing stop cannot have take-profit or stop-loss legs"
        if r.time_in_force not in _DAY_OR_GTC:
            return "orders with take-profit or stop-loss legs must be DAY or GTC"
        return _legs_problem(r)
    return None


def _legs_problem(r: OrderRequest) -> str | None:
    """A buy's stop loss sits below its entry and its take profit above; a sell's mirror."""
    entry = r.limit_price if r.type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else r.stop_price
    points = [
        ("stop_loss_price", r.stop_loss_price),
        ("the entry price", entry),
        ("take_profit_price", r.take_profit_price),
    ]
    if r.side is OrderSide.SELL:
        points.reverse()
    present = [(name, value) for name, value in points if value is not None]
    for (low_name, low), (high_name, high) in pairwise(present):
        if not low < high:
            return f"for a {r.side} order, {low_name} must be below {high_name}"
    return None


def _replace_problem(
    quantity: Decimal | None, limit_price: Decimal | None, stop_price: Decimal | None
) -> str | None:
    if quantity is None and limit_price is None and stop_price is None:
        return "nothing to change"
    if quantity is not None and (
        not _is_amount(quantity) or quantity != quantity.to_integral_value()
    ):
        return "the new quantity must be a positive whole number of shares"
    for name, price in (("limit_price", limit_price), ("stop_price", stop_price)):
        if price is not None and not _is_price(price):
            return f"{name} {price} is not a valid price"
    return None


def _is_amount(value: Decimal) -> bool:
    return (
        value.is_finite()
        and value > 0
        and _decimals(value) <= _AMOUNT_PLACES
        and len(value.normalize().as_tuple().digits) <= _FLOAT_DIGITS
    )


def _is_price(value: Decimal) -> bool:
    # Alpaca refuses sub-penny prices: 2 decimals from $1 up, 4 below.
    return _is_amount(value) and _decimals(value) <= (2 if value >= 1 else 4)


def _decimals(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _float(value: Decimal | None) -> float | None:
    # alpaca-py types quantities and prices as floats; `_is_amount` keeps them exact.
    return None if value is None else float(value)


def _order_id(broker_order_id: str) -> str:
    try:
        return str(uuid.UUID(broker_order_id))
    except ValueError:
        raise BrokerRejected(f"{broker_order_id!r} is not an Alpaca order id") from None


def _stream_url(paper: bool, base_url: str | None, stream_url: str | None) -> str:
    if stream_url:
        return stream_url
    if base_url:
        parts = urlsplit(base_url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
        if scheme is None:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        return urlunsplit((scheme, parts.netloc, parts.path + "/stream", "", ""))
    return str((BaseURL.TRADING_STREAM_PAPER if paper else BaseURL.TRADING_STREAM_LIVE).value)


# --- Alpaca -> Kianax ------------------------------------------------------------------


def _api_error(exc: APIError) -> BrokerError:
    status = exc.status_code
    code, message = _error_body(exc)
    if status == 401:
        return BrokerAuthError("Alpaca refused the API key")
    if status == 403:
        # With an Alpaca error code a 403 is a business refusal (say, buying power);
        # without one, the key may not do this.
        if code is not None:
            return BrokerRejected(message)
        return BrokerAuthError(f"Alpaca refused the API key: {message}")
    if status == 404:
        return _NotFound(message)
    if status == 422 and "client_order_id" in message and "unique" in message:
        return _DuplicateClientOrderId(message)
    if status == 429:
        return BrokerUnavailable("Alpaca's rate limit was reached; try again shortly")
    if status is None or status >= 500:
        return _OutcomeUnknown(f"Alpaca failed (HTTP {status})")
    return BrokerRejected(message)


def _error_body(exc: APIError) -> tuple[int | None, str]:
    """Alpaca's error `code` and `message`, from a body like {"code": 4..., "message": ...}.

    Nothing else of the body is used: an error page from something in between (a proxy
    echoing the request, say) could hold the secret header.
    """
    try:
        body = json.loads(str(exc))
    except ValueError:
        body = None
    code = message = None
    if isinstance(body, dict):
        code, message = body.get("code"), body.get("message")
    if not isinstance(message, str) or not message:
        reason = getattr(exc.response, "reason", None) or "no details"
        message = f"HTTP {exc.status_code}: {reason}"
    return (code if isinstance(code, int) else None), message[:_MAX_MESSAGE]


def _broker_order(order: Order) -> BrokerOrder:
    if order.side is None:
        raise BrokerError(f"Alpaca order {order.id} has no single side (a multi-leg order)")
    filled = _decimal(order.filled_qty) or Decimal(0)
    quantity = _decimal(order.qty)
    return BrokerOrder(
        broker_order_id=str(order.id),
        client_order_id=order.client_order_id,
        symbol=order.symbol or "",
        side=_SIDES_BACK[order.side],
        status=_status(order.status.value, filled, quantity),
        quantity=quantity,
        notional=_decimal(order.notional),
        filled_quantity=filled,
        average_fill_price=_decimal(order.filled_avg_price) if filled > 0 else None,
        submitted_at=order.submitted_at,
        updated_at=order.updated_at,
    )


def _representable(order: Order) -> bool:
    return order.side is not None and bool(order.symbol)


def _status(alpaca_status: str, filled: Decimal, quantity: Decimal | None) -> OrderStatus:
    known = _STATUSES.get(alpaca_status)
    if known is not None:
        return known
    if alpaca_status == "calculated" and quantity is not None and filled >= quantity:
        return OrderStatus.FILLED
    return OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACCEPTED


def _same_order(existing: Order, request: OrderRequest, client_order_id: str) -> BrokerOrder:
    """The order found under `client_order_id`, if it is the one being placed."""
    order = _broker_order(existing)
    same = (
        order.symbol == request.symbol
        and order.side is request.side
        and order.quantity == request.quantity
        and order.notional == request.notional
    )
    if not same:
        raise BrokerRejected(
            f"client_order_id {client_order_id!r} is already used at Alpaca by a different order"
        )
    return order


def _position(position: Position) -> BrokerPosition:
    quantity = Decimal(position.qty)
    if position.side is PositionSide.SHORT and quantity > 0:
        quantity = -quantity
    return BrokerPosition(
        symbol=position.symbol,
        quantity=quantity,
        average_cost=Decimal(position.avg_entry_price),
        market_value=_decimal(position.market_value),
    )


async def _reply(ws: ClientConnection, stream: str) -> dict[str, Any]:
    """The `data` of the next message on `stream`, skipping anything else."""
    while True:
        message = _decode(await ws.recv())
        if message is not None and message.get("stream") == stream:
            data = message.get("data")
            return data if isinstance(data, dict) else {}


def _trade_event(raw: str | bytes) -> TradeEvent | None:
    message = _decode(raw)
    if message is None or message.get("stream") != "trade_updates":
        return None
    data = message.get("data")
    if not isinstance(data, dict):
        return None
    event = str(data.get("event"))
    kind = _EVENT_KINDS.get(event)
    if kind is None:
        return None
    try:
        # The SDK's model parses the order and timestamps; the execution's qty and price
        # are read from the raw strings, which its floats would round.
        update = TradeUpdate(**data)
        order = _broker_order(update.order)
    except (ValidationError, BrokerError, TypeError):
        log.warning("skipped an Alpaca %s trade update Kianax cannot read", event)
        return None
    fill = kind in _FILL_KINDS
    return TradeEvent(
        kind=kind,
        order=order,
        at=update.timestamp,
        execution_id=str(update.execution_id) if fill and update.execution_id else None,
        fill_quantity=_decimal(data.get("qty")) if fill else None,
        fill_price=_decimal(data.get("price")) if fill else None,
    )


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    # Alpaca's paper stream sends JSON in binary frames, its live stream in text frames.
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _decimal(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))
