"""Market data as the rest of Kianax sees it, whichever provider produced it."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol


class Timeframe(enum.Enum):
    MINUTE = "MINUTE"
    FIVE_MINUTES = "FIVE_MINUTES"
    FIFTEEN_MINUTES = "FIFTEEN_MINUTES"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"

    @property
    def duration(self) -> timedelta:
        return _DURATIONS[self]


_DURATIONS = {
    Timeframe.MINUTE: timedelta(minutes=1),
    Timeframe.FIVE_MINUTES: timedelta(minutes=5),
    Timeframe.FIFTEEN_MINUTES: timedelta(minutes=15),
    Timeframe.HOUR: timedelta(hours=1),
    Timeframe.DAY: timedelta(days=1),
    Timeframe.WEEK: timedelta(weeks=1),
}


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal
    volume: Decimal  # shares traded so far in the current session
    timestamp: datetime  # timezone-aware UTC
    prev_close: Decimal | None = None

    @property
    def change(self) -> Decimal | None:
        if self.prev_close is None:
            return None
        return self.last - self.prev_close

    @property
    def change_percent(self) -> Decimal | None:
        if not self.prev_close:
            return None
        return (self.last - self.prev_close) / self.prev_close * 100


@dataclass(frozen=True, slots=True)
class Bar:
    timestamp: datetime  # start of the bar, UTC
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal | None = None


@dataclass(frozen=True, slots=True)
class SecurityInfo:
    symbol: str
    name: str
    exchange: str | None = None
    sector: str | None = None
    description: str | None = None


class Sentiment(enum.Enum):
    POSITIVE = "POSITIVE"
    NEGATIVE = "NEGATIVE"
    NEUTRAL = "NEUTRAL"


@dataclass(frozen=True, slots=True)
class NewsItem:
    id: str
    headline: str
    source: str
    symbols: tuple[str, ...]
    published_at: datetime
    summary: str | None = None
    url: str | None = None
    sentiment: Sentiment | None = None
    relevance: Decimal | None = None


class MarketDataProvider(Protocol):
    """One source of market data. Implementations: simulated (default) and Massive."""

    async def search(self, query: str, limit: int) -> list[SecurityInfo]: ...

    async def details(self, symbol: str) -> SecurityInfo | None: ...

    async def quote(self, symbol: str) -> Quote | None: ...

    async def bars(
        self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime, limit: int
    ) -> list[Bar]:
        """Bars whose start lies in [start, end], oldest first, at most `limit` (the newest)."""
        ...

    async def news(
        self, symbols: Sequence[str] | None, limit: int, before: datetime | None = None
    ) -> list[NewsItem]:
        """Newest first, published strictly before `before` when given."""
        ...

    def stream(self) -> QuoteStream: ...


class QuoteStream(Protocol):
    """A live upstream connection. The feed holds exactly one per process."""

    async def subscribe(self, symbols: Iterable[str]) -> None: ...

    async def unsubscribe(self, symbols: Iterable[str]) -> None: ...

    def quotes(self) -> AsyncIterator[Quote]:
        """Quotes for the subscribed symbols until close(); survives upstream reconnects."""
        ...

    async def close(self) -> None: ...
