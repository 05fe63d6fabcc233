"""Market data from Massive (formerly Polygon.io), through its official `massive` SDK.

REST calls go through the SDK's synchronous `RESTClient` on worker threads. The live
stream runs the SDK's `WebSocketClient` for one connection at a time and owns
reconnecting itself (see `MassiveQuoteStream`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import urllib3
from massive import RESTClient, WebSocketClient
from massive.exceptions import AuthError, BadResponse
from massive.rest import BASE as REST_BASE_URL
from massive.websocket.models import EquityQuote, EquityTrade, Feed, Market

from domain.market.models import (
    Bar,
    MarketDataProvider,
    NewsItem,
    Quote,
    QuoteStream,
    SecurityInfo,
    Sentiment,
    Timeframe,
)

__all__ = [
    "WS_BASE_URL",
    "MassiveAuthError",
    "MassiveError",
    "MassiveMarket",
    "MassiveNotFoundError",
    "MassiveQuoteStream",
    "MassiveUnavailableError",
]

log = logging.getLogger(__name__)

WS_BASE_URL = f"wss://{Feed.RealTime.value}"

_T = TypeVar("_T")

_AGG_SPANS: dict[Timeframe, tuple[int, str]] = {
    Timeframe.MINUTE: (1, "minute"),
    Timeframe.FIVE_MINUTES: (5, "minute"),
    Timeframe.FIFTEEN_MINUTES: (15, "minute"),
    Timeframe.HOUR: (1, "hour"),
    Timeframe.DAY: (1, "day"),
    Timeframe.WEEK: (1, "week"),
}

_SENTIMENTS = {
    "positive": Sentiment.POSITIVE,
    "negative": Sentiment.NEGATIVE,
    "neutral": Sentiment.NEUTRAL,
}

# Symbols end up in URL paths and stream topics, so anything else is treated as unknown.
_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,15}")

# Massive's snapshot endpoint takes at most this many tickers per request.
_SNAPSHOT_BATCH = 250

# Massive's "today" (snapshot day bar, session volume) is the New York calendar day.
_NEW_YORK = ZoneInfo("America/New_York")

# A session that stayed up this long was healthy even if no symbol traded.
_HEALTHY_SESSION_SECONDS = 60.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MassiveError(Exception):
    """Massive refused or failed a request."""


class MassiveAuthError(MassiveError):
    """The API key is unknown, or its plan does not include the requested data."""


class MassiveNotFoundError(MassiveError):
    """Massive has no such ticker."""


class MassiveUnavailableError(MassiveError):
    """Massive could not be reached, or kept failing or rate limiting after the SDK's retries."""


class MassiveMarket(MarketDataProvider):
    """`MarketDataProvider` backed by Massive.

    `rest_base_url` replaces the SDK's `https://api.massive.com`. `ws_url` is the stream's
    feed root (default `wss://socket.massive.com`; e.g. `wss://delayed.massive.com` for the
    delayed feed); the SDK appends the market path `/stocks`.
    """

    def __init__(
        self,
        api_key: str,
        *,
        rest_base_url: str | None = None,
        ws_url: str | None = None,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
    ) -> None:
        if not api_key:
            raise ValueError("a Massive API key is required")
        self._api_key = api_key
        self._rest = RESTClient(api_key=api_key, base=(rest_base_url or REST_BASE_URL).rstrip("/"))
        ws = urlsplit(ws_url or WS_BASE_URL)
        if ws.scheme not in ("ws", "wss") or not ws.netloc:
            raise ValueError(f"ws_url must be a ws:// or wss:// URL, got {ws_url!r}")
        self._ws_feed = ws.netloc + ws.path.rstrip("/")
        self._ws_secure = ws.scheme == "wss"
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay

    async def search(self, query: str, limit: int) -> list[SecurityInfo]:
        query = query.strip()
        if not query or limit <= 0:
            return []

        def fetch() -> list[Any]:
            tickers = self._rest.list_tickers(
                search=query, market="stocks", active=True, limit=min(limit, 1000)
            )
            return list(islice(tickers, limit))

        return [
            SecurityInfo(symbol=t.ticker, name=t.name or t.ticker, exchange=t.primary_exchange)
            for t in await self._call(fetch)
            if t.ticker
        ]

    async def details(self, symbol: str) -> SecurityInfo | None:
        ticker = _symbol(symbol)
        if ticker is None:
            return None
        try:
            found = await self._call(lambda: self._rest.get_ticker_details(ticker))
        except MassiveNotFoundError:
            return None
        if not found:  # the SDK returns [] when the body lacks "results"
            return None
        return SecurityInfo(
            symbol=found.ticker or ticker,
            name=found.name or ticker,
            exchange=found.primary_exchange,
            sector=found.sic_description,
            description=found.description,
        )

    async def quote(self, symbol: str) -> Quote | None:
        ticker = _symbol(symbol)
        if ticker is None:
            return None
        try:
            snapshot = await self._call(lambda: self._rest.get_snapshot_ticker("stocks", ticker))
        except MassiveNotFoundError:
            return None
        return _snapshot_quote(ticker, snapshot)

    async def bars(
        self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime, limit: int
    ) -> list[Bar]:
        ticker = _symbol(symbol)
        start, end = _utc(start), _utc(end)
        if ticker is None or limit <= 0 or start > end:
            return []
        multiplier, timespan = _AGG_SPANS[timeframe]

        def fetch() -> list[Bar]:
            # Newest first, so paging stops as soon as `limit` bars are in hand. The API's own
            # `limit` counts base (minute) aggregates, not bars, so it is left at its default.
            # Massive also returns the window containing `start`, which began before it.
            aggs = self._rest.list_aggs(
                ticker, multiplier, timespan, start, end, adjusted=True, sort="desc"
            )
            bars = (bar for agg in aggs if (bar := _bar(agg)) is not None)
            return list(islice((b for b in bars if start <= b.timestamp <= end), limit))

        try:
            newest_first = await self._call(fetch)
        except MassiveNotFoundError:
            return []
        return newest_first[::-1]

    async def news(
        self, symbols: Sequence[str] | None, limit: int, before: datetime | None = None
    ) -> list[NewsItem]:
        if limit <= 0:
            return []
        if symbols is None:
            tickers: list[str | None] = [None]
        else:
            tickers = list(dict.fromkeys(t for s in symbols if (t := _symbol(s)) is not None))
            if not tickers:
                return []
        wanted = [t for t in tickers if t is not None]
        pages = await asyncio.gather(*(self._news_about(t, wanted, limit, before) for t in tickers))
        # An article about several requested symbols comes back once per symbol.
        unique = {item.id: item for page in pages for item in page}
        return sorted(unique.values(), key=lambda n: n.published_at, reverse=True)[:limit]

    def stream(self) -> MassiveQuoteStream:
        return MassiveQuoteStream(
            api_key=self._api_key,
            feed=self._ws_feed,
            secure=self._ws_secure,
            snapshot=self._snapshots,
            reconnect_delay=self._reconnect_delay,
            max_reconnect_delay=self._max_reconnect_delay,
        )

    async def _news_about(
        self, ticker: str | None, wanted: Sequence[str], limit: int, before: datetime | None
    ) -> list[NewsItem]:
        published_before = None
        if before is not None:
            # Articles are stamped in whole seconds, so "before 12:00:00.5" is "before 12:00:01".
            cutoff = _utc(before)
            whole = cutoff.replace(microsecond=0)
            if whole < cutoff:
                whole += timedelta(seconds=1)
            published_before = whole.strftime("%Y-%m-%dT%H:%M:%SZ")

        def fetch() -> list[NewsItem]:
            articles = self._rest.list_ticker_news(
                ticker=ticker,
                published_utc_lt=published_before,
                limit=min(limit, 1000),
                sort="published_utc",
                order="desc",
            )
            items = (item for a in articles if (item := _news_item(a, wanted)) is not None)
            return list(islice(items, limit))

        return await self._call(fetch)

    async def _snapshots(self, symbols: Sequence[str]) -> dict[str, Quote]:
        quotes: dict[str, Quote] = {}
        for i in range(0, len(symbols), _SNAPSHOT_BATCH):
            batch = list(symbols[i : i + _SNAPSHOT_BATCH])
            snapshots = await self._call(
                functools.partial(self._rest.get_snapshot_all, "stocks", tickers=batch)
            )
            for snapshot in snapshots:
                quote = _snapshot_quote(snapshot.ticker, snapshot) if snapshot.ticker else None
                if quote is not None:
                    quotes[quote.symbol] = quote
        return quotes

    async def _call(self, fetch: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(fetch)
        except BadResponse as exc:
            raise _response_error(exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise MassiveUnavailableError(f"Massive request failed: {exc}") from exc


@dataclass(slots=True)
class _Book:
    """What the stream knows about one symbol; a Quote can be cut once a price is known."""

    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    volume: Decimal = Decimal(0)
    prev_close: Decimal | None = None
    timestamp: datetime | None = None
    session: date | None = None

    def seed(self, snapshot: Quote) -> None:
        if snapshot.prev_close is not None:
            self.prev_close = snapshot.prev_close
        # The stream may already be ahead of a snapshot fetched before its last messages.
        if self.timestamp is not None and snapshot.timestamp < self.timestamp:
            return
        self.bid, self.ask, self.last = snapshot.bid, snapshot.ask, snapshot.last
        self.volume = snapshot.volume
        self.timestamp = snapshot.timestamp
        self.session = snapshot.timestamp.astimezone(_NEW_YORK).date()

    def on_quote(self, bid: Decimal | None, ask: Decimal | None, at: datetime) -> bool:
        new_session = self._advance(at)
        self.bid, self.ask = bid, ask
        return new_session

    def on_trade(self, price: Decimal, size: Decimal, at: datetime) -> bool:
        new_session = self._advance(at)
        self.last = price
        self.volume += size
        return new_session

    def _advance(self, at: datetime) -> bool:
        """Move the clock to `at`; True when that starts a new New York trading day."""
        day = at.astimezone(_NEW_YORK).date()
        new_session = self.session is not None and day > self.session
        if new_session:
            self.volume = Decimal(0)
            # Yesterday's close is not on the stream; the caller re-seeds from the snapshot.
            self.prev_close = None
        if self.session is None or day > self.session:
            self.session = day
        self.timestamp = at if self.timestamp is None else max(self.timestamp, at)
        return new_session

    def quote(self, symbol: str) -> Quote | None:
        if self.last is None or self.timestamp is None:
            return None
        return Quote(
            symbol=symbol,
            bid=self.bid,
            ask=self.ask,
            last=self.last,
            volume=self.volume,
            timestamp=self.timestamp,
            prev_close=self.prev_close,
        )


class MassiveQuoteStream(QuoteStream):
    """Live quotes from Massive's stocks WebSocket (channels `Q.<sym>` and `T.<sym>`).

    Each symbol is seeded from the REST snapshot when subscribed (bid, ask, last, session
    volume, previous close). After that, `Q` messages move bid/ask and `T` messages move
    the last price and add their size to the session volume; a message dated on a later
    New York day restarts the volume and re-seeds the previous close.

    Reconnecting: the SDK's own reconnect gives up for good after `max_reconnects` drops
    over the client's whole life, ends silently when the server closes cleanly (1000/1001,
    e.g. a deploy) and can lose a subscription made just before a drop. So each connection
    runs in a fresh `WebSocketClient(max_reconnects=0)` built from the current symbol set,
    and this class reconnects with exponential backoff, re-authenticating, re-subscribing
    and re-seeding from the snapshot to cover what was missed. A rejected API key ends the
    stream: `quotes()` raises `MassiveAuthError`.

    `quotes()` has one consumer. A consumer that falls behind gets each symbol's newest
    quote rather than a growing backlog of stale ones.
    """

    def __init__(
        self,
        *,
        api_key: str,
        feed: str,
        secure: bool,
        snapshot: Callable[[Sequence[str]], Awaitable[dict[str, Quote]]],
        reconnect_delay: float,
        max_reconnect_delay: float,
    ) -> None:
        self._api_key = api_key
        self._feed = feed
        self._secure = secure
        self._snapshot = snapshot
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._books: dict[str, _Book] = {}
        self._pending: dict[str, Quote] = {}
        self._ready = asyncio.Event()
        self._client: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: MassiveError | None = None
        self._closed = False
        self._delivered = False

    async def subscribe(self, symbols: Iterable[str]) -> None:
        self._ensure_open()
        new = [s for s in _valid_symbols(symbols) if s not in self._books]
        if not new:
            return
        for symbol in new:
            self._books[symbol] = _Book()
        if self._client is not None:
            self._client.subscribe(*_topics(new))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="massive-quote-stream")
        await self._seed(new)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        gone = [s for s in _valid_symbols(symbols) if s in self._books]
        for symbol in gone:
            del self._books[symbol]
            self._pending.pop(symbol, None)
        if gone and self._client is not None:
            self._client.unsubscribe(*_topics(gone))

    async def quotes(self) -> AsyncIterator[Quote]:
        while True:
            if self._pending:
                yield self._pending.pop(next(iter(self._pending)))
                continue
            if self._failure is not None:
                raise self._failure
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()

    async def close(self) -> None:
        self._closed = True
        self._pending.clear()
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = None
        self._ready.set()

    def _ensure_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("the Massive quote stream is closed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._reconnect_delay
        reconnecting = False
        while True:
            if reconnecting and self._books:
                self._spawn(self._seed(list(self._books)))
            client = WebSocketClient(
                api_key=self._api_key,
                feed=self._feed,
                market=Market.Stocks,
                secure=self._secure,
                subscriptions=_topics(self._books),
                max_reconnects=0,
            )
            self._client = client
            self._delivered = False
            started = loop.time()
            try:
                await client.connect(self._on_messages)
                log.warning("Massive closed the quote stream; reconnecting")
            except AuthError as exc:
                self._fail(MassiveAuthError(f"Massive rejected the stream's API key: {exc}"))
                return
            except Exception:
                # Whatever ended this connection, the stream must outlive it.
                log.warning("Massive quote stream dropped; reconnecting", exc_info=True)
            finally:
                self._client = None
                if client.websocket is not None:
                    await client.close()
            if self._delivered or loop.time() - started >= _HEALTHY_SESSION_SECONDS:
                delay = self._reconnect_delay
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)
            reconnecting = True

    async def _on_messages(self, messages: list[Any]) -> None:
        self._delivered = True
        for message in messages:
            if not isinstance(message, (EquityQuote, EquityTrade)):
                continue
            symbol = message.symbol
            book = self._books.get(symbol)
            if book is None:  # unsubscribed, with messages still in flight
                continue
            at = _from_ms(message.timestamp) if message.timestamp else datetime.now(UTC)
            if isinstance(message, EquityQuote):
                new_session = book.on_quote(
                    _price(message.bid_price), _price(message.ask_price), at
                )
            else:
                price = _price(message.price)
                if price is None:
                    continue
                size = message.fractional_shares or message.size or 0
                new_session = book.on_trade(price, _dec(size), at)
            if new_session:
                self._spawn(self._seed([symbol]))
            self._publish(symbol, book)

    async def _seed(self, symbols: Sequence[str]) -> None:
        try:
            snapshots = await self._snapshot(symbols)
        except MassiveError as exc:
            # The stream still fills the book; it just starts without a previous close.
            log.warning("could not seed %s from Massive's snapshot: %s", ",".join(symbols), exc)
            return
        for symbol, snapshot in snapshots.items():
            book = self._books.get(symbol)
            if book is not None:
                book.seed(snapshot)
                self._publish(symbol, book)

    def _publish(self, symbol: str, book: _Book) -> None:
        quote = book.quote(symbol)
        if quote is not None:
            self._pending[symbol] = quote
            self._ready.set()

    def _fail(self, error: MassiveError) -> None:
        self._failure = error
        self._ready.set()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _symbol(raw: str) -> str | None:
    symbol = raw.strip().upper()
    return symbol if _SYMBOL.fullmatch(symbol) else None


def _valid_symbols(raw: Iterable[str]) -> list[str]:
    symbols = []
    for item in raw:
        symbol = _symbol(item)
        if symbol is None:
            raise ValueError(f"not a ticker symbol: {item!r}")
        symbols.append(symbol)
    return list(dict.fromkeys(symbols))


def _topics(symbols: Iterable[str]) -> list[str]:
    return [f"{channel}.{s}" for s in symbols for channel in ("Q", "T")]


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _from_ns(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _dec(value: Any) -> Decimal:
    # str() first: Decimal(float) would carry the float's binary noise into money.
    return Decimal(str(value))


def _price(value: Any) -> Decimal | None:
    """Massive reports an absent price (no bid, no trade yet today) as 0."""
    if value is None:
        return None
    price = _dec(value)
    return price if price > 0 else None


def _response_error(exc: BadResponse) -> MassiveError:
    # The SDK keeps only the body of a non-200 response, not its status code.
    body = str(exc)
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return MassiveError(f"Massive request failed: {body}")
    status = payload.get("status")
    message = str(payload.get("message") or payload.get("error") or body)
    if status == "NOT_FOUND":
        return MassiveNotFoundError(message)
    if status == "NOT_AUTHORIZED" or "api key" in message.lower():
        return MassiveAuthError(f"Massive refused the API key: {message}")
    return MassiveError(f"Massive request failed: {message}")


def _bar(agg: Any) -> Bar | None:
    if agg.timestamp is None or None in (agg.open, agg.high, agg.low, agg.close):
        return None
    return Bar(
        timestamp=_from_ms(agg.timestamp),
        open=_dec(agg.open),
        high=_dec(agg.high),
        low=_dec(agg.low),
        close=_dec(agg.close),
        volume=_dec(agg.volume or 0),
        vwap=None if agg.vwap is None else _dec(agg.vwap),
    )


def _snapshot_quote(symbol: str, snapshot: Any) -> Quote | None:
    if not snapshot:  # the SDK returns [] when the body lacks "ticker"
        return None
    trade, book, day, minute, prev = (
        snapshot.last_trade,
        snapshot.last_quote,
        snapshot.day,
        snapshot.min,
        snapshot.prev_day,
    )
    # Plans without trades omit lastTrade/lastQuote, and overnight Massive has cleared
    # today's trade and bars; fall back through the newest price the snapshot does have.
    last = next(
        (
            p
            for p in (
                _price(trade.price) if trade else None,
                _price(minute.close) if minute else None,
                _price(day.close) if day else None,
                _price(prev.close) if prev else None,
            )
            if p is not None
        ),
        None,
    )
    if last is None:
        return None
    if snapshot.updated:
        timestamp = _from_ns(snapshot.updated)
    elif trade and trade.sip_timestamp:
        timestamp = _from_ns(trade.sip_timestamp)
    else:
        timestamp = datetime.now(UTC)
    return Quote(
        symbol=symbol,
        bid=_price(book.bid_price) if book else None,
        ask=_price(book.ask_price) if book else None,
        last=last,
        volume=_dec(day.volume) if day and day.volume else Decimal(0),
        timestamp=timestamp,
        prev_close=_price(prev.close) if prev else None,
    )


def _news_item(article: Any, wanted: Sequence[str]) -> NewsItem | None:
    if not (article.id and article.title and article.published_utc):
        return None
    tickers = tuple(article.tickers or ())
    return NewsItem(
        id=article.id,
        headline=article.title,
        source=(article.publisher and article.publisher.name) or "Massive",
        symbols=tickers,
        published_at=_utc(datetime.fromisoformat(article.published_utc)),
        summary=article.description,
        url=article.article_url,
        sentiment=_sentiment(article.insights or (), wanted or tickers),
    )


def _sentiment(insights: Iterable[Any], preferred: Sequence[str]) -> Sentiment | None:
    """The article's sentiment toward the first preferred symbol it has an opinion on."""
    by_ticker = {i.ticker: str(i.sentiment or "").lower() for i in insights}
    return next(
        (_SENTIMENTS[s] for t in preferred if (s := by_ticker.get(t, "")) in _SENTIMENTS),
        None,
    )
