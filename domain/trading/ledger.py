"""Positions and P&L derived from fills, first in first out, plus portfolio performance.

Conventions the engine relies on:

- A lot's quantity carries the position's sign (negative for a short), so the cost basis
  `sum(lot.quantity * lot.price)` is what was paid for a long and minus what was received
  for a short.
- Commission is an expense of the fill that paid it and goes to realized P&L at once,
  opening fills included; it is never capitalised into a lot. So `average_cost` is the
  plain average entry price a broker shows, and a round trip's realized P&L is the price
  difference minus both commissions.
- Nothing is rounded: products of 9-decimal quantities and 4-decimal prices stay exact
  within Decimal's 28 digits, which is what lets the books reconcile exactly.

Reconciliation identity. With `cash_flow` as the only thing that moves cash,

    starting_cash == cash + sum(state.cost_basis) - sum(state.realized_pnl)

over all symbols, after any sequence of fills. Each fill keeps it: a BUY of q at p with
commission c moves cash by -(q*p + c); opening, it adds q*p to the cost basis and -c to
realized; closing a short lot opened at p0 it adds q*p0 to the cost basis (the lot's
-q*p0 leaves) and q*(p0 - p) - c to realized; either way the sum changes by 0. SELLs
mirror it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from domain.trading.types import OrderSide

_NEW_YORK = ZoneInfo("America/New_York")
_TRADING_DAYS_PER_YEAR = 252
_PLACES = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Lot:
    quantity: Decimal  # signed like the position it belongs to
    price: Decimal


@dataclass(frozen=True, slots=True)
class PositionState:
    """One symbol's open lots (oldest first) and the P&L realized on it so far."""

    lots: tuple[Lot, ...] = ()
    realized_pnl: Decimal = Decimal(0)

    @property
    def quantity(self) -> Decimal:
        return sum((lot.quantity for lot in self.lots), Decimal(0))

    @property
    def cost_basis(self) -> Decimal:
        return sum((lot.quantity * lot.price for lot in self.lots), Decimal(0))

    @property
    def average_cost(self) -> Decimal | None:
        """Average entry price of the open lots (positive for longs and shorts); None when flat."""
        quantity = self.quantity
        return self.cost_basis / quantity if quantity else None


def cash_flow(side: OrderSide, quantity: Decimal, price: Decimal, commission: Decimal) -> Decimal:
    """The signed change in cash one fill causes."""
    gross = quantity * price
    return -gross - commission if side is OrderSide.BUY else gross - commission


def apply_fill(
    state: PositionState,
    side: OrderSide,
    quantity: Decimal,
    price: Decimal,
    commission: Decimal,
) -> tuple[PositionState, Decimal]:
    """The position after one fill and the P&L it realized (commission included).

    The fill first closes opposite-signed lots oldest first; whatever is left opens a
    new lot, so a SELL larger than a long flips it short in one step.
    """
    if quantity <= 0 or price <= 0 or commission < 0:
        raise ValueError(f"bad fill: {quantity} @ {price}, commission {commission}")
    signed = quantity if side is OrderSide.BUY else -quantity
    lots = list(state.lots)
    realized = -commission
    remaining = signed
    # Closing lots have the opposite sign of the fill; FIFO means from the front.
    while lots and remaining and (lots[0].quantity > 0) != (remaining > 0):
        lot = lots[0]
        closed = min(abs(lot.quantity), abs(remaining)).copy_sign(lot.quantity)
        realized += closed * (price - lot.price)
        remaining += closed
        if closed == lot.quantity:
            lots.pop(0)
        else:
            lots[0] = Lot(lot.quantity - closed, lot.price)
    if remaining:
        lots.append(Lot(remaining, price))
    return PositionState(tuple(lots), state.realized_pnl + realized), realized


def unrealized(state: PositionState, price: Decimal) -> Decimal:
    """What closing every open lot at `price` would realize, before commission."""
    return state.quantity * price - state.cost_basis


# ---------------------------------------------------------------- performance


@dataclass(frozen=True, slots=True)
class Performance:
    total_return_percent: Decimal
    max_drawdown_percent: Decimal  # as a positive number: 12.5 means a 12.5% fall from a peak
    sharpe_ratio: Decimal | None
    win_rate: Decimal | None  # fraction of winning trades, 0..1
    trades: int


def performance(
    equity_points: Sequence[tuple[datetime, Decimal]],
    closed_trade_pnls: Sequence[Decimal],
    starting: Decimal,
) -> Performance:
    """Portfolio statistics over an equity history (oldest first) and its closed trades.

    - Returns are measured against `starting`, which is also the first peak for drawdown;
      deposits and withdrawals are not separated out.
    - Sharpe uses each New York trading day's last equity point, daily simple returns,
      a zero risk-free rate, the sample standard deviation and sqrt(252); it is None
      with fewer than two daily returns or returns that never vary.
    - A closed trade is one fill that closed (part of) a position, its P&L the realized
      delta `apply_fill` returned; breakeven counts as not winning. The win rate is None
      without trades.
    """
    last = equity_points[-1][1] if equity_points else starting
    total_return = (last - starting) / starting * 100 if starting > 0 else Decimal(0)

    peak = starting
    max_drawdown = Decimal(0)
    for _, equity in equity_points:
        peak = max(peak, equity)
        if peak > 0:
            max_drawdown = max(max_drawdown, (peak - equity) / peak * 100)

    wins = sum(1 for pnl in closed_trade_pnls if pnl > 0)
    trades = len(closed_trade_pnls)
    win_rate = (Decimal(wins) / trades).quantize(_PLACES) if trades else None

    return Performance(
        total_return_percent=total_return.quantize(_PLACES, ROUND_HALF_EVEN),
        max_drawdown_percent=max_drawdown.quantize(_PLACES, ROUND_HALF_EVEN),
        sharpe_ratio=_sharpe(equity_points),
        win_rate=win_rate,
        trades=trades,
    )


def _sharpe(equity_points: Sequence[tuple[datetime, Decimal]]) -> Decimal | None:
    closes: dict[date, Decimal] = {}
    for at, equity in equity_points:
        closes[at.astimezone(_NEW_YORK).date()] = equity  # the day's last point wins
    values = [float(v) for v in closes.values()]
    returns = [b / a - 1 for a, b in itertools.pairwise(values) if a > 0]
    if len(returns) < 2:
        return None
    mean = math.fsum(returns) / len(returns)
    variance = math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    # Float noise makes a flat series' variance tiny rather than zero.
    if variance <= 1e-24:
        return None
    ratio = mean / math.sqrt(variance) * math.sqrt(_TRADING_DAYS_PER_YEAR)
    return Decimal(repr(ratio)).quantize(_PLACES, ROUND_HALF_EVEN)
