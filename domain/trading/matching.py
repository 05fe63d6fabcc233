"""The paper broker's matching rules: when an order fills against a quote, at what price.

Policies:

- Liquidity is unlimited: an order that can fill, fills completely in one fill. Quotes
  carry no displayed size, so there is nothing honest to size partial fills by. Hence
  IOC and FOK behave alike: fill everything now or cancel.
- Fills that take liquidity (MARKET, and STOP/TRAILING_STOP once triggered) pay
  `slippage_bps` beyond the touch: buys at ask + slippage, sells at bid - slippage,
  rounded away from the trader to the tick. Without a bid or ask the last trade stands
  in. LIMIT fills at the touch when it is at or through the limit, never beyond it.
- Stops trigger when the last trade or the touch reaches them: a BUY stop on last or ask
  at or above the stop, a SELL stop on last or bid at or below it. A triggered
  STOP_LIMIT rests as a limit, so the caller persists `triggered`.
- A TRAILING_STOP's water mark (the highest last price for a SELL, the lowest for a BUY,
  starting at the first quote seen) is persisted by the caller from every result.
- Closed market: nothing fills and no mark moves, except LIMIT orders flagged
  extended_hours, which match normally against whatever quotes the caller passes (the
  4:00-20:00 extended window is the quote source's business, not checked here). IOC/FOK
  orders arriving then are canceled.
- The engine expires DAY orders (`day_order_expired`) before matching them.
- Commission is `commission_per_share` per share with `min_commission` per fill.

Bracket orders (OCO), for the engine: once the parent fills, `bracket_children` gives the
take-profit LIMIT and the stop-loss STOP for the filled quantity. They are one group:

- When one child fills, cancel the other in the same transaction, and match the legs one
  at a time so both can never fill on one quote.
- Canceling either child (by the user or by expiry) cancels both; canceling the parent
  before it fills means the children are never created.
- Count the pair once in the account's open sell (or buy) quantity: they close the same
  shares, so counting both would make the short-selling check see a short.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

from domain.market.calendar import next_close
from domain.market.models import Quote
from domain.trading.orders import QUANTITY_PLACES, Commission, to_tick
from domain.trading.types import FillEvent, OrderRequest, OrderSide, OrderType, TimeInForce

# Alpaca's extended session runs 4:00-9:30 and 16:00-20:00 New York time; the after-hours
# part ends four hours after the close, early closes included.
_AFTER_HOURS = timedelta(hours=4)
_QUANTITY_STEP = Decimal(1).scaleb(-QUANTITY_PLACES)
_BPS = Decimal(10_000)
_MIN_PRICE = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class PaperConfig:
    slippage_bps: Decimal = Decimal(5)
    commission_per_share: Decimal = Decimal(0)
    min_commission: Decimal = Decimal(0)

    @property
    def commission(self) -> Commission:
        return Commission(per_share=self.commission_per_share, minimum=self.min_commission)


@dataclass(frozen=True, slots=True)
class RestingOrder:
    """An open paper order and the matching state the caller persists between quotes."""

    request: OrderRequest
    water_mark: Decimal | None = None  # TRAILING_STOP only
    triggered: bool = False  # STOP / STOP_LIMIT: the stop has been reached


@dataclass(frozen=True, slots=True)
class MatchResult:
    """What one quote did to an order. Persist `water_mark` and `triggered` whatever else."""

    fill: FillEvent | None = None
    cancel_reason: str | None = None  # set when an IOC/FOK order could not fill now
    water_mark: Decimal | None = None
    triggered: bool = False


def match(
    order: RestingOrder, quote: Quote, *, config: PaperConfig, market_open: bool
) -> MatchResult | None:
    """The effect of `quote` on `order`, or None when it changes nothing."""
    req = order.request
    immediate = req.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)
    if not (market_open or (req.extended_hours and req.type is OrderType.LIMIT)):
        if immediate:
            return _cancel(order, "the market is closed")
        return None

    water_mark, triggered = order.water_mark, order.triggered
    price: Decimal | None = None
    if req.type is OrderType.MARKET:
        price = _taking_price(req.side, quote, config)
    elif req.type is OrderType.LIMIT:
        price = _limit_price(req, quote)
    elif req.type is OrderType.STOP:
        triggered = triggered or _reached(req.side, _required(req.stop_price), quote)
        price = _taking_price(req.side, quote, config) if triggered else None
    elif req.type is OrderType.STOP_LIMIT:
        triggered = triggered or _reached(req.side, _required(req.stop_price), quote)
        price = _limit_price(req, quote) if triggered else None
    else:
        water_mark = _trail(req.side, water_mark, quote.last)
        trail = _required(req.trail_percent) / 100
        stop = water_mark * (1 - trail if req.side is OrderSide.SELL else 1 + trail)
        if _reached(req.side, stop, quote):
            price = _taking_price(req.side, quote, config)

    if price is None:
        if immediate:
            return _cancel(order, "the order could not fill immediately")
        if water_mark == order.water_mark and triggered == order.triggered:
            return None
        return MatchResult(water_mark=water_mark, triggered=triggered)

    if req.quantity is not None:
        quantity = req.quantity
    else:
        quantity = (_required(req.notional) / price).quantize(_QUANTITY_STEP, ROUND_DOWN)
    fill = FillEvent(
        quantity=quantity,
        price=price,
        commission=config.commission.charge(quantity),
        executed_at=quote.timestamp,
    )
    return MatchResult(fill=fill, water_mark=water_mark, triggered=triggered)


def _cancel(order: RestingOrder, reason: str) -> MatchResult:
    return MatchResult(cancel_reason=reason, water_mark=order.water_mark, triggered=order.triggered)


def _required(value: Decimal | None) -> Decimal:
    if value is None:
        raise ValueError("the order lacks a field its type needs: validate_order first")
    return value


def _touch(side: OrderSide, quote: Quote) -> Decimal:
    """The price a taker meets: the ask for a buy, the bid for a sell, else the last trade."""
    touch = quote.ask if side is OrderSide.BUY else quote.bid
    return touch if touch is not None and touch > 0 else quote.last


def _taking_price(side: OrderSide, quote: Quote, config: PaperConfig) -> Decimal:
    touch = _touch(side, quote)
    slip = touch * config.slippage_bps / _BPS
    if side is OrderSide.BUY:
        return to_tick(touch + slip, ROUND_CEILING)
    return max(to_tick(touch - slip, ROUND_FLOOR), _MIN_PRICE)


def _limit_price(req: OrderRequest, quote: Quote) -> Decimal | None:
    limit = _required(req.limit_price)
    touch = _touch(req.side, quote)
    if req.side is OrderSide.BUY:
        return to_tick(touch, ROUND_CEILING) if touch <= limit else None
    return to_tick(touch, ROUND_FLOOR) if touch >= limit else None


def _reached(side: OrderSide, stop: Decimal, quote: Quote) -> bool:
    if side is OrderSide.BUY:
        return quote.last >= stop or (quote.ask is not None and quote.ask >= stop)
    return quote.last <= stop or (quote.bid is not None and 0 < quote.bid <= stop)


def _trail(side: OrderSide, mark: Decimal | None, last: Decimal) -> Decimal:
    if mark is None:
        return last
    return max(mark, last) if side is OrderSide.SELL else min(mark, last)


def day_order_expired(
    order_submitted_at: datetime, now: datetime, *, extended_hours: bool = False
) -> bool:
    """Whether a DAY order submitted at `order_submitted_at` is over at `now`.

    A DAY order belongs to the first XNYS session that has not closed when it is
    submitted (so one placed overnight or on a holiday waits for the next session) and
    expires at that session's close, early closes included. An extended-hours DAY order
    lives until the end of that session's after-hours instead, and one placed during
    after-hours belongs to the session it follows.
    """
    if not extended_hours:
        return now >= next_close(order_submitted_at)
    return now >= next_close(order_submitted_at - _AFTER_HOURS) + _AFTER_HOURS


def bracket_children(parent: OrderRequest) -> list[OrderRequest]:
    """The exit legs to place once `parent` has filled: take-profit LIMIT, stop-loss STOP.

    They close the parent's quantity on the other side with the parent's time in force
    and agent. client_order_id is left for the engine to derive from the parent order's
    id, which this function does not know.
    """
    if parent.take_profit_price is None and parent.stop_loss_price is None:
        return []
    quantity = _required(parent.quantity)
    exit_side = OrderSide.SELL if parent.side is OrderSide.BUY else OrderSide.BUY
    children: list[OrderRequest] = []
    if parent.take_profit_price is not None:
        children.append(
            OrderRequest(
                symbol=parent.symbol,
                side=exit_side,
                type=OrderType.LIMIT,
                time_in_force=parent.time_in_force,
                quantity=quantity,
                limit_price=parent.take_profit_price,
                agent_id=parent.agent_id,
            )
        )
    if parent.stop_loss_price is not None:
        children.append(
            OrderRequest(
                symbol=parent.symbol,
                side=exit_side,
                type=OrderType.STOP,
                time_in_force=parent.time_in_force,
                quantity=quantity,
                stop_price=parent.stop_loss_price,
                agent_id=parent.agent_id,
            )
        )
    return children
