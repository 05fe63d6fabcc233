"""The in-memory index of price, volume and indicator triggers that the quote stream drives.

Every trigger waits for a value to *become* true: a price crossing a level, a move or a
volume multiple reaching its threshold, an indicator comparison turning true. So each
symbol keeps its last observed value per measure, and the triggers of one measure sit in
a `_Ladder` sorted by threshold: a tick that moves the measure from `prev` to `cur`
fires exactly the thresholds in between, found by two bisections. Evaluating a tick
costs O(log n + fired) per measure of its symbol, never a scan of the triggers.

- price above L / below L: the last price; fires when prev < L <= cur / prev > L >= cur,
  so it needs a previous tick;
- change of p% within w minutes: the drop from the window's high (or rise from its low),
  in percent; fires when prev < p <= cur;
- change of p% without a window: the move since the previous close, likewise;
- volume m x average: session volume / pro-rated average (`session_fraction`), likewise;
- indicator comparison ("RSI14 < 30"): the indicator at each update; fires when the
  comparison turns true;
- MACD crossing its signal: MACD minus signal; fires when its sign flips.

Except for level crossings, a measure starts at "not true" (0% moved, 0x volume, no
previous indicators) when it gets its first trigger, so a condition that already holds
then fires at once; a measure left without triggers is not computed and starts over.
A trigger added to a measure that is already tracked fires the next time the measure
moves past its threshold.

The move since the previous close and the volume multiple are measures of one session:
both start over at "not true" with each XNYS session, since the previous close and the
session's volume change overnight, so a condition that holds in the new session fires
once in it. A quote belongs to the session that last opened at or before it (the
calendar's session table, as in `session_fraction`), so one after the close still counts
in that day's session. The calendar decides rather than a change of the quote's
`prev_close`: two sessions that close at the same price would hide the new session, and
a feed correcting its previous close would fake one. Windows are not measures of a
session: their ticks simply age out.

A window of w minutes keeps two monotonic deques of (timestamp, price), one for its high
and one for its low, trimmed to w: O(1) amortized per tick however long the window. Each
distinct window length on a symbol has its own pair, shared by all its triggers.

A fired trigger is silent until `cooldown_seconds` have passed; events during the
cooldown are dropped, not deferred. `Firing.event_key` is the trigger id and the minute
of the event, so a job id derived from it makes a repeated enqueue of the same event (a
retry, a second evaluator on the same stream) harmless; with a cooldown under a minute,
a second firing in the same minute is absorbed the same way.

Market state (last price, windows, last change and volume multiple) survives
`replace_all` and `replace_user`, so a refresh from the database neither loses a window's
history nor re-fires a condition that was already true.
"""

from __future__ import annotations

import bisect
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from domain.market.calendar import session_table
from domain.market.indicators import Indicators
from domain.market.models import Quote
from domain.triggers.spec import (
    INDICATORS,
    IndicatorConfig,
    IndicatorOp,
    PriceConfig,
    TriggerType,
    VolumeConfig,
)

__all__ = ["Firing", "IndexedConfig", "IndexedTrigger", "TriggerIndex", "session_fraction"]

IndexedConfig = PriceConfig | VolumeConfig | IndicatorConfig

_HUNDRED = Decimal(100)
_ZERO = Decimal(0)
_EVENT_BUCKET_SECONDS = 60
# The opening minutes trade far more than a linear share of the day; pro-rating over at
# least this much of the session keeps the first trades from looking like a spike.
_MIN_SESSION_ELAPSED = 15 * 60


def session_fraction(at: datetime) -> Decimal | None:
    """The share of the current XNYS regular session elapsed at `at` (at least 15 minutes'
    worth), or None outside a session. A session's volume so far divided by the 20-day
    average times this fraction is the volume multiple that volume triggers and the rules
    model's "volume above 2x average" compare."""
    table = session_table()
    ts = at.timestamp()
    i = table.index_at(ts)
    if i < 0 or ts >= table.closes[i]:
        return None
    length = table.closes[i] - table.opens[i]
    elapsed = min(max(ts - table.opens[i], _MIN_SESSION_ELAPSED), length)
    return Decimal(int(elapsed)) / Decimal(int(length))


def _next_session_open(ts: float) -> float:
    """When the session after the one that last opened at or before `ts` opens."""
    table = session_table()
    i = table.index_at(ts) + 1
    return table.opens[i] if i < len(table.opens) else float("inf")


@dataclass(frozen=True, slots=True)
class Firing:
    trigger_id: uuid.UUID
    trigger_type: TriggerType
    user_id: uuid.UUID
    agent_id: uuid.UUID
    symbol: str
    event_key: str  # stable per (trigger, event): derive the job id from it
    fired_at: datetime
    detail: str  # "When AAPL crosses above $200: price $200.13"


@dataclass(frozen=True, slots=True)
class IndexedTrigger:
    trigger_id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    config: IndexedConfig
    cooldown_seconds: int
    last_fired_at: datetime | None = None


class _Entry:
    __slots__ = (
        "agent_id",
        "config",
        "cooldown",
        "key",
        "ladder",
        "last_fired",
        "symbol",
        "trigger_id",
        "user_id",
        "window",
    )

    def __init__(self, trigger: IndexedTrigger, symbol: _Symbol) -> None:
        self.trigger_id = trigger.trigger_id
        self.user_id = trigger.user_id
        self.agent_id = trigger.agent_id
        self.symbol = trigger.config.symbol
        self.config = trigger.config
        self.cooldown = trigger.cooldown_seconds
        fired = trigger.last_fired_at
        self.last_fired: float | None = None if fired is None else fired.timestamp()
        self.key = _ZERO
        self.window: int | None = None
        self.ladder = symbol.place(self, trigger.config)


class _Ladder:
    """Entries sorted by threshold, in parallel lists so `bisect` works on the keys."""

    __slots__ = ("entries", "keys")

    def __init__(self) -> None:
        self.keys: list[Decimal] = []
        self.entries: list[_Entry] = []

    def __bool__(self) -> bool:
        return bool(self.keys)

    def add(self, entry: _Entry) -> None:
        i = bisect.bisect_right(self.keys, entry.key)
        self.keys.insert(i, entry.key)
        self.entries.insert(i, entry)

    def load(self, entries: list[_Entry]) -> None:
        entries.sort(key=lambda e: e.key)
        self.keys = [e.key for e in entries]
        self.entries = entries

    def remove(self, entry: _Entry) -> None:
        lo = bisect.bisect_left(self.keys, entry.key)
        hi = bisect.bisect_right(self.keys, entry.key)
        i = lo + self.entries[lo:hi].index(entry)
        del self.keys[i], self.entries[i]

    def newly_true(self, op: IndicatorOp, prev: Decimal | None, cur: Decimal) -> list[_Entry]:
        """Entries whose `measure op key` holds for `cur` but did not for `prev` (None:
        nothing held before)."""
        keys = self.keys
        if op is IndicatorOp.GE:  # prev < key <= cur
            lo = 0 if prev is None else bisect.bisect_right(keys, prev)
            hi = bisect.bisect_right(keys, cur)
        elif op is IndicatorOp.GT:  # prev <= key < cur
            lo = 0 if prev is None else bisect.bisect_left(keys, prev)
            hi = bisect.bisect_left(keys, cur)
        elif op is IndicatorOp.LE:  # cur <= key < prev
            lo = bisect.bisect_left(keys, cur)
            hi = len(keys) if prev is None else bisect.bisect_left(keys, prev)
        else:  # LT: cur < key <= prev
            lo = bisect.bisect_right(keys, cur)
            hi = len(keys) if prev is None else bisect.bisect_right(keys, prev)
        return self.entries[lo:hi] if lo < hi else []


class _Window:
    """The high and low of the last `seconds` of ticks, and the triggers measured on them."""

    __slots__ = ("drops", "highs", "last_drop", "last_rise", "lows", "rises", "seconds")

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.highs: deque[tuple[float, Decimal]] = deque()  # prices decreasing
        self.lows: deque[tuple[float, Decimal]] = deque()  # prices increasing
        self.last_drop = _ZERO
        self.last_rise = _ZERO
        self.drops = _Ladder()
        self.rises = _Ladder()

    def push(self, ts: float, price: Decimal) -> tuple[Decimal, Decimal]:
        """Add a tick; return (high, low) over the window ending at it."""
        highs, lows = self.highs, self.lows
        while highs and highs[-1][1] <= price:
            highs.pop()
        highs.append((ts, price))
        while lows and lows[-1][1] >= price:
            lows.pop()
        lows.append((ts, price))
        horizon = ts - self.seconds
        while highs[0][0] < horizon:
            highs.popleft()
        while lows[0][0] < horizon:
            lows.popleft()
        return highs[0][1], lows[0][1]


class _Symbol:
    __slots__ = (
        "above",
        "average_volume",
        "below",
        "close_drops",
        "close_rises",
        "indicators",
        "last_change",
        "last_price",
        "last_ratio",
        "last_ts",
        "next_session",
        "volume",
        "windows",
    )

    def __init__(self) -> None:
        self.last_price: Decimal | None = None
        self.last_ts = float("-inf")
        self.next_session = float("-inf")
        self.last_change = _ZERO
        self.last_ratio = _ZERO
        self.average_volume: Decimal | None = None
        self.windows: dict[int, _Window] = {}
        self.clear_triggers()

    def clear_triggers(self) -> None:
        self.above = _Ladder()
        self.below = _Ladder()
        self.close_drops = _Ladder()
        self.close_rises = _Ladder()
        self.volume = _Ladder()
        self.indicators: dict[tuple[str, IndicatorOp], _Ladder] = {}
        for window in self.windows.values():
            window.drops = _Ladder()
            window.rises = _Ladder()

    def place(self, entry: _Entry, config: IndexedConfig) -> _Ladder:
        """The ladder `entry` belongs in; sets its key (and window)."""
        if isinstance(config, VolumeConfig):
            entry.key = config.multiple_of_average
            return self.volume
        if isinstance(config, IndicatorConfig):
            op, threshold = config.parsed()
            entry.key = _ZERO if threshold is None else threshold
            return self.indicators.setdefault((config.indicator, op), _Ladder())
        if config.above is not None:
            entry.key = config.above
            return self.above
        if config.below is not None:
            entry.key = config.below
            return self.below
        change = config.change_percent or _ZERO
        entry.key = abs(change)
        if config.window_minutes is None:
            return self.close_drops if change < 0 else self.close_rises
        seconds = config.window_minutes * 60
        entry.window = seconds
        window = self.windows.get(seconds)
        if window is None:
            window = self.windows[seconds] = _Window(seconds)
        return window.drops if change < 0 else window.rises

    def prune_windows(self) -> None:
        for seconds in [s for s, w in self.windows.items() if not (w.drops or w.rises)]:
            del self.windows[seconds]

    def needs_indicators(self) -> bool:
        """Whether a trigger here reads the daily indicators (volume: the average volume)."""
        return bool(self.volume) or any(self.indicators.values())

    def has_triggers(self) -> bool:
        return bool(
            self.above
            or self.below
            or self.close_drops
            or self.close_rises
            or any(w.drops or w.rises for w in self.windows.values())
            or self.needs_indicators()
        )


def _validated(config: IndexedConfig) -> IndexedConfig:
    problems = config.validate()
    if problems:
        raise ValueError("; ".join(f"{p.field}: {p.message}" for p in problems))
    return config


class TriggerIndex:
    """Price, volume and indicator triggers by symbol. Not thread-safe: one evaluator task
    owns it, feeding it quotes, indicator updates and refreshes in order."""

    def __init__(self) -> None:
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._by_user: dict[uuid.UUID, dict[uuid.UUID, _Entry]] = {}
        self._symbols: dict[str, _Symbol] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, trigger_id: object) -> bool:
        return trigger_id in self._entries

    def users(self) -> frozenset[uuid.UUID]:
        """The users who have triggers."""
        return frozenset(self._by_user)

    def symbols(self) -> frozenset[str]:
        """The symbols that have triggers."""
        return frozenset(name for name, state in self._symbols.items() if state.has_triggers())

    def indicator_symbols(self) -> frozenset[str]:
        """The symbols whose triggers read the daily indicators: indicator comparisons, and
        volume multiples (the 20-day average volume)."""
        return frozenset(name for name, state in self._symbols.items() if state.needs_indicators())

    def add(
        self,
        trigger_id: uuid.UUID,
        user_id: uuid.UUID,
        agent_id: uuid.UUID,
        config: IndexedConfig,
        cooldown_seconds: int,
        last_fired_at: datetime | None = None,
    ) -> None:
        """Add or replace a trigger. Raises ValueError when its config is invalid."""
        trigger = IndexedTrigger(
            trigger_id, user_id, agent_id, _validated(config), cooldown_seconds, last_fired_at
        )
        self._put(self._entry(trigger, None))

    def remove(self, trigger_id: uuid.UUID) -> bool:
        entry = self._entries.get(trigger_id)
        if entry is None:
            return False
        self._drop(entry)
        return True

    def replace_all(self, triggers: Iterable[IndexedTrigger]) -> list[uuid.UUID]:
        """Replace every trigger, keeping market state and the later of each trigger's
        stored and in-memory last firing. Returns the ids of invalid triggers, left out."""
        previous = self._entries
        self._entries = {}
        for symbol in self._symbols.values():
            symbol.clear_triggers()
        placed: dict[int, tuple[_Ladder, list[_Entry]]] = {}
        rejected: list[uuid.UUID] = []
        for trigger in triggers:
            if trigger.config.validate():
                rejected.append(trigger.trigger_id)
                continue
            entry = self._entry(trigger, previous.get(trigger.trigger_id))
            placed.setdefault(id(entry.ladder), (entry.ladder, []))[1].append(entry)
            self._entries[trigger.trigger_id] = entry
        for ladder, entries in placed.values():
            # A trigger listed twice keeps only its last entry.
            ladder.load([e for e in entries if self._entries[e.trigger_id] is e])
        for symbol in self._symbols.values():
            symbol.prune_windows()
        self._by_user = {}
        for entry in self._entries.values():
            self._by_user.setdefault(entry.user_id, {})[entry.trigger_id] = entry
        return rejected

    def replace_user(
        self, user_id: uuid.UUID, triggers: Iterable[IndexedTrigger]
    ) -> list[uuid.UUID]:
        """Replace `user_id`'s triggers with `triggers` (theirs), like `replace_all` for one
        user; everybody else's are left alone. Returns the ids of invalid triggers."""
        previous = self._by_user.pop(user_id, {})
        rejected: list[uuid.UUID] = []
        for trigger in triggers:
            if trigger.config.validate():
                rejected.append(trigger.trigger_id)
            else:
                self._put(self._entry(trigger, previous.get(trigger.trigger_id)))
        for trigger_id, entry in previous.items():
            if self._entries.get(trigger_id) is entry:
                self._drop(entry)
        return rejected

    def _entry(self, trigger: IndexedTrigger, before: _Entry | None) -> _Entry:
        """A new entry for `trigger`, with the later of its stored last firing and that of
        `before`, its current entry (whose firing the database may not have recorded yet)."""
        entry = _Entry(trigger, self._symbols.setdefault(trigger.config.symbol, _Symbol()))
        if (
            before is not None
            and before.last_fired is not None
            and (entry.last_fired is None or before.last_fired > entry.last_fired)
        ):
            entry.last_fired = before.last_fired
        return entry

    def _put(self, entry: _Entry) -> None:
        """Index `entry` in place of the current entry of its trigger, if any."""
        replaced = self._entries.get(entry.trigger_id)
        entry.ladder.add(entry)
        self._entries[entry.trigger_id] = entry
        self._by_user.setdefault(entry.user_id, {})[entry.trigger_id] = entry
        # Dropped after the new entry is placed, so a window they share keeps its history.
        if replaced is not None:
            self._drop(replaced)

    def _drop(self, entry: _Entry) -> None:
        """Take `entry` out of its ladder, and out of the maps where it is still current."""
        if self._entries.get(entry.trigger_id) is entry:
            del self._entries[entry.trigger_id]
        mine = self._by_user.get(entry.user_id)
        if mine is not None and mine.get(entry.trigger_id) is entry:
            del mine[entry.trigger_id]
            if not mine:
                del self._by_user[entry.user_id]
        entry.ladder.remove(entry)
        if entry.window is not None:
            self._symbols[entry.symbol].prune_windows()

    def set_average_volume(self, symbol: str, average: Decimal | None) -> None:
        """The 20-day average daily volume that volume triggers on `symbol` compare with."""
        self._symbols.setdefault(symbol, _Symbol()).average_volume = average

    def evaluate(self, quote: Quote) -> list[Firing]:
        """The triggers this quote fires. Quotes older than the symbol's last are ignored."""
        state = self._symbols.get(quote.symbol)
        ts = quote.timestamp.timestamp()
        if state is None or ts < state.last_ts:
            return []
        if ts >= state.next_session:
            state.next_session = _next_session_open(ts)
            state.last_change = state.last_ratio = _ZERO
        price = quote.last
        fired: list[Firing] = []
        prev = state.last_price
        if prev is not None and price > prev:
            entries = state.above.newly_true(IndicatorOp.GE, prev, price)
            self._fire(entries, ts, fired, "price ${}", price)
        elif prev is not None and price < prev:
            entries = state.below.newly_true(IndicatorOp.LE, prev, price)
            self._fire(entries, ts, fired, "price ${}", price)
        for window in state.windows.values():
            high, low = window.push(ts, price)
            drop = (high - price) / high * _HUNDRED if window.drops else _ZERO
            if drop > window.last_drop:
                entries = window.drops.newly_true(IndicatorOp.GE, window.last_drop, drop)
                self._fire(entries, ts, fired, "down {:.2f}% from ${} to ${}", drop, high, price)
            rise = (price - low) / low * _HUNDRED if window.rises else _ZERO
            if rise > window.last_rise:
                entries = window.rises.newly_true(IndicatorOp.GE, window.last_rise, rise)
                self._fire(entries, ts, fired, "up {:.2f}% from ${} to ${}", rise, low, price)
            window.last_drop, window.last_rise = drop, rise
        if not (state.close_drops or state.close_rises):
            state.last_change = _ZERO
        elif quote.prev_close:
            change = (price - quote.prev_close) / quote.prev_close * _HUNDRED
            last = state.last_change
            if change < last:
                entries = state.close_drops.newly_true(IndicatorOp.GE, -last, -change)
                self._fire(entries, ts, fired, "{:+.2f}% since the previous close", change)
            elif change > last:
                entries = state.close_rises.newly_true(IndicatorOp.GE, last, change)
                self._fire(entries, ts, fired, "{:+.2f}% since the previous close", change)
            state.last_change = change
        if not state.volume:
            state.last_ratio = _ZERO
        elif state.average_volume and (fraction := session_fraction(quote.timestamp)):
            ratio = quote.volume / (state.average_volume * fraction)
            if ratio > state.last_ratio:
                entries = state.volume.newly_true(IndicatorOp.GE, state.last_ratio, ratio)
                self._fire(entries, ts, fired, "volume {:.2f}x the pro-rated average", ratio)
            state.last_ratio = ratio
        state.last_price, state.last_ts = price, ts
        return fired

    def update_indicators(
        self, symbol: str, current: Indicators, previous: Indicators | None, at: datetime
    ) -> list[Firing]:
        """The indicator triggers that `current` fires; comparisons fire when they turn true
        (on the first update, when they are true), signal crossings when MACD - signal
        changes sign between `previous` and `current`."""
        state = self._symbols.get(symbol)
        if state is None:
            return []
        ts = at.timestamp()
        fired: list[Firing] = []
        for (name, op), ladder in state.indicators.items():
            value_of = INDICATORS[name]
            value = value_of(current)
            if value is None or not ladder:
                continue
            if op is IndicatorOp.CROSSES_ABOVE_SIGNAL or op is IndicatorOp.CROSSES_BELOW_SIGNAL:
                gap, before = _macd_gap(current), _macd_gap(previous)
                if gap is None or before is None:
                    continue
                above = op is IndicatorOp.CROSSES_ABOVE_SIGNAL
                if (before <= 0 < gap) if above else (before >= 0 > gap):
                    seen = "MACD {} vs signal {}"
                    self._fire(ladder.entries, ts, fired, seen, current.macd, current.macd_signal)
                continue
            before_value = None if previous is None else value_of(previous)
            entries = ladder.newly_true(op, before_value, value)
            self._fire(entries, ts, fired, "{} {}", name, value)
        return fired

    def _fire(
        self, entries: list[_Entry], ts: float, out: list[Firing], seen: str, *values: object
    ) -> None:
        """Append a Firing for each entry out of its cooldown; `seen.format(*values)` says
        what was observed, formatted only when something fires."""
        if not entries:
            return
        at = datetime.fromtimestamp(ts, UTC)
        bucket = int(ts // _EVENT_BUCKET_SECONDS)
        observed = seen.format(*values)
        for entry in entries:
            if entry.last_fired is not None and ts - entry.last_fired < entry.cooldown:
                continue
            entry.last_fired = ts
            out.append(
                Firing(
                    trigger_id=entry.trigger_id,
                    trigger_type=entry.config.type,
                    user_id=entry.user_id,
                    agent_id=entry.agent_id,
                    symbol=entry.symbol,
                    event_key=f"{entry.trigger_id}:{bucket}",
                    fired_at=at,
                    detail=f"{entry.config.describe()}: {observed}",
                )
            )


def _macd_gap(indicators: Indicators | None) -> Decimal | None:
    if indicators is None or indicators.macd is None or indicators.macd_signal is None:
        return None
    return indicators.macd - indicators.macd_signal
