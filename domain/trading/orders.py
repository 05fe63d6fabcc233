"""Order rules that need no database: the status table, input validation and cash reservation.

Status table (NautilusTrader style: an order moves only along an edge listed here)::

    NEW              -> ACCEPTED | REJECTED | CANCELED | PARTIALLY_FILLED | FILLED
    ACCEPTED         -> PARTIALLY_FILLED | FILLED | CANCELED | EXPIRED | REJECTED
    PARTIALLY_FILLED -> PARTIALLY_FILLED | FILLED | CANCELED | EXPIRED
    FILLED, CANCELED, REJECTED, EXPIRED -> nothing

NEW -> (PARTIALLY_)FILLED is allowed because the paper broker fills a marketable order in
the same call that accepts it, and Alpaca's stream may deliver a fill before its "new"
event; forcing an ACCEPTED step there would mean inventing an event nobody reported.
PARTIALLY_FILLED -> PARTIALLY_FILLED is the one self-loop: every further partial
execution is a real change. A repeated report of any other status is not a transition;
callers reconciling a broker's stream test `can_transition` and skip what is stale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from domain.trading.types import OrderRequest, OrderSide, OrderStatus, OrderType, TimeInForce

_S = OrderStatus
_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.NEW: frozenset({_S.ACCEPTED, _S.REJECTED, _S.CANCELED, _S.PARTIALLY_FILLED, _S.FILLED}),
    _S.ACCEPTED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.EXPIRED, _S.REJECTED}),
    _S.PARTIALLY_FILLED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.EXPIRED}),
    _S.FILLED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.EXPIRED: frozenset(),
}


class IllegalTransition(Exception):
    """An attempt to move an order along an edge the table lacks: a bug in the caller."""

    def __init__(self, current: OrderStatus, new: OrderStatus) -> None:
        super().__init__(f"an order cannot go from {current} to {new}")
        self.current = current
        self.new = new


def can_transition(current: OrderStatus, new: OrderStatus) -> bool:
    return new in _TRANSITIONS[current]


def transition(current: OrderStatus, new: OrderStatus) -> OrderStatus:
    if not can_transition(current, new):
        raise IllegalTransition(current, new)
    return new


# ---------------------------------------------------------------- validation

_MAX_QUANTITY = Decimal(10_000_000)
_MAX_PRICE = Decimal(1_000_000)
# Nothing sane needs more; it mostly stops a typo's extra zeros from reaching a broker.
_MAX_NOTIONAL = Decimal(100_000_000)
_MAX_TRAIL_PERCENT = Decimal(50)
QUANTITY_PLACES = 9

_CENT = Decimal("0.01")
_SUB_PENNY = Decimal("0.0001")
_SYMBOL = re.compile(r"[A-Z][A-Z0-9]*(?:[.-][A-Z0-9]+)?")
_SYMBOL_MAX = 12
_CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Which price fields each order type takes; any other one set is an error.
_PRICE_FIELDS: dict[OrderType, frozenset[str]] = {
    OrderType.MARKET: frozenset(),
    OrderType.LIMIT: frozenset({"limit_price"}),
    OrderType.STOP: frozenset({"stop_price"}),
    OrderType.STOP_LIMIT: frozenset({"limit_price", "stop_price"}),
    OrderType.TRAILING_STOP: frozenset({"trail_percent"}),
}
_IMMEDIATE = frozenset({TimeInForce.IOC, TimeInForce.FOK})
_MARKET_OR_LIMIT = frozenset({OrderType.MARKET, OrderType.LIMIT})

_Add = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class OrderProblem:
    """One reason an order request is malformed. `field` is the OrderRequest attribute name."""

    field: str
    message: str


def _tick(price: Decimal) -> Decimal:
    """The price increment US equities trade in: a cent, or 0.0001 below $1 (SEC Rule 612)."""
    return _CENT if price >= 1 else _SUB_PENNY


def to_tick(price: Decimal, rounding: str) -> Decimal:
    """`price` on its tick, rounded with a `decimal` rounding mode such as ROUND_FLOOR."""
    return price.quantize(_tick(price), rounding=rounding)


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # callers only pass finite values
    return max(0, -exponent)


def _is_whole(value: Decimal) -> bool:
    return value == value.to_integral_value()


def validate_order(req: OrderRequest, reference_price: Decimal | None) -> list[OrderProblem]:
    """Every problem with the request's shape, empty when it may go on to the risk checks.

    `reference_price` (the latest quote) only serves to order bracket legs around a
    market entry; without it those legs are checked against each other alone.
    """
    problems: list[OrderProblem] = []

    def add(field: str, message: str) -> None:
        problems.append(OrderProblem(field, message))

    decimals = {
        "quantity": req.quantity,
        "notional": req.notional,
        "limit_price": req.limit_price,
        "stop_price": req.stop_price,
        "trail_percent": req.trail_percent,
        "take_profit_price": req.take_profit_price,
        "stop_loss_price": req.stop_loss_price,
    }
    for name, value in decimals.items():
        if value is not None and not value.is_finite():
            add(name, "must be a finite number")
    if problems:
        # NaN makes every later comparison raise; nothing more can be said.
        return problems

    if len(req.symbol) > _SYMBOL_MAX or not _SYMBOL.fullmatch(req.symbol):
        add("symbol", f"'{req.symbol[:20]}' is not an upper-case ticker symbol")

    if req.client_order_id is not None and not _CLIENT_ORDER_ID.fullmatch(req.client_order_id):
        add("client_order_id", "must be 1 to 64 characters of letters, digits and . _ : -")

    _validate_size(req, add)
    _validate_prices(req, add)
    _validate_time_in_force(req, add)
    _validate_bracket(req, reference_price, add)
    return problems


def _validate_size(req: OrderRequest, add: _Add) -> None:
    if (req.quantity is None) == (req.notional is None):
        add("quantity", "give exactly one of quantity or notional")
    if req.quantity is not None:
        q = req.quantity
        if q <= 0:
            add("quantity", "must be greater than zero")
        elif q > _MAX_QUANTITY:
            add("quantity", f"must be at most {_MAX_QUANTITY:,} shares")
        elif _places(q) > QUANTITY_PLACES:
            add("quantity", f"may have at most {QUANTITY_PLACES} decimal places")
        elif not _is_whole(q) and (
            req.type not in _MARKET_OR_LIMIT or req.time_in_force is not TimeInForce.DAY
        ):
            add("quantity", "fractional quantities are only for MARKET or LIMIT orders with DAY")
    if req.notional is not None:
        n = req.notional
        if n <= 0:
            add("notional", "must be greater than zero")
        elif n > _MAX_NOTIONAL:
            add("notional", f"must be at most ${_MAX_NOTIONAL:,}")
        elif _places(n) > 2:
            add("notional", "must be in whole cents")
        if req.type is not OrderType.MARKET or req.time_in_force is not TimeInForce.DAY:
            add("notional", "notional orders must be MARKET orders with DAY time in force")


def _validate_prices(req: OrderRequest, add: _Add) -> None:
    wanted = _PRICE_FIELDS[req.type]
    given = {
        "limit_price": req.limit_price,
        "stop_price": req.stop_price,
        "trail_percent": req.trail_percent,
    }
    for name, value in given.items():
        if name in wanted and value is None:
            add(name, f"{req.type} orders need a {name}")
        elif name not in wanted and value is not None:
            add(name, f"{req.type} orders take no {name}")
    prices = {
        "limit_price": req.limit_price,
        "stop_price": req.stop_price,
        "take_profit_price": req.take_profit_price,
        "stop_loss_price": req.stop_loss_price,
    }
    for name, value in prices.items():
        if value is None:
            continue
        if value <= 0:
            add(name, "must be greater than zero")
        elif value > _MAX_PRICE:
            add(name, f"must be at most ${_MAX_PRICE:,}")
        elif value != to_tick(value, ROUND_HALF_UP):
            add(name, "must be in whole cents (0.0001 below $1)")
    t = req.trail_percent
    if t is not None and not 0 < t <= _MAX_TRAIL_PERCENT:
        add("trail_percent", f"must be above 0 and at most {_MAX_TRAIL_PERCENT}")


def _validate_time_in_force(req: OrderRequest, add: _Add) -> None:
    if req.time_in_force in _IMMEDIATE and req.type not in _MARKET_OR_LIMIT:
        add("time_in_force", f"{req.time_in_force} is only for MARKET or LIMIT orders")
    if req.extended_hours and (
        req.type is not OrderType.LIMIT or req.time_in_force is not TimeInForce.DAY
    ):
        add("extended_hours", "extended hours are only for LIMIT orders with DAY")


def _validate_bracket(req: OrderRequest, reference_price: Decimal | None, add: _Add) -> None:
    tp, sl = req.take_profit_price, req.stop_loss_price
    if tp is None and sl is None:
        return
    field = "take_profit_price" if tp is not None else "stop_loss_price"
    # The legs become a LIMIT and a STOP order for the filled quantity once the entry
    # fills, so the entry must be something that fills outright and the quantity must be
    # one a STOP order accepts.
    if req.quantity is None:
        add(field, "bracket legs need a quantity, not a notional")
    elif not _is_whole(req.quantity):
        add(field, "bracket orders need a whole number of shares")
    if req.type not in _MARKET_OR_LIMIT:
        add(field, "bracket orders enter with a MARKET or LIMIT order")
    if req.time_in_force not in (TimeInForce.DAY, TimeInForce.GTC):
        add(field, "bracket orders must be DAY or GTC")

    entry = req.limit_price if req.type is OrderType.LIMIT else reference_price
    buy = req.side is OrderSide.BUY
    # For a BUY the profit is above the entry and the stop below; a SELL mirrors it.
    if tp is not None and entry is not None and (tp <= entry if buy else tp >= entry):
        add("take_profit_price", f"must be {'above' if buy else 'below'} the entry price {entry}")
    if sl is not None and entry is not None and (sl >= entry if buy else sl <= entry):
        add("stop_loss_price", f"must be {'below' if buy else 'above'} the entry price {entry}")
    if tp is not None and sl is not None and (tp <= sl if buy else tp >= sl):
        add("take_profit_price", f"must be {'above' if buy else 'below'} the stop_loss_price")


# ---------------------------------------------------------------- cash reservation

# Reserved on top of the quote for orders whose fill price nothing caps (MARKET, STOP,
# TRAILING_STOP): the quote is seconds old when reserved and a triggered stop fills
# wherever the market is. 2% covers ordinary moves and the paper broker's 5 bps slippage;
# LIMIT and STOP_LIMIT can never pay above their limit and notional orders never spend
# above their notional (the quantity is rounded down), so those reserve no buffer.
SLIPPAGE_BUFFER = Decimal("0.02")


@dataclass(frozen=True, slots=True)
class Commission:
    """A broker's fee schedule: `per_share` with a `minimum` per fill (zero for Alpaca)."""

    per_share: Decimal = Decimal(0)
    minimum: Decimal = Decimal(0)

    def charge(self, quantity: Decimal) -> Decimal:
        """The fee for one fill of `quantity` shares, in cents; nothing when nothing fills."""
        if quantity <= 0:
            return Decimal(0)
        return max(self.minimum, quantity * self.per_share).quantize(_CENT, ROUND_HALF_UP)


def estimate_cost(
    req: OrderRequest,
    reference_price: Decimal | None,
    commission: Commission = Commission(),
) -> Decimal:
    """The cash to reserve for a BUY, rounded up to the cent; zero for a SELL.

    quantity x unit price + commission, where the unit price is the limit for LIMIT and
    STOP_LIMIT, and the quote (for a STOP the higher of quote and stop; for a
    TRAILING_STOP the quote plus the trail) times 1 + SLIPPAGE_BUFFER otherwise. A
    notional order reserves its notional plus the commission on notional / quote shares.
    SELLs reserve nothing: closing a long frees cash, and shorts are governed by the
    short-selling rule and the broker's margin, not by this reservation.

    Raises ValueError when the order needs a quote and `reference_price` is None: the
    caller must not place such an order blind.
    """
    if req.side is OrderSide.SELL:
        return Decimal(0)
    if req.notional is not None:
        if reference_price is None:
            raise ValueError("a notional order needs a quote to reserve its cost")
        return _ceil_cents(req.notional) + commission.charge(req.notional / reference_price)
    if req.quantity is None:
        raise ValueError("an order needs a quantity or a notional")
    return _ceil_cents(req.quantity * _unit_price(req, reference_price)) + commission.charge(
        req.quantity
    )


def _unit_price(req: OrderRequest, reference_price: Decimal | None) -> Decimal:
    if req.type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        assert req.limit_price is not None, "validate_order first"
        return req.limit_price
    if req.type is OrderType.STOP and req.stop_price is not None:
        # A buy stop fires at or above its stop, so the stop is the least it will cost.
        base = max(req.stop_price, reference_price or req.stop_price)
    elif reference_price is None:
        raise ValueError(f"a {req.type} order needs a quote to reserve its cost")
    elif req.type is OrderType.TRAILING_STOP and req.trail_percent is not None:
        # The low-water mark starts at the quote and only falls, so this is the highest
        # trigger the order can have.
        base = reference_price * (1 + req.trail_percent / 100)
    else:
        base = reference_price
    return base * (1 + SLIPPAGE_BUFFER)


def _ceil_cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, ROUND_CEILING)
