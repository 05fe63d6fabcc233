"""Risk checks as pure functions: every order passes `check` (and an agent's also
`check_agent`) before it reaches a broker. A failed check denies with a rule name and a
reason; nothing here raises for a user's mistake.

`check` evaluates every rule, in the order of `Rule`, and records each in `checks` so an
execution record shows the whole picture; the first failure names the decision's rule:

1. tradable_symbol       the symbol is tradable at the broker
2. extended_hours        an extended-hours order needs `allow_extended_hours`
3. market_hours          see below
4. short_selling         a SELL beyond what is held and not already being sold is a
                         short, refused unless `allow_short`
5. pattern_day_trader    equity under $25,000 may not make a 4th day trade in 5 sessions
6. max_daily_trades      orders placed today, this one included
7. buying_power          a BUY's `estimate_cost` within buying power
8. max_position_value    the symbol's exposure after this and its open orders fill
9. max_position_percent  the same as a percent of equity
10. max_sector_percent   the sector's exposure after the order, as a percent of equity

Checks 8-10 measure the position at the quote, long or short alike, and always let an
order through that shrinks the position, so a user over a limit (prices moved) can exit.
A symbol with no known sector passes check 10. Optional limits that are not set are not
recorded.

Market closed: the order passes `market_hours` when it is an extended-hours order the
limits allow, or when the caller sets `queue_when_closed` and the order is DAY or GTC:
the engine then accepts it and the broker fills it in the next session (as Alpaca does).
Without `queue_when_closed` the rule fails, the engine's MarketClosed answer. IOC and
FOK orders can never wait. The engine picks the policy per caller: a person's order may
queue, while an agent acting on a quote that will be stale by the open should not.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import NamedTuple

from domain.trading.orders import Commission, estimate_cost, to_tick
from domain.trading.types import OrderRequest, OrderSide, OrderType, TimeInForce

_PDT_EQUITY = Decimal(25_000)
_PDT_MAX_DAY_TRADES = 3  # in 5 business days; the 4th is refused


class Rule(enum.StrEnum):
    TRADABLE_SYMBOL = "tradable_symbol"
    EXTENDED_HOURS = "extended_hours"
    MARKET_HOURS = "market_hours"
    SHORT_SELLING = "short_selling"
    PATTERN_DAY_TRADER = "pattern_day_trader"
    MAX_DAILY_TRADES = "max_daily_trades"
    BUYING_POWER = "buying_power"
    MAX_POSITION_VALUE = "max_position_value"
    MAX_POSITION_PERCENT = "max_position_percent"
    MAX_SECTOR_PERCENT = "max_sector_percent"
    AGENT_MAX_DAILY_TRADES = "agent_max_daily_trades"
    AGENT_ALLOCATION = "agent_allocation"
    AGENT_MAX_POSITION_VALUE = "agent_max_position_value"


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """A user's limits. Raises ValueError (with a message fit for the user) when absurd."""

    max_position_value: Decimal | None = None  # per symbol, dollars
    max_position_percent: Decimal | None = None  # of equity, 0..100
    max_daily_trades: int | None = None
    max_sector_percent: Decimal | None = None  # of equity, 0..100
    stop_loss_percent: Decimal | None = None  # protective stop distance, see protective_stop
    allow_short: bool = False
    allow_extended_hours: bool = False

    def __post_init__(self) -> None:
        if self.max_position_value is not None and not self.max_position_value > 0:
            raise ValueError("max_position_value must be greater than zero")
        for name in ("max_position_percent", "max_sector_percent"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 100:
                raise ValueError(f"{name} must be above 0 and at most 100")
        if self.max_daily_trades is not None and self.max_daily_trades < 0:
            raise ValueError("max_daily_trades must not be negative")
        if self.stop_loss_percent is not None and not 0 < self.stop_loss_percent < 100:
            raise ValueError("stop_loss_percent must be above 0 and below 100")


class Holding(NamedTuple):
    quantity: Decimal  # negative for a short
    market_value: Decimal  # signed like quantity


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    buying_power: Decimal  # cash the account may still commit: reservations already taken off
    equity: Decimal
    positions: Mapping[str, Holding] = field(default_factory=dict)
    # Unfilled quantity of open orders per symbol (a bracket's OCO exits counted once).
    open_buy_quantity: Mapping[str, Decimal] = field(default_factory=dict)
    open_sell_quantity: Mapping[str, Decimal] = field(default_factory=dict)
    sectors: Mapping[str, str] = field(default_factory=dict)  # of each held symbol
    trades_today: int = 0  # orders placed in the current session
    day_trades_last_5_sessions: int = 0


@dataclass(frozen=True, slots=True)
class OrderContext:
    request: OrderRequest
    reference_price: Decimal  # the latest quote; the engine places nothing without one
    tradable: bool
    market_open: bool
    sector: str | None = None
    # The order would close (part of) a position opened earlier in this same session.
    closes_day_trade: bool = False
    queue_when_closed: bool = False
    commission: Commission = field(default_factory=Commission)


class RiskCheck(NamedTuple):
    rule: Rule
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class RiskDecision:
    approved: bool
    rule: Rule | None  # the first failed rule
    message: str
    checks: tuple[RiskCheck, ...]
    cost: Decimal  # estimate_cost of the order: what the engine reserves when approved


def check(ctx: OrderContext, account: AccountSnapshot, limits: RiskLimits) -> RiskDecision:
    """The user's risk rules for an order `validate_order` accepted; see the module notes."""
    req = ctx.request
    cost = estimate_cost(req, ctx.reference_price, ctx.commission)
    quantity = _quantity(req, ctx.reference_price)
    checks: list[RiskCheck] = [
        RiskCheck(
            Rule.TRADABLE_SYMBOL,
            ctx.tradable,
            f"{req.symbol} is tradable" if ctx.tradable else f"{req.symbol} is not tradable",
        )
    ]
    if req.extended_hours:
        checks.append(
            RiskCheck(
                Rule.EXTENDED_HOURS,
                limits.allow_extended_hours,
                "extended-hours trading is allowed"
                if limits.allow_extended_hours
                else "extended-hours trading is turned off in your risk limits",
            )
        )
    checks.append(_market_hours(ctx, limits))
    if req.side is OrderSide.SELL:
        checks.append(_short_selling(req.symbol, quantity, account, limits))
    checks.append(_pattern_day_trader(ctx, account))
    if limits.max_daily_trades is not None:
        passed = account.trades_today < limits.max_daily_trades
        checks.append(
            RiskCheck(
                Rule.MAX_DAILY_TRADES,
                passed,
                f"{account.trades_today} of {limits.max_daily_trades} trades placed today",
            )
        )
    if req.side is OrderSide.BUY:
        checks.append(
            RiskCheck(
                Rule.BUYING_POWER,
                cost <= account.buying_power,
                f"needs ${cost:,.2f} of ${account.buying_power:,.2f} buying power",
            )
        )

    held = account.positions.get(req.symbol, Holding(Decimal(0), Decimal(0))).quantity
    before, after = _projection(
        req.side,
        quantity,
        held,
        account.open_buy_quantity.get(req.symbol, Decimal(0)),
        account.open_sell_quantity.get(req.symbol, Decimal(0)),
    )
    value = _dollars(abs(after) * ctx.reference_price)
    shrinks = abs(after) <= abs(before)
    if limits.max_position_value is not None:
        checks.append(
            RiskCheck(
                Rule.MAX_POSITION_VALUE,
                shrinks or value <= limits.max_position_value,
                f"{req.symbol} would be worth ${value:,.2f}; "
                f"the limit is ${limits.max_position_value:,.2f}",
            )
        )
    if limits.max_position_percent is not None:
        checks.append(
            _percent_of_equity(
                Rule.MAX_POSITION_PERCENT,
                req.symbol,
                value,
                account.equity,
                limits.max_position_percent,
                shrinks,
            )
        )
    if limits.max_sector_percent is not None:
        if ctx.sector is None:
            checks.append(
                RiskCheck(Rule.MAX_SECTOR_PERCENT, True, f"{req.symbol} has no known sector")
            )
        else:
            others = sum(
                (
                    abs(h.market_value)
                    for s, h in account.positions.items()
                    if s != req.symbol and account.sectors.get(s) == ctx.sector
                ),
                Decimal(0),
            )
            checks.append(
                _percent_of_equity(
                    Rule.MAX_SECTOR_PERCENT,
                    ctx.sector,
                    others + value,
                    account.equity,
                    limits.max_sector_percent,
                    shrinks,
                )
            )
    return _decide(checks, cost)


def _quantity(req: OrderRequest, price: Decimal) -> Decimal:
    """The order's shares, a notional one's at the quote."""
    if req.quantity is not None:
        return req.quantity
    if req.notional is None:
        raise ValueError("an order needs a quantity or a notional: validate_order first")
    return req.notional / price


def _dollars(value: Decimal) -> Decimal:
    # A notional order's shares are notional / price: multiplied back, the last of 28
    # digits can land a hair above the notional ($5,000 would fail a $5,000 limit).
    return value.quantize(Decimal("0.01"))


def _projection(
    side: OrderSide, quantity: Decimal, held: Decimal, open_buys: Decimal, open_sells: Decimal
) -> tuple[Decimal, Decimal]:
    """The position once the open orders on this order's side fill, without and with it."""
    if side is OrderSide.BUY:
        before = held + open_buys
        return before, before + quantity
    before = held - open_sells
    return before, before - quantity


def _market_hours(ctx: OrderContext, limits: RiskLimits) -> RiskCheck:
    req = ctx.request
    if ctx.market_open:
        return RiskCheck(Rule.MARKET_HOURS, True, "the market is open")
    if req.extended_hours and limits.allow_extended_hours:
        return RiskCheck(Rule.MARKET_HOURS, True, "extended-hours order outside the session")
    if ctx.queue_when_closed and req.time_in_force in (TimeInForce.DAY, TimeInForce.GTC):
        return RiskCheck(
            Rule.MARKET_HOURS, True, "the market is closed; the order waits for the next session"
        )
    return RiskCheck(Rule.MARKET_HOURS, False, "the market is closed")


def _short_selling(
    symbol: str, quantity: Decimal, account: AccountSnapshot, limits: RiskLimits
) -> RiskCheck:
    held = account.positions.get(symbol, Holding(Decimal(0), Decimal(0))).quantity
    selling = account.open_sell_quantity.get(symbol, Decimal(0))
    available = max(held, Decimal(0)) - selling
    if quantity <= available:
        return RiskCheck(Rule.SHORT_SELLING, True, f"sells {quantity} of {available} available")
    if limits.allow_short:
        return RiskCheck(Rule.SHORT_SELLING, True, "opens or adds to a short; shorts are allowed")
    return RiskCheck(
        Rule.SHORT_SELLING,
        False,
        f"you can sell {max(available, Decimal(0))} {symbol} ({held} held, {selling} already "
        f"being sold); selling {quantity} would sell short, which your risk limits forbid",
    )


def _pattern_day_trader(ctx: OrderContext, account: AccountSnapshot) -> RiskCheck:
    if not ctx.closes_day_trade:
        return RiskCheck(Rule.PATTERN_DAY_TRADER, True, "not a day trade")
    if account.equity >= _PDT_EQUITY:
        return RiskCheck(Rule.PATTERN_DAY_TRADER, True, "equity is at least $25,000")
    count = account.day_trades_last_5_sessions
    return RiskCheck(
        Rule.PATTERN_DAY_TRADER,
        count < _PDT_MAX_DAY_TRADES,
        f"day trade {count + 1} in 5 sessions; with equity under $25,000 "
        f"at most {_PDT_MAX_DAY_TRADES} are allowed",
    )


def _percent_of_equity(
    rule: Rule, name: str, value: Decimal, equity: Decimal, limit: Decimal, shrinks: bool
) -> RiskCheck:
    if equity <= 0:
        return RiskCheck(rule, shrinks, "equity is not positive")
    percent = value / equity * 100
    return RiskCheck(
        rule,
        shrinks or percent <= limit,
        f"{name} would be {percent:.2f}% of equity; limit {limit}%",
    )


def _decide(checks: list[RiskCheck], cost: Decimal) -> RiskDecision:
    for c in checks:
        if not c.passed:
            return RiskDecision(False, c.rule, c.detail, tuple(checks), cost)
    return RiskDecision(True, None, "all risk checks passed", tuple(checks), cost)


def protective_stop(
    req: OrderRequest, fill_quantity: Decimal, fill_price: Decimal, limits: RiskLimits
) -> OrderRequest | None:
    """The automatic GTC stop `stop_loss_percent` away from a fill that opened a position.

    Call it only for fills that open or add to a position. None when no stop is set, the
    order brought its own stop-loss leg, or less than one whole share filled (STOP orders
    take whole shares; the fraction stays unprotected).
    """
    if limits.stop_loss_percent is None or req.stop_loss_price is not None:
        return None
    shares = fill_quantity.to_integral_value(ROUND_FLOOR)
    if shares < 1:
        return None
    distance = limits.stop_loss_percent / 100
    if req.side is OrderSide.BUY:
        side, stop = OrderSide.SELL, to_tick(fill_price * (1 - distance), ROUND_FLOOR)
    else:
        side, stop = OrderSide.BUY, to_tick(fill_price * (1 + distance), ROUND_CEILING)
    return OrderRequest(
        symbol=req.symbol,
        side=side,
        type=OrderType.STOP,
        time_in_force=TimeInForce.GTC,
        quantity=shares,
        stop_price=stop,
        agent_id=req.agent_id,
    )


# ---------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class AgentLimits:
    allocation_percent: Decimal  # of the user's equity, 0..100
    max_position_value: Decimal | None = None
    max_daily_trades: int | None = None


class AgentHolding(NamedTuple):
    quantity: Decimal
    cost_basis: Decimal


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    equity: Decimal  # the user's whole portfolio
    positions: Mapping[str, AgentHolding] = field(default_factory=dict)
    reserved: Decimal = Decimal(0)  # cash reserved for the agent's open orders
    open_buy_quantity: Mapping[str, Decimal] = field(default_factory=dict)
    trades_today: int = 0


class Allocation(NamedTuple):
    amount: Decimal  # allocation_percent of equity
    used: Decimal  # cost basis of the agent's positions + reserved for its open orders

    @property
    def available(self) -> Decimal:
        return self.amount - self.used


def agent_allocation(agent: AgentSnapshot, limits: AgentLimits) -> Allocation:
    amount = agent.equity * limits.allocation_percent / 100
    # A short ties up capital as much as a long, so cost bases count by magnitude.
    held = sum((abs(h.cost_basis) for h in agent.positions.values()), Decimal(0))
    return Allocation(amount, held + agent.reserved)


def check_agent(ctx: OrderContext, agent: AgentSnapshot, limits: AgentLimits) -> RiskDecision:
    """An agent's own limits, checked before the user's `check`; both must approve.

    Order: agent_max_daily_trades, agent_allocation (BUYs only), agent_max_position_value
    (the agent's own position in the symbol, shrinking always allowed).
    """
    req = ctx.request
    cost = estimate_cost(req, ctx.reference_price, ctx.commission)
    checks: list[RiskCheck] = []
    if limits.max_daily_trades is not None:
        checks.append(
            RiskCheck(
                Rule.AGENT_MAX_DAILY_TRADES,
                agent.trades_today < limits.max_daily_trades,
                f"the agent placed {agent.trades_today} of {limits.max_daily_trades} trades today",
            )
        )
    if req.side is OrderSide.BUY:
        available = agent_allocation(agent, limits).available
        checks.append(
            RiskCheck(
                Rule.AGENT_ALLOCATION,
                cost <= available,
                f"needs ${cost:,.2f} of the ${max(available, Decimal(0)):,.2f} left "
                "in the agent's allocation",
            )
        )
    if limits.max_position_value is not None:
        held = agent.positions.get(req.symbol, AgentHolding(Decimal(0), Decimal(0))).quantity
        before, after = _projection(
            req.side,
            _quantity(req, ctx.reference_price),
            held,
            agent.open_buy_quantity.get(req.symbol, Decimal(0)),
            Decimal(0),
        )
        value = _dollars(abs(after) * ctx.reference_price)
        checks.append(
            RiskCheck(
                Rule.AGENT_MAX_POSITION_VALUE,
                abs(after) <= abs(before) or value <= limits.max_position_value,
                f"the agent's {req.symbol} would be worth ${value:,.2f}; "
                f"its limit is ${limits.max_position_value:,.2f}",
            )
        )
    return _decide(checks, cost)


def shrink_to_allocation(
    ctx: OrderContext, agent: AgentSnapshot, limits: AgentLimits
) -> OrderRequest | None:
    """The agent's BUY cut down to what its allocation can pay for, or None if nothing fits.

    The request comes back unchanged when it already fits (and for SELLs). A quantity
    shrinks to whole shares if it was whole and to 9 decimal places otherwise; a notional
    to whole cents. The answer is the largest such size whose `estimate_cost` fits.
    """
    req = ctx.request
    available = agent_allocation(agent, limits).available
    if req.side is OrderSide.SELL or estimate_cost(req, ctx.reference_price, ctx.commission) <= (
        available
    ):
        return req
    if req.notional is not None:
        size, step = req.notional, Decimal("0.01")
    elif req.quantity is not None:
        whole = req.quantity == req.quantity.to_integral_value()
        size, step = req.quantity, Decimal(1) if whole else Decimal("1e-9")
    else:
        raise ValueError("an order needs a quantity or a notional: validate_order first")

    def resized(steps: int) -> OrderRequest:
        if req.notional is not None:
            return replace(req, notional=step * steps)
        return replace(req, quantity=step * steps)

    # estimate_cost grows with size, so bisect on the number of steps.
    low, high = 0, int(size / step)
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_cost(resized(mid), ctx.reference_price, ctx.commission) <= available:
            low = mid
        else:
            high = mid - 1
    return resized(low) if low else None
