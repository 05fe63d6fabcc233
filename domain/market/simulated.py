"""The simulated market: Kianax's default market-data provider (no keys, no network).

Price model
-----------
Everything is a pure function of (seed, symbol, time) plus the scripted moves, so
prices never depend on which calls came first. Random numbers come from a
counter-based generator (a SplitMix64 hash of a stable per-(seed, symbol, purpose)
key and a counter such as the session's date ordinal), so any session can be
generated alone, in any order, vectorised with numpy.

* Daily: one log-return per XNYS session, scaled by the symbol's annual volatility,
  a two-week volatility regime, occasional jumps and the session's length (half days
  move less). Closes are chained from `SymbolSpec.base_price` at the anchor session
  (2 January 2025), forwards and backwards; part of each return happens overnight,
  as the gap between the previous close and the open.
* Intraday: a Brownian bridge from the session's open to its close, one point per
  minute, with U-shaped volatility and volume (heavy at the open and the close).
  Inside each minute the price runs open -> high -> low -> close (or low first) along
  straight lines, so quotes move every second and always stay within the minute
  bar's range.
* Outside a session nothing trades: the last price is the previous session's close
  and the volume that session's total.
* Scripted moves multiply the path from their start on: by (1 + percent/100)
  reached linearly over `over`, then kept. A move scripted while the market is
  closed shows up as a gap at the next open.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from domain.market.calendar import SessionTable, session_table
from domain.market.models import Bar, NewsItem, Quote, SecurityInfo, Sentiment, Timeframe
from domain.market.universe import BY_SYMBOL, UNIVERSE, SymbolSpec

ANCHOR_DAY = date(2025, 1, 2)
NEWS_SOURCE = "Kianax Simulated Wire"

_NEW_YORK = ZoneInfo("America/New_York")
_FULL_SESSION_MINUTES = 390
_TRADING_DAYS_PER_YEAR = 252
_NEWS_LOOKBACK_DAYS = 730
_INTRADAY_MINUTES = {
    Timeframe.MINUTE: 1,
    Timeframe.FIVE_MINUTES: 5,
    Timeframe.FIFTEEN_MINUTES: 15,
    Timeframe.HOUR: 60,
}

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

# ---------------------------------------------------------------------------
# Counter-based randomness

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _stable_key(*parts: object) -> int:
    # Python's hash() is salted per process; blake2b keeps keys identical across runs.
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _uniform(key: int, counters: NDArray[np.uint64]) -> Floats:
    """SplitMix64 of (key, counter) mapped to (0, 1); uint64 arithmetic wraps by design."""
    z = counters * np.uint64(_GOLDEN) + np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def _normal(key: int, counters: NDArray[np.uint64]) -> Floats:
    doubled = counters * np.uint64(2)
    u1 = _uniform(key, doubled)
    u2 = _uniform(key, doubled + np.uint64(1))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def _unit(key: int, counter: int) -> float:
    """Scalar twin of `_uniform` for the few draws news needs."""
    z = (counter * _GOLDEN + key) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    z ^= z >> 31
    return ((z >> 11) + 0.5) / (1 << 53)


# ---------------------------------------------------------------------------
# Small helpers


def _cents(value: float) -> Decimal:
    # Formatting rounds the float correctly and is several times faster than quantize().
    return Decimal(f"{value:.2f}")


def _posix(t: datetime) -> float:
    if t.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return t.timestamp()


K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)


# ---------------------------------------------------------------------------
# Model data


@dataclass(frozen=True, slots=True)
class _Daily:
    """Per-session series for one symbol over the whole calendar window, before scripted moves."""

    log_open: Floats
    log_close: Floats
    sigma: Floats  # log-volatility of the session
    volume: Floats  # expected shares traded in the session


@dataclass(frozen=True, slots=True)
class _Session:
    """One symbol's minute path for one session, before scripted moves."""

    open_ts: float
    close_ts: float
    minutes: int
    # Per minute: the price at its four vertices (open, first extreme, second extreme,
    # close) and where inside the minute each vertex falls (0, f1, f2, 1).
    prices: Floats
    fractions: Floats
    volumes: Ints
    cum_volume: Ints  # cum_volume[k] = shares traded before minute k

    def point(self, elapsed: float) -> tuple[float, int]:
        """Unshifted price and cumulative volume `elapsed` seconds after the open."""
        k = int(elapsed // 60.0)
        f = elapsed / 60.0 - k
        p0, p1, p2, p3 = self.prices[k].tolist()
        _, f1, f2, _ = self.fractions[k].tolist()
        if f < f1:
            price = p0 + (p1 - p0) * f / f1
        elif f < f2:
            price = p1 + (p2 - p1) * (f - f1) / (f2 - f1)
        else:
            price = p2 + (p3 - p2) * (f - f2) / (1.0 - f2)
        volume = int(self.cum_volume[k]) + math.ceil(int(self.volumes[k]) * f)
        return price, volume


@dataclass(frozen=True, slots=True)
class _Minutes:
    """Minute bars of one session up to some instant, after scripted moves."""

    index: Ints  # minute number within the session
    open: Floats
    high: Floats
    low: Floats
    close: Floats
    volume: Ints
    vwap: Floats


# (start POSIX seconds, open, high, low, close, volume, vwap)
_RawBar = tuple[float, float, float, float, float, int, float]


@dataclass(frozen=True, slots=True)
class ScriptedMove:
    symbol: str
    percent: Decimal
    at: datetime
    over: timedelta


@dataclass(frozen=True, slots=True)
class _Ramp:
    start: float
    seconds: float
    log_factor: float

    def at(self, ts: float) -> float:
        if ts <= self.start:
            return 0.0
        if self.seconds <= 0.0 or ts >= self.start + self.seconds:
            return self.log_factor
        return self.log_factor * (ts - self.start) / self.seconds


def _intraday_profile(minutes: int) -> Floats:
    """Share of session volume per minute: U-shaped, heaviest at the open, then the close."""
    since_open = np.arange(minutes, dtype=np.float64) + 0.5
    to_close = minutes - since_open
    weights = 1.0 + 2.5 * np.exp(-since_open / 20.0) + 1.8 * np.exp(-to_close / 25.0)
    result: Floats = weights / weights.sum()
    return result


# ---------------------------------------------------------------------------
# News templates

_SECTOR_NEWS: dict[str, tuple[tuple[Sentiment, str, str], ...]] = {
    "Technology": (
        (Sentiment.POSITIVE, "{name} beats revenue estimates on AI and cloud demand",
         "Quarterly sales topped consensus as data-center customers expanded orders."),
        (Sentiment.POSITIVE, "{name} unveils next-generation platform; analysts upbeat",
         "The launch extends {symbol}'s lead and several brokers lifted targets."),
        (Sentiment.NEGATIVE, "{name} warns of softer enterprise spending",
         "Management trimmed its outlook, citing longer sales cycles."),
        (Sentiment.NEGATIVE, "Export curbs cloud the outlook for {name}",
         "New restrictions could weigh on {symbol}'s overseas revenue."),
        (Sentiment.NEUTRAL, "{name} opens annual developer conference",
         "Product roadmaps and partner announcements are expected this week."),
    ),
    "Communication Services": (
        (Sentiment.POSITIVE, "{name} subscriber growth tops forecasts",
         "Net additions beat expectations and engagement rose."),
        (Sentiment.POSITIVE, "Advertising revenue at {name} comes in ahead of estimates",
         "Ad pricing firmed as marketers returned to digital channels."),
        (Sentiment.NEGATIVE, "{name} faces new antitrust complaint",
         "Regulators allege anticompetitive practices; {symbol} says it will contest."),
        (Sentiment.NEGATIVE, "{name} loses subscribers as competition intensifies",
         "Churn ticked higher after recent price increases."),
        (Sentiment.NEUTRAL, "{name} reorganizes its content and media divisions",
         "The company says the new structure takes effect next quarter."),
    ),
    "Consumer Discretionary": (
        (Sentiment.POSITIVE, "{name} posts strong quarterly sales as shoppers spend",
         "Comparable sales beat estimates and margins widened."),
        (Sentiment.NEGATIVE, "{name} cuts outlook as consumers pull back",
         "Management pointed to weaker discretionary demand."),
        (Sentiment.NEGATIVE, "Tariff costs squeeze margins at {name}",
         "Higher import costs weighed on gross margin in the quarter."),
        (Sentiment.NEUTRAL, "{name} names new chief operating officer",
         "The appointment is part of a planned leadership transition."),
    ),
    "Consumer Staples": (
        (Sentiment.POSITIVE, "{name} lifts full-year guidance on pricing power",
         "Steady volumes and price increases supported earnings."),
        (Sentiment.NEGATIVE, "Volume declines weigh on {name}",
         "Consumers traded down to private-label alternatives."),
        (Sentiment.NEUTRAL, "{name} declares regular quarterly dividend",
         "The payout is unchanged from the previous quarter."),
    ),
    "Financials": (
        (Sentiment.POSITIVE, "{name} trading and advisory revenue jumps",
         "Investment-banking fees rebounded and markets revenue beat estimates."),
        (Sentiment.NEGATIVE, "{name} sets aside more for credit losses",
         "Higher provisions signal caution about consumer and commercial credit."),
        (Sentiment.NEGATIVE, "{name} hit by regulatory fine",
         "The settlement resolves a long-running compliance investigation."),
        (Sentiment.NEUTRAL, "{name} clears annual stress test",
         "Capital plans are expected to be announced after the review."),
    ),
    "Health Care": (
        (Sentiment.POSITIVE, "FDA approves new {name} therapy",
         "The approval opens a large market for {symbol}'s treatment."),
        (Sentiment.POSITIVE, "{name} late-stage trial meets primary endpoint",
         "Data showed a statistically significant benefit over placebo."),
        (Sentiment.NEGATIVE, "{name} trial misses primary endpoint",
         "The company will review the data before deciding next steps."),
        (Sentiment.NEGATIVE, "Drug-pricing proposal pressures {name}",
         "Analysts see risk to revenue from proposed price negotiations."),
        (Sentiment.NEUTRAL, "{name} to present data at medical congress",
         "Several abstracts are scheduled for presentation next month."),
    ),
    "Energy": (
        (Sentiment.POSITIVE, "{name} output hits record as crude firms",
         "Production growth and higher realized prices lifted cash flow."),
        (Sentiment.NEGATIVE, "{name} profit falls on weaker oil and gas prices",
         "Lower commodity prices offset volume gains."),
        (Sentiment.NEUTRAL, "{name} keeps capital spending plan unchanged",
         "Management reaffirmed its full-year budget."),
    ),
    "Industrials": (
        (Sentiment.POSITIVE, "{name} wins multibillion-dollar order",
         "The contract adds to an already record backlog."),
        (Sentiment.NEGATIVE, "Supply-chain delays weigh on {name} deliveries",
         "Parts shortages pushed some shipments into next quarter."),
        (Sentiment.NEUTRAL, "{name} schedules investor day",
         "Executives are expected to update long-term targets."),
    ),
    "Utilities": (
        (Sentiment.POSITIVE, "Regulators approve {name} rate increase",
         "The decision supports earnings growth over the next several years."),
        (Sentiment.NEGATIVE, "Storm costs weigh on {name}",
         "Restoration expenses trimmed quarterly earnings."),
        (Sentiment.NEUTRAL, "{name} files long-term grid investment plan",
         "The plan covers transmission upgrades and new generation."),
    ),
    "Materials": (
        (Sentiment.POSITIVE, "Higher commodity prices lift {name}",
         "Realized prices rose faster than costs in the quarter."),
        (Sentiment.NEGATIVE, "{name} cuts volume guidance on weak industrial demand",
         "Customers in Europe and China slowed purchases."),
        (Sentiment.NEUTRAL, "{name} completes plant expansion",
         "The new capacity is expected to ramp through next year."),
    ),
    "Real Estate": (
        (Sentiment.POSITIVE, "Occupancy at {name} properties nears record",
         "Strong leasing demand pushed rents higher."),
        (Sentiment.NEGATIVE, "Higher rates pressure {name}",
         "Rising financing costs weigh on valuations across the REIT sector."),
        (Sentiment.NEUTRAL, "{name} announces portfolio acquisition",
         "The deal is expected to close next quarter."),
    ),
    "ETF": (
        (Sentiment.POSITIVE, "Inflows into {name} surge as risk appetite returns",
         "Investors added to {symbol} for a third straight week."),
        (Sentiment.NEGATIVE, "Investors pull money from {name} amid market jitters",
         "Outflows from {symbol} accelerated as volatility rose."),
        (Sentiment.NEUTRAL, "{name} completes quarterly rebalance",
         "Index changes took effect after the close."),
    ),
}  # fmt: skip

_GENERIC_NEWS: tuple[tuple[Sentiment, str, str], ...] = (
    (Sentiment.POSITIVE, "Analysts raise price targets on {name} ({symbol})",
     "Several brokers lifted estimates after recent checks."),
    (Sentiment.POSITIVE, "{name} expands share buyback",
     "The board authorized additional repurchases."),
    (Sentiment.NEGATIVE, "{name} ({symbol}) downgraded on valuation",
     "An analyst moved to neutral, saying the good news is priced in."),
    (Sentiment.NEGATIVE, "{name} shares slip after executive departure",
     "The company said the search for a successor has begun."),
    (Sentiment.NEUTRAL, "{name} schedules quarterly results release",
     "A conference call will follow the release."),
    (Sentiment.NEUTRAL, "{name} ({symbol}) to present at industry conference",
     "Management will host a fireside chat with investors."),
)  # fmt: skip


# ---------------------------------------------------------------------------
# The market


class SimulatedMarket:
    """A seeded, deterministic MarketDataProvider over `universe.UNIVERSE`.

    `clock` decides what "now" is (tests pass a fixed or steppable clock); the same
    seed and clock always give the same quotes, bars and news.
    """

    def __init__(
        self,
        seed: int = 42,
        clock: Callable[[], datetime] | None = None,
        tick_interval: float = 1.0,
        *,
        session_cache_size: int = 2048,
    ) -> None:
        self.seed = seed
        self.tick_interval = tick_interval
        self._clock = clock or (lambda: datetime.now(UTC))
        self._symbols = [spec.symbol for spec in UNIVERSE]
        self._table_cache: SessionTable | None = None
        self._ordinals_cache: NDArray[np.uint64] | None = None
        self._daily: dict[str, _Daily] = {}
        self._sessions: _LRU[tuple[str, int], _Session] = _LRU(session_cache_size)
        self._summaries: _LRU[tuple[str, int], _RawBar] = _LRU(100_000)
        self._profiles: dict[int, Floats] = {}
        self._keys: dict[tuple[str, str], int] = {}
        self._ramps: dict[str, list[_Ramp]] = {}
        self._moves: list[ScriptedMove] = []
        self._news_days: _LRU[date, tuple[NewsItem, ...]] = _LRU(4096)
        self._scripted_news: list[NewsItem] = []
        self._news_weights: list[float] = []

    # -- universe ------------------------------------------------------------

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def is_known(self, symbol: str) -> bool:
        return symbol.strip().upper() in BY_SYMBOL

    async def search(self, query: str, limit: int) -> list[SecurityInfo]:
        """Symbols starting with `query` (shortest first), then names containing it."""
        needle = query.strip().upper()
        if not needle or limit <= 0:
            return []
        by_symbol = sorted(
            (spec for spec in UNIVERSE if spec.symbol.startswith(needle)),
            key=lambda spec: (len(spec.symbol), spec.symbol),
        )
        by_name = [
            spec
            for spec in UNIVERSE
            if needle in spec.name.upper() and not spec.symbol.startswith(needle)
        ]
        return [spec.info for spec in (by_symbol + by_name)[:limit]]

    async def details(self, symbol: str) -> SecurityInfo | None:
        spec = BY_SYMBOL.get(symbol.strip().upper())
        return spec.info if spec else None

    # -- quotes ----------------------------------------------------------------

    async def quote(self, symbol: str) -> Quote | None:
        return self.quote_now(symbol)

    def quote_now(self, symbol: str) -> Quote | None:
        """Synchronous `quote()`, for the stream and for callers outside an event loop."""
        spec = BY_SYMBOL.get(symbol)
        if spec is None:
            spec = BY_SYMBOL.get(symbol.strip().upper())
            if spec is None:
                return None
        now = self._clock()
        ts = _posix(now)
        table = self._table()
        idx = table.index_at(ts)
        if idx < 1:
            table.check_covers(ts)
            raise ValueError(f"{now.isoformat()} is before the simulated market's history")
        sym = spec.symbol
        session = self._session(sym, idx)
        is_open = ts < session.close_ts
        if is_open:
            price, volume = session.point(ts - session.open_ts)
            priced_at = ts
        else:
            price = float(session.prices[-1, 3])
            volume = int(session.cum_volume[-1])
            priced_at = session.close_ts
        daily = self._daily_series(sym)
        prev_close = math.exp(float(daily.log_close[idx - 1]))
        ramps = self._ramps.get(sym)
        if ramps:
            price *= math.exp(sum(ramp.at(priced_at) for ramp in ramps))
            prev_close *= math.exp(sum(ramp.at(table.closes[idx - 1]) for ramp in ramps))
        last = _cents(price)
        # Spreads tighten with liquidity and widen while the market is closed.
        spread_bps = 0.3 + 3.0 / math.sqrt(spec.average_daily_volume / 1e6)
        half = max(1, round(price * spread_bps / 200.0)) * (1 if is_open else 2)
        half_spread = Decimal(half).scaleb(-2)
        return Quote(
            symbol=sym,
            bid=max(last - half_spread, Decimal("0.01")),
            ask=last + half_spread,
            last=last,
            volume=Decimal(volume),
            timestamp=now.astimezone(UTC),
            prev_close=_cents(prev_close),
        )

    # -- bars ------------------------------------------------------------------

    async def bars(
        self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime, limit: int
    ) -> list[Bar]:
        """Bars whose start lies in [start, end] and before now, oldest first, the newest `limit`.

        Intraday bars are aligned to the session open (09:30, 09:35, ... ET; hourly
        bars start at 09:30, 10:30, ..., 15:30); DAY bars start at the session open and
        WEEK bars at the open of the week's first session. The bar still forming at
        the clock's now is included with the data up to now.
        """
        spec = BY_SYMBOL.get(symbol.strip().upper())
        if spec is None or limit <= 0:
            return []
        start_ts, end_ts = _posix(start), _posix(end)
        now_ts = _posix(self._clock())
        last_ts = min(end_ts, now_ts)
        if start_ts > last_ts:
            return []
        sym = spec.symbol
        if timeframe in _INTRADAY_MINUTES:
            size = _INTRADAY_MINUTES[timeframe]
            raw = self._intraday_bars(sym, size, start_ts, last_ts, now_ts, limit)
        elif timeframe is Timeframe.DAY:
            raw = self._day_bars(sym, start_ts, last_ts, now_ts, limit)
        else:
            raw = self._week_bars(sym, start_ts, last_ts, now_ts, limit)
        return [
            Bar(
                timestamp=datetime.fromtimestamp(ts, UTC),
                open=_cents(o),
                high=_cents(h),
                low=_cents(lo),
                close=_cents(c),
                volume=Decimal(v),
                vwap=_cents(vw),
            )
            for ts, o, h, lo, c, v, vw in raw[-limit:]
        ]

    def _intraday_bars(
        self, symbol: str, size: int, start_ts: float, last_ts: float, now_ts: float, limit: int
    ) -> list[_RawBar]:
        table = self._table()
        collected: list[list[_RawBar]] = []
        count = 0
        idx = table.index_at(last_ts)
        while idx >= 1 and count < limit and table.closes[idx] > start_ts:
            minutes = self._minutes(symbol, idx, min(now_ts, table.closes[idx]))
            if minutes is not None:
                bars = [
                    bar
                    for bar in self._aggregate(minutes, size, table.opens[idx])
                    if start_ts <= bar[0] <= last_ts and bar[0] < now_ts
                ]
                collected.append(bars)
                count += len(bars)
            idx -= 1
        return [bar for bars in reversed(collected) for bar in bars]

    def _day_bars(
        self, symbol: str, start_ts: float, last_ts: float, now_ts: float, limit: int
    ) -> list[_RawBar]:
        table = self._table()
        hi = self._last_started(last_ts, now_ts)
        lo = max(1, bisect.bisect_left(table.opens, start_ts), hi - limit + 1)
        return [self._day_summary(symbol, idx, now_ts) for idx in range(lo, hi + 1)]

    def _last_started(self, last_ts: float, now_ts: float) -> int:
        """The latest session that opened by `last_ts` and has traded before now."""
        table = self._table()
        idx = table.index_at(last_ts)
        if idx >= 0 and table.opens[idx] >= now_ts:
            idx -= 1
        return idx

    def _week_bars(
        self, symbol: str, start_ts: float, last_ts: float, now_ts: float, limit: int
    ) -> list[_RawBar]:
        table = self._table()
        hi = self._last_started(last_ts, now_ts)
        if hi < 1:
            return []
        # A week bar starting before `end` still takes the rest of its week up to now.
        week_of = table.days[hi].isocalendar()[:2]
        while (
            hi + 1 < len(table.days)
            and table.opens[hi + 1] < now_ts
            and table.days[hi + 1].isocalendar()[:2] == week_of
        ):
            hi += 1
        weeks: list[list[_RawBar]] = []
        current: tuple[int, int] | None = None
        idx = hi
        while idx >= 1:
            week = table.days[idx].isocalendar()[:2]
            if week != current:
                if weeks and (weeks[-1][0][0] < start_ts or len(weeks) > limit):
                    break
                weeks.append([])
                current = week
            weeks[-1].insert(0, self._day_summary(symbol, idx, now_ts))
            idx -= 1
        bars = [_combine(days) for days in reversed(weeks)]
        return [bar for bar in bars if start_ts <= bar[0] <= last_ts]

    def _day_summary(self, symbol: str, idx: int, now_ts: float) -> _RawBar:
        table = self._table()
        open_ts, close_ts = table.opens[idx], table.closes[idx]
        ramps = self._ramps.get(symbol, [])
        settled = now_ts >= close_ts and all(
            ramp.start >= close_ts or ramp.start + ramp.seconds < open_ts for ramp in ramps
        )
        if settled:
            # The usual case: a finished session whose scripted shift, if any, is constant.
            base = self._summaries.get((symbol, idx))
            if base is None:
                minutes = self._minutes(symbol, idx, close_ts, shifted=False, cache=False)
                assert minutes is not None
                base = _combine_minutes(minutes, open_ts)
                self._summaries.put((symbol, idx), base)
            factor = math.exp(sum(ramp.at(open_ts) for ramp in ramps))
            if factor == 1.0:
                return base
            ts, o, h, lo, c, v, vw = base
            return ts, o * factor, h * factor, lo * factor, c * factor, v, vw * factor
        minutes = self._minutes(symbol, idx, min(now_ts, close_ts))
        assert minutes is not None
        return _combine_minutes(minutes, open_ts)

    def _minutes(
        self,
        symbol: str,
        idx: int,
        upto: float,
        *,
        shifted: bool = True,
        cache: bool = True,
    ) -> _Minutes | None:
        """Session `idx`'s minute bars up to `upto`, a partial last minute included."""
        session = self._session(symbol, idx, cache=cache)
        elapsed = (min(upto, session.close_ts) - session.open_ts) / 60.0
        if elapsed <= 0.0:
            return None
        full = min(int(elapsed), session.minutes)
        partial = elapsed - full if full < session.minutes else 0.0
        prices = session.prices[:full]
        fractions = session.fractions[:full]
        ramps = self._ramps.get(symbol) if shifted else None
        if ramps:
            times = session.open_ts + 60.0 * (np.arange(full)[:, None] + fractions)
            prices = prices * np.exp(_shift(ramps, times))
        segments = np.diff(fractions, axis=1)
        midpoints = (prices[:, :-1] + prices[:, 1:]) / 2.0
        index = np.arange(full, dtype=np.int64)
        opens, closes = prices[:, 0], prices[:, 3]
        highs, lows = prices.max(axis=1), prices.min(axis=1)
        vwaps = (segments * midpoints).sum(axis=1)
        volumes = session.volumes[:full]
        if partial > 0.0:
            o, h, lo, c, vw, v = _partial_minute(session, full, partial, ramps)
            index = np.append(index, full)
            opens, highs = np.append(opens, o), np.append(highs, h)
            lows, closes = np.append(lows, lo), np.append(closes, c)
            vwaps, volumes = np.append(vwaps, vw), np.append(volumes, v)
        return _Minutes(index, opens, highs, lows, closes, volumes, vwaps)

    @staticmethod
    def _aggregate(minutes: _Minutes, size: int, open_ts: float) -> list[_RawBar]:
        buckets = minutes.index // size
        starts = np.flatnonzero(np.diff(buckets, prepend=-1))
        ends = np.append(starts[1:], len(buckets)) - 1
        volumes = np.add.reduceat(minutes.volume, starts)
        vwaps = np.add.reduceat(minutes.vwap * minutes.volume, starts) / volumes
        return list(
            zip(
                (open_ts + 60.0 * size * buckets[starts]).tolist(),
                minutes.open[starts].tolist(),
                np.maximum.reduceat(minutes.high, starts).tolist(),
                np.minimum.reduceat(minutes.low, starts).tolist(),
                minutes.close[ends].tolist(),
                volumes.tolist(),
                vwaps.tolist(),
                strict=True,
            )
        )

    # -- news ----------------------------------------------------------------

    async def news(
        self, symbols: Sequence[str] | None, limit: int, before: datetime | None = None
    ) -> list[NewsItem]:
        """Newest first; published at or before now and strictly before `before`."""
        if limit <= 0:
            return []
        now = self._clock()
        cutoff = min(now, before) if before is not None else now
        wanted = {s.strip().upper() for s in symbols} if symbols is not None else None

        def visible(item: NewsItem) -> bool:
            if item.published_at > now or (before is not None and item.published_at >= before):
                return False
            return wanted is None or not wanted.isdisjoint(item.symbols)

        found = [item for item in self._scripted_news if visible(item)]
        generated = 0
        day = cutoff.astimezone(_NEW_YORK).date()
        oldest = max(day - timedelta(days=_NEWS_LOOKBACK_DAYS), self._table().days[0])
        while day >= oldest and generated < limit:
            for item in self._news_of_day(day):
                if visible(item):
                    found.append(item)
                    generated += 1
            day -= timedelta(days=1)
        found.sort(key=lambda item: (item.published_at, item.id), reverse=True)
        return found[:limit]

    def add_news(
        self,
        headline: str,
        symbols: Sequence[str],
        *,
        summary: str | None = None,
        sentiment: Sentiment | None = None,
        relevance: Decimal | None = None,
        published_at: datetime | None = None,
    ) -> NewsItem:
        """Script a news item (published now unless `published_at` says otherwise)."""
        when = (published_at or self._clock()).astimezone(UTC)
        item = NewsItem(
            id=f"sim-scripted-{len(self._scripted_news) + 1}",
            headline=headline,
            source=NEWS_SOURCE,
            symbols=tuple(s.strip().upper() for s in symbols),
            published_at=when,
            summary=summary,
            url=None,
            sentiment=sentiment,
            relevance=relevance,
        )
        self._scripted_news.append(item)
        return item

    def _news_of_day(self, day: date) -> tuple[NewsItem, ...]:
        cached = self._news_days.get(day)
        if cached is not None:
            return cached
        key = self._key("*", "news")
        base = day.toordinal() * 64
        weekend = day.weekday() >= 5
        count = int(_unit(key, base) * 2) if weekend else 2 + int(_unit(key, base) * 4)
        items = []
        for i in range(count):
            c = base + 1 + i * 8
            spec = self._news_symbol(_unit(key, c))
            minute = int(_unit(key, c + 1) * 14 * 60)
            local = datetime.combine(day, time(6), tzinfo=_NEW_YORK) + timedelta(minutes=minute)
            sentiment = self._news_sentiment(spec.symbol, day, _unit(key, c + 2))
            templates = [
                t for t in _SECTOR_NEWS.get(spec.sector, ()) + _GENERIC_NEWS if t[0] is sentiment
            ]
            _, headline, summary = templates[int(_unit(key, c + 3) * len(templates))]
            items.append(
                NewsItem(
                    id=f"sim-{self.seed}-{day.isoformat()}-{i}",
                    headline=headline.format(name=spec.name, symbol=spec.symbol),
                    source=NEWS_SOURCE,
                    symbols=(spec.symbol,),
                    published_at=local.astimezone(UTC),
                    summary=summary.format(name=spec.name, symbol=spec.symbol),
                    url=None,
                    sentiment=sentiment,
                    relevance=Decimal(f"{0.55 + 0.44 * _unit(key, c + 4):.2f}"),
                )
            )
        result = tuple(items)
        self._news_days.put(day, result)
        return result

    def _news_symbol(self, u: float) -> SymbolSpec:
        # Larger, more traded names make the news more often.
        if not self._news_weights:
            total = 0.0
            for spec in UNIVERSE:
                total += math.sqrt(spec.average_daily_volume * float(spec.base_price))
                self._news_weights.append(total)
        target = u * self._news_weights[-1]
        return UNIVERSE[min(bisect.bisect_left(self._news_weights, target), len(UNIVERSE) - 1)]

    def _news_sentiment(self, symbol: str, day: date, u: float) -> Sentiment:
        if u < 0.2:
            return Sentiment.NEUTRAL
        # Tilt the tone towards how the stock actually did that day.
        positive_share = 0.5
        idx = self._table().index_of(day)
        if idx is not None and idx >= 1:
            daily = self._daily_series(symbol)
            move = float(daily.log_close[idx] - daily.log_close[idx - 1])
            positive_share = 0.75 if move > 0 else 0.25
        return Sentiment.POSITIVE if (u - 0.2) / 0.8 < positive_share else Sentiment.NEGATIVE

    # -- scripting ---------------------------------------------------------------

    def script_move(
        self,
        symbol: str,
        percent: Decimal,
        over: timedelta = timedelta(minutes=5),
        at: datetime | None = None,
    ) -> ScriptedMove:
        """From `at` (default now) drift `symbol` by `percent` over `over`, then stay shifted.

        `market.script_move("AAPL", Decimal("-3.5"))` makes AAPL trade 3.5% below its
        unscripted path five minutes from now, and forever after; daily bars and
        prev_close pick the shift up too. Moves compound, and while the market is
        closed they wait for the next open (where they show as a gap).
        """
        sym = symbol.strip().upper()
        if sym not in BY_SYMBOL:
            raise ValueError(f"unknown symbol {symbol!r}")
        if percent <= -100:
            raise ValueError("a move cannot take a price to zero or below")
        if over < timedelta(0):
            raise ValueError("`over` must not be negative")
        start = (at or self._clock()).astimezone(UTC)
        move = ScriptedMove(symbol=sym, percent=percent, at=start, over=over)
        self._moves.append(move)
        # Multiplying by (1 + p/100) is adding its log, so moves commute.
        ramp = _Ramp(start.timestamp(), over.total_seconds(), math.log1p(float(percent) / 100.0))
        self._ramps.setdefault(sym, []).append(ramp)
        return move

    def script_trend(
        self, symbol: str, daily_percent: Decimal, days: int, end: datetime | None = None
    ) -> list[ScriptedMove]:
        """Add `daily_percent` to each of the last `days` sessions closed by `end` (default now).

        Each session gets its own move spread over the whole session. To put a stock
        into oversold territory (RSI14 < 30) script a steady decline, e.g.

            market.script_trend("AAPL", Decimal("-3"), days=15)
            bars = await market.bars("AAPL", Timeframe.DAY, year_ago, now, 300)
            compute_indicators(bars).rsi14  # < 30

        and `Decimal("3")` for overbought (RSI14 > 70). Three percent a day for 15
        sessions is enough for names with annual volatility up to about 30%, most of
        the universe; a volatile name needs about three times its daily volatility
        (`annual_volatility / 16`), e.g. `Decimal("-10")` for TSLA, or its own
        swings keep RSI in the middle.
        """
        table = self._table()
        end_ts = _posix(end or self._clock())
        idx = table.index_at(end_ts)
        if idx >= 0 and table.closes[idx] > end_ts:
            idx -= 1
        moves = []
        for i in range(max(1, idx - days + 1), idx + 1):
            opened = datetime.fromtimestamp(table.opens[i], UTC)
            length = timedelta(seconds=table.closes[i] - table.opens[i])
            moves.append(self.script_move(symbol, daily_percent, over=length, at=opened))
        return moves

    @property
    def scripted_moves(self) -> list[ScriptedMove]:
        return list(self._moves)

    # -- streaming ---------------------------------------------------------------

    def stream(self) -> SimulatedQuoteStream:
        return SimulatedQuoteStream(self, self.tick_interval)

    # -- model -------------------------------------------------------------------

    def _table(self) -> SessionTable:
        if self._table_cache is None:
            self._table_cache = session_table()
        return self._table_cache

    def _ordinals(self) -> NDArray[np.uint64]:
        if self._ordinals_cache is None:
            days = self._table().days
            self._ordinals_cache = np.array([d.toordinal() for d in days], dtype=np.uint64)
        return self._ordinals_cache

    def _key(self, symbol: str, purpose: str) -> int:
        key = self._keys.get((symbol, purpose))
        if key is None:
            key = _stable_key("kianax-sim", self.seed, symbol, purpose)
            self._keys[(symbol, purpose)] = key
        return key

    def _daily_series(self, symbol: str) -> _Daily:
        daily = self._daily.get(symbol)
        if daily is None:
            daily = self._build_daily(BY_SYMBOL[symbol])
            self._daily[symbol] = daily
        return daily

    def _build_daily(self, spec: SymbolSpec) -> _Daily:
        table = self._table()
        sym = spec.symbol
        ordinals = self._ordinals()
        length = (np.array(table.closes) - np.array(table.opens)) / 60.0 / _FULL_SESSION_MINUTES
        # Volatility comes in regimes: average the shocks of the last 14 calendar days,
        # keyed by date rather than position so the window's start does not matter.
        lags = ordinals[:, None] - np.arange(14, dtype=np.uint64)[None, :]
        regime = _normal(self._key(sym, "regime"), lags).mean(axis=1) * math.sqrt(14)
        sigma = (
            spec.annual_volatility
            / math.sqrt(_TRADING_DAYS_PER_YEAR)
            * np.exp(0.35 * regime - 0.35**2 / 2)
            * np.sqrt(length)
        )
        shock = _normal(self._key(sym, "return"), ordinals)
        jumps = np.where(
            _uniform(self._key(sym, "jump"), ordinals) < 0.015,
            3.0 * _normal(self._key(sym, "jump-size"), ordinals),
            0.0,
        )
        drift = 0.07 / _TRADING_DAYS_PER_YEAR * length - 0.5 * sigma**2
        returns = drift + sigma * (shock + jumps)
        cumulative = np.cumsum(returns)
        anchor = min(bisect.bisect_left(table.days, ANCHOR_DAY), len(table.days) - 1)
        log_close = math.log(float(spec.base_price)) + cumulative - cumulative[anchor]
        previous = np.concatenate(([log_close[0] - returns[0]], log_close[:-1]))
        log_open = previous + 0.3 * sigma * _normal(self._key(sym, "gap"), ordinals)
        # Busy days are the big-move days; (0.75 + 0.25 z^2) keeps the mean at 1.
        activity = np.exp(0.25 * _normal(self._key(sym, "volume"), ordinals) - 0.25**2 / 2)
        volume = spec.average_daily_volume * length * activity * (0.75 + 0.25 * shock**2)
        return _Daily(log_open=log_open, log_close=log_close, sigma=sigma, volume=volume)

    def _session(self, symbol: str, idx: int, *, cache: bool = True) -> _Session:
        session = self._sessions.get((symbol, idx))
        if session is None:
            session = self._build_session(symbol, idx)
            if cache:
                self._sessions.put((symbol, idx), session)
        return session

    def _build_session(self, symbol: str, idx: int) -> _Session:
        table = self._table()
        daily = self._daily_series(symbol)
        open_ts, close_ts = table.opens[idx], table.closes[idx]
        n = round((close_ts - open_ts) / 60.0)
        profile = self._profiles.get(n)
        if profile is None:
            profile = self._profiles.setdefault(n, _intraday_profile(n))
        # All of the session's draws in one block: 16 per minute, of which columns 0-7
        # make four normals (path, high, low, volume) and 8-10 three uniforms.
        base = self._ordinals()[idx] * np.uint64(1 << 14)
        counters = base + np.arange(n * 16, dtype=np.uint64)
        draws = _uniform(self._key(symbol, "session"), counters).reshape(n, 16)
        normals = np.sqrt(-2.0 * np.log(draws[:, 0:4])) * np.cos(2.0 * math.pi * draws[:, 4:8])
        sigma = float(daily.sigma[idx])
        # Volatility follows volume through the day; the total variance is the session's.
        step = np.sqrt(profile) * sigma
        walk = np.concatenate(([0.0], np.cumsum(step * normals[:, 0])))
        weight = np.concatenate(([0.0], np.cumsum(step**2)))
        weight /= weight[-1]
        first, last = float(daily.log_open[idx]), float(daily.log_close[idx])
        # Brownian bridge: pinned to the day's open and close so daily and intraday agree.
        path = first + weight * (last - first) + walk - weight * walk[-1]
        path[-1] = last
        starts, ends = path[:-1], path[1:]
        highs = np.maximum(starts, ends) + 0.5 * step * np.abs(normals[:, 1])
        lows = np.minimum(starts, ends) - 0.5 * step * np.abs(normals[:, 2])
        high_first = draws[:, 8] < 0.5
        prices = np.empty((n, 4))
        prices[:, 0] = starts
        prices[:, 1] = np.where(high_first, highs, lows)
        prices[:, 2] = np.where(high_first, lows, highs)
        prices[:, 3] = ends
        np.exp(prices, out=prices)
        fractions = np.empty((n, 4))
        fractions[:, 0] = 0.0
        fractions[:, 1] = 0.1 + 0.35 * draws[:, 9]
        fractions[:, 2] = 0.55 + 0.35 * draws[:, 10]
        fractions[:, 3] = 1.0
        expected = float(daily.volume[idx]) * profile * np.exp(0.4 * normals[:, 3] - 0.08)
        volumes = np.maximum(1, np.rint(expected)).astype(np.int64)
        cum_volume = np.concatenate(([0], np.cumsum(volumes))).astype(np.int64)
        return _Session(open_ts, close_ts, n, prices, fractions, volumes, cum_volume)


def _shift(ramps: Iterable[_Ramp], times: Floats) -> Floats:
    total = np.zeros_like(times)
    for ramp in ramps:
        if ramp.seconds <= 0.0:
            total += np.where(times > ramp.start, ramp.log_factor, 0.0)
        else:
            total += ramp.log_factor * np.clip((times - ramp.start) / ramp.seconds, 0.0, 1.0)
    return total


def _partial_minute(
    session: _Session, k: int, f: float, ramps: list[_Ramp] | None
) -> tuple[float, float, float, float, float, int]:
    """(open, high, low, close, vwap, volume) of minute `k` over its first fraction `f`."""
    prices = session.prices[k].tolist()
    fractions = session.fractions[k].tolist()
    points = [(fractions[0], prices[0])]
    for j in range(1, 4):
        f0, p0 = fractions[j - 1], prices[j - 1]
        f1, p1 = fractions[j], prices[j]
        if f1 < f:
            points.append((f1, p1))
        else:
            points.append((f, p0 + (p1 - p0) * (f - f0) / (f1 - f0)))
            break
    if ramps:
        base = session.open_ts + 60.0 * k
        points = [
            (x, p * math.exp(sum(ramp.at(base + 60.0 * x) for ramp in ramps))) for x, p in points
        ]
    values = [p for _, p in points]
    area = sum((x1 - x0) * (p0 + p1) / 2.0 for (x0, p0), (x1, p1) in itertools.pairwise(points))
    volume = math.ceil(int(session.volumes[k]) * f)
    return values[0], max(values), min(values), values[-1], area / f, volume


def _combine_minutes(minutes: _Minutes, open_ts: float) -> _RawBar:
    volume = int(minutes.volume.sum())
    return (
        open_ts,
        float(minutes.open[0]),
        float(minutes.high.max()),
        float(minutes.low.min()),
        float(minutes.close[-1]),
        volume,
        float((minutes.vwap * minutes.volume).sum()) / volume,
    )


def _combine(bars: Sequence[_RawBar]) -> _RawBar:
    volume = sum(bar[5] for bar in bars)
    return (
        bars[0][0],
        bars[0][1],
        max(bar[2] for bar in bars),
        min(bar[3] for bar in bars),
        bars[-1][4],
        volume,
        sum(bar[6] * bar[5] for bar in bars) / volume,
    )


class SimulatedQuoteStream:
    """Quotes for the subscribed symbols every `tick_interval` seconds of real time."""

    def __init__(self, market: SimulatedMarket, tick_interval: float) -> None:
        self._market = market
        self._tick_interval = tick_interval
        self._symbols: set[str] = set()
        self._closed = asyncio.Event()

    async def subscribe(self, symbols: Iterable[str]) -> None:
        self._symbols.update(s.strip().upper() for s in symbols)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        self._symbols.difference_update(s.strip().upper() for s in symbols)

    async def quotes(self) -> AsyncIterator[Quote]:
        while not self._closed.is_set():
            for symbol in sorted(self._symbols):
                # The consumer may unsubscribe or close while we are suspended in a yield.
                if self._closed.is_set() or symbol not in self._symbols:
                    continue
                quote = self._market.quote_now(symbol)
                if quote is not None:
                    yield quote
            # A sleep that close() can cut short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=self._tick_interval)

    async def close(self) -> None:
        self._closed.set()
