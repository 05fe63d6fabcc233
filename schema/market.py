"""Market data types: the one shared, unscoped area of the API."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from domain.market import codec, models
from domain.market.calendar import MarketStatus as MarketStatusModel
from domain.market.indicators import Indicators as IndicatorsModel
from domain.market.service import MarketDataError
from schema.context import Info
from schema.errors import BadInput

if TYPE_CHECKING:
    from kianax.broadcast import Message

Timeframe = strawberry.enum(models.Timeframe, name="Timeframe")
Sentiment = strawberry.enum(models.Sentiment, name="Sentiment")


@strawberry.type
class MarketStatus:
    is_open: bool
    next_open: datetime
    next_close: datetime

    @classmethod
    def from_model(cls, status: MarketStatusModel) -> MarketStatus:
        return cls(is_open=status.is_open, next_open=status.next_open, next_close=status.next_close)


@strawberry.type
class Quote:
    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal
    volume: Decimal
    change: Decimal | None
    change_percent: Decimal | None
    timestamp: datetime

    @classmethod
    def from_model(cls, quote: models.Quote) -> Quote:
        percent = quote.change_percent
        return cls(
            symbol=quote.symbol,
            bid=quote.bid,
            ask=quote.ask,
            last=quote.last,
            volume=quote.volume,
            change=quote.change,
            change_percent=None if percent is None else round(percent, 4),
            timestamp=quote.timestamp,
        )


# A quote channel's latest message and the Quote parsed from it, by channel.
_parsed_quotes: dict[str, tuple[Message, Quote]] = {}


def quote_from_message(message: Message) -> Quote:
    """The Quote a message of a quote channel carries, parsed once for all its subscribers.

    The hub hands the same read-only Message to every local subscriber of a channel, so the
    first subscriber's Quote serves the rest. Matching the message by identity keeps this
    right in any reading order; a subscriber still on an older message merely parses it again.
    """
    parsed = _parsed_quotes.get(message.channel)
    if parsed is not None and parsed[0] is message:
        return parsed[1]
    quote = Quote.from_model(codec.quote_from_dict(message.data))
    _parsed_quotes[message.channel] = (message, quote)
    return quote


@strawberry.type
class Bar:
    timestamp: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal | None

    @classmethod
    def from_model(cls, bar: models.Bar) -> Bar:
        return cls(
            timestamp=bar.timestamp,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            vwap=bar.vwap,
        )


@strawberry.type
class Indicators:
    rsi14: Decimal | None
    macd: Decimal | None
    macd_signal: Decimal | None
    sma20: Decimal | None
    sma50: Decimal | None
    ema20: Decimal | None
    average_volume20: Decimal | None

    @classmethod
    def from_model(cls, value: IndicatorsModel) -> Indicators:
        return cls(
            rsi14=value.rsi14,
            macd=value.macd,
            macd_signal=value.macd_signal,
            sma20=value.sma20,
            sma50=value.sma50,
            ema20=value.ema20,
            average_volume20=value.average_volume20,
        )


@strawberry.type
class SecuritySummary:
    symbol: str
    name: str
    exchange: str | None


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None

    @classmethod
    def of(cls, edges: Sequence[Any], has_next_page: bool) -> PageInfo:
        """For a page of edges (each with a `cursor`), fetched with one row to spare."""
        return cls(has_next_page=has_next_page, end_cursor=edges[-1].cursor if edges else None)


@strawberry.type
class NewsArticle:
    id: strawberry.ID
    headline: str
    summary: str | None
    source: str
    url: str | None
    symbols: list[str]
    published_at: datetime
    sentiment: Sentiment | None  # type: ignore[valid-type]
    relevance: Decimal | None

    @classmethod
    def from_model(cls, item: models.NewsItem) -> NewsArticle:
        return cls(
            id=strawberry.ID(item.id),
            headline=item.headline,
            summary=item.summary,
            source=item.source,
            url=item.url,
            symbols=list(item.symbols),
            published_at=item.published_at,
            sentiment=item.sentiment,
            relevance=item.relevance,
        )


@strawberry.type
class NewsEdge:
    cursor: str
    node: NewsArticle


@strawberry.type
class NewsConnection:
    edges: list[NewsEdge]
    page_info: PageInfo


def news_cursor(item: models.NewsItem) -> str:
    return base64.urlsafe_b64encode(item.published_at.isoformat().encode()).decode()


def parse_news_cursor(cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    try:
        return datetime.fromisoformat(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput("after is not a cursor from this API") from exc


def news_connection(items: list[models.NewsItem], first: int) -> NewsConnection:
    """`items` holds up to first + 1 articles: the extra one only says another page exists."""
    edges = [NewsEdge(cursor=news_cursor(i), node=NewsArticle.from_model(i)) for i in items[:first]]
    return NewsConnection(edges=edges, page_info=PageInfo.of(edges, len(items) > first))


@strawberry.type
class Security:
    symbol: str
    name: str
    exchange: str | None
    sector: str | None
    description: str | None

    @classmethod
    def from_model(cls, info: models.SecurityInfo) -> Security:
        return cls(
            symbol=info.symbol,
            name=info.name,
            exchange=info.exchange,
            sector=info.sector,
            description=info.description,
        )

    @strawberry.field
    async def quote(self, info: Info) -> Quote | None:
        found = await info.context.loaders.quote_by_symbol.load(self.symbol)
        return None if found is None else Quote.from_model(found)

    @strawberry.field
    async def bars(
        self,
        info: Info,
        timeframe: Timeframe,  # type: ignore[valid-type]
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        limit: int = 200,
    ) -> list[Bar]:
        with market_errors():
            found = await info.context.market.bars(self.symbol, timeframe, from_, to, limit)
        return [Bar.from_model(b) for b in found]

    @strawberry.field
    async def indicators(
        self,
        info: Info,
        timeframe: Timeframe = models.Timeframe.DAY,  # type: ignore[valid-type]
    ) -> Indicators:
        with market_errors():
            return Indicators.from_model(
                await info.context.market.indicators(self.symbol, timeframe)
            )

    @strawberry.field
    async def news(self, info: Info, first: int = 10, after: str | None = None) -> NewsConnection:
        return await news_page(info, [self.symbol], first, after)


@contextlib.contextmanager
def market_errors() -> Iterator[None]:
    """Bad market-data input (unknown symbol, absurd range) becomes a clear client error."""
    try:
        yield
    except MarketDataError as exc:
        raise BadInput(str(exc)) from exc


async def news_page(
    info: Info, symbols: list[str] | None, first: int, after: str | None
) -> NewsConnection:
    if not 1 <= first <= 100:
        raise BadInput("first must be between 1 and 100")
    with market_errors():
        items = await info.context.market.news(symbols, first + 1, parse_news_cursor(after))
    return news_connection(items, first)
