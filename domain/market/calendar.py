"""NYSE (XNYS) trading sessions from exchange_calendars, as plain UTC datetimes.

exchange_calendars is slow to build and its per-minute lookups cost tens of
microseconds, so the schedule is read once into a `SessionTable` of POSIX
seconds that the simulated market can bisect on every quote.
"""

from __future__ import annotations

import bisect
import functools
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

# The window always reaches back to this date so fixed historical dates (the
# simulated market's price anchor in January 2025, dated tests) stay inside it
# however late the process starts; otherwise it spans about two years either
# side of today.
_WINDOW_FLOOR = date(2024, 1, 1)
_WINDOW_REACH = timedelta(days=731)


@dataclass(frozen=True, slots=True)
class SessionTable:
    """Every XNYS session in the calendar window, oldest first, in POSIX seconds (UTC)."""

    days: tuple[date, ...]
    opens: tuple[float, ...]
    closes: tuple[float, ...]

    def index_at(self, ts: float) -> int:
        """Index of the latest session that opened at or before `ts`; -1 if none did."""
        return bisect.bisect_right(self.opens, ts) - 1

    def index_of(self, day: date) -> int | None:
        i = bisect.bisect_left(self.days, day)
        if i < len(self.days) and self.days[i] == day:
            return i
        return None

    def check_covers(self, ts: float) -> None:
        first, last = self.opens[0], self.closes[-1]
        if not first - 7 * 86400 <= ts <= last:
            raise ValueError(
                f"{datetime.fromtimestamp(ts, UTC).isoformat()} is outside the XNYS calendar "
                f"window {self.days[0]} .. {self.days[-1]}"
            )


@functools.cache
def session_table() -> SessionTable:
    # Imported here: importing exchange_calendars alone costs ~0.4 s.
    import exchange_calendars

    today = datetime.now(UTC).date()
    start = min(today - _WINDOW_REACH, _WINDOW_FLOOR)
    end = today + _WINDOW_REACH
    with warnings.catch_warnings():
        # exchange_calendars 4.13 still calls pandas APIs that pandas 3 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        schedule = exchange_calendars.get_calendar("XNYS", start=start, end=end).schedule
    opens = schedule["open"].astype("int64") // 1_000_000_000
    closes = schedule["close"].astype("int64") // 1_000_000_000
    return SessionTable(
        days=tuple(ts.date() for ts in schedule.index),
        opens=tuple(float(v) for v in opens),
        closes=tuple(float(v) for v in closes),
    )


def _posix(t: datetime) -> float:
    if t.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return t.timestamp()


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def is_open(t: datetime) -> bool:
    """Whether XNYS is in its regular session at `t` (open inclusive, close exclusive)."""
    table = session_table()
    ts = _posix(t)
    table.check_covers(ts)
    i = table.index_at(ts)
    return i >= 0 and ts < table.closes[i]


def next_open(t: datetime) -> datetime:
    """The first session open strictly after `t`."""
    table = session_table()
    ts = _posix(t)
    table.check_covers(ts)
    i = table.index_at(ts) + 1
    if i >= len(table.opens):
        raise ValueError(f"no XNYS session after {t.isoformat()} in the calendar window")
    return _utc(table.opens[i])


def next_close(t: datetime) -> datetime:
    """The first session close strictly after `t` (today's close while the market is open)."""
    table = session_table()
    ts = _posix(t)
    table.check_covers(ts)
    i = max(table.index_at(ts), 0)
    if ts >= table.closes[i]:
        i += 1
    if i >= len(table.closes):
        raise ValueError(f"no XNYS session after {t.isoformat()} in the calendar window")
    return _utc(table.closes[i])


def sessions_between(start: date, end: date) -> list[date]:
    """Session dates in [start, end], oldest first."""
    days = session_table().days
    return list(days[bisect.bisect_left(days, start) : bisect.bisect_right(days, end)])


def session_bounds(day: date) -> tuple[datetime, datetime] | None:
    """(open, close) in UTC of the session on `day`, or None when `day` is not a session."""
    table = session_table()
    i = table.index_of(day)
    if i is None:
        return None
    return _utc(table.opens[i]), _utc(table.closes[i])


@dataclass(frozen=True, slots=True)
class MarketStatus:
    is_open: bool
    next_open: datetime
    next_close: datetime


def market_status(now: datetime) -> MarketStatus:
    return MarketStatus(is_open=is_open(now), next_open=next_open(now), next_close=next_close(now))
