"""Market data <-> JSON-able dicts, for Redis caches and the quote channels (Decimal as str)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from domain.market.models import Bar, NewsItem, Quote, SecurityInfo, Sentiment


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _undec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def quote_to_dict(q: Quote) -> dict[str, Any]:
    return {
        "symbol": q.symbol,
        "bid": _dec(q.bid),
        "ask": _dec(q.ask),
        "last": str(q.last),
        "volume": str(q.volume),
        "prevClose": _dec(q.prev_close),
        "timestamp": q.timestamp.isoformat(),
    }


def quote_from_dict(d: dict[str, Any]) -> Quote:
    return Quote(
        symbol=d["symbol"],
        bid=_undec(d["bid"]),
        ask=_undec(d["ask"]),
        last=Decimal(d["last"]),
        volume=Decimal(d["volume"]),
        prev_close=_undec(d["prevClose"]),
        timestamp=datetime.fromisoformat(d["timestamp"]),
    )


def bar_to_list(b: Bar) -> list[Any]:
    return [
        b.timestamp.isoformat(),
        str(b.open),
        str(b.high),
        str(b.low),
        str(b.close),
        str(b.volume),
        _dec(b.vwap),
    ]


def bar_from_list(v: list[Any]) -> Bar:
    return Bar(
        timestamp=datetime.fromisoformat(v[0]),
        open=Decimal(v[1]),
        high=Decimal(v[2]),
        low=Decimal(v[3]),
        close=Decimal(v[4]),
        volume=Decimal(v[5]),
        vwap=_undec(v[6]),
    )


def security_to_dict(s: SecurityInfo) -> dict[str, Any]:
    return {
        "symbol": s.symbol,
        "name": s.name,
        "exchange": s.exchange,
        "sector": s.sector,
        "description": s.description,
    }


def security_from_dict(d: dict[str, Any]) -> SecurityInfo:
    return SecurityInfo(**d)


def news_to_dict(n: NewsItem) -> dict[str, Any]:
    return {
        "id": n.id,
        "headline": n.headline,
        "source": n.source,
        "symbols": list(n.symbols),
        "publishedAt": n.published_at.isoformat(),
        "summary": n.summary,
        "url": n.url,
        "sentiment": None if n.sentiment is None else n.sentiment.value,
        "relevance": _dec(n.relevance),
    }


def news_from_dict(d: dict[str, Any]) -> NewsItem:
    return NewsItem(
        id=d["id"],
        headline=d["headline"],
        source=d["source"],
        symbols=tuple(d["symbols"]),
        published_at=datetime.fromisoformat(d["publishedAt"]),
        summary=d["summary"],
        url=d["url"],
        sentiment=None if d["sentiment"] is None else Sentiment(d["sentiment"]),
        relevance=_undec(d["relevance"]),
    )
