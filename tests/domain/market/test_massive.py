"""The Massive adapter, driving the real `massive` SDK against the local fake server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.market.massive import (
    MassiveAuthError,
    MassiveMarket,
    MassiveQuoteStream,
    MassiveUnavailableError,
)
from domain.market.models import Bar, NewsItem, Quote, SecurityInfo, Sentiment, Timeframe
from tests.fakes.massive_server import (
    FakeMassive,
    WsAction,
    agg,
    quote_event,
    running_fake_massive,
    trade_event,
)

NOW = datetime(2024, 6, 24, 14, 30, tzinfo=UTC)  # a Monday, 10:30 in New York
TOPICS = {"Q.AAPL", "T.AAPL", "Q.MSFT", "T.MSFT"}


@pytest.fixture
def fake() -> Iterator[FakeMassive]:
    with running_fake_massive() as server:
        server.set_snapshot(
            "AAPL",
            last=190.0,
            bid=189.95,
            ask=190.05,
            volume=1_000_000,
            prev_close=188.0,
            updated=NOW,
        )
        server.set_snapshot(
            "MSFT",
            last=420.0,
            bid=419.9,
            ask=420.1,
            volume=500_000,
            prev_close=421.0,
            updated=NOW,
        )
        yield server


def massive(fake: FakeMassive, api_key: str | None = None) -> MassiveMarket:
    return MassiveMarket(
        api_key or fake.api_key,
        rest_base_url=fake.rest_url,
        ws_url=fake.ws_url,
        reconnect_delay=0.05,
        max_reconnect_delay=0.5,
    )


@pytest.fixture
def market(fake: FakeMassive) -> MassiveMarket:
    return massive(fake)


@pytest.fixture
async def stream(market: MassiveMarket) -> AsyncIterator[MassiveQuoteStream]:
    quote_stream = market.stream()
    yield quote_stream
    await quote_stream.close()


async def next_quote(quotes: AsyncIterator[Quote]) -> Quote:
    return await asyncio.wait_for(anext(quotes), 10)


async def quote_matching(quotes: AsyncIterator[Quote], wanted: Callable[[Quote], bool]) -> Quote:
    """The first quote `wanted` accepts, for when background re-seeds may come first."""
    for _ in range(20):
        quote = await next_quote(quotes)
        if wanted(quote):
            return quote
    raise AssertionError("no matching quote")


async def subscribed(fake: FakeMassive, stream: MassiveQuoteStream) -> AsyncIterator[Quote]:
    """Subscribe AAPL and MSFT and consume their seed quotes."""
    await stream.subscribe(["AAPL", "msft"])
    quotes = stream.quotes()
    seeds = {q.symbol: q for q in [await next_quote(quotes), await next_quote(quotes)]}
    assert seeds["AAPL"] == Quote(
        symbol="AAPL",
        bid=Decimal("189.95"),
        ask=Decimal("190.05"),
        last=Decimal("190.0"),
        volume=Decimal(1_000_000),
        timestamp=NOW,
        prev_close=Decimal("188.0"),
    )
    assert seeds["MSFT"].last == Decimal("420.0")
    await fake.wait_for(lambda: fake.live_topics() >= TOPICS)
    return quotes


# --- bars ---------------------------------------------------------------------------


async def test_day_bars_are_decimal_and_oldest_first(
    fake: FakeMassive, market: MassiveMarket
) -> None:
    days = [datetime(2024, 6, d, 4, tzinfo=UTC) for d in (18, 20, 21, 24)]
    fake.add_aggs(
        "AAPL",
        1,
        "day",
        [
            agg(days[0], 1, 1, 1, 1, 1),
            agg(days[1], 186.09, 187.76, 181.42, 186.07, 8_000_000.5, vw=185.2),
            agg(days[2], 186.5, 187.2, 185.1, 186.8, 7_000_000, vw=186.13),
            agg(days[3], 187.0, 190.1, 186.9, 189.98, 9_000_000),
        ],
    )

    bars = await market.bars(
        "AAPL",
        Timeframe.DAY,
        datetime(2024, 6, 19, tzinfo=UTC),
        datetime(2024, 6, 25, tzinfo=UTC),
        10,
    )

    assert bars == [
        Bar(
            days[1],
            Decimal("186.09"),
            Decimal("187.76"),
            Decimal("181.42"),
            Decimal("186.07"),
            Decimal("8000000.5"),
            Decimal("185.2"),
        ),
        Bar(
            days[2],
            Decimal("186.5"),
            Decimal("187.2"),
            Decimal("185.1"),
            Decimal("186.8"),
            Decimal("7000000"),
            Decimal("186.13"),
        ),
        Bar(
            days[3],
            Decimal("187.0"),
            Decimal("190.1"),
            Decimal("186.9"),
            Decimal("189.98"),
            Decimal("9000000"),
            None,
        ),
    ]
    assert all(isinstance(b.close, Decimal) and b.timestamp.tzinfo is not None for b in bars)


async def test_minute_bars_keep_the_newest_within_range_across_pages(
    fake: FakeMassive, market: MassiveMarket
) -> None:
    fake.page_size = 2
    minutes = [NOW + timedelta(minutes=i) for i in range(6)]
    fake.add_aggs(
        "AAPL",
        1,
        "minute",
        [agg(m, 190 + i, 191 + i, 189 + i, 190.5 + i, 1000) for i, m in enumerate(minutes)],
    )

    bars = await market.bars("AAPL", Timeframe.MINUTE, minutes[0], minutes[4], 3)

    assert [b.timestamp for b in bars] == minutes[2:5]
    assert [b.close for b in bars] == [Decimal("192.5"), Decimal("193.5"), Decimal("194.5")]
    # three bars at two per page: the adapter followed next_url
    assert len([r for r in fake.requests if r.startswith("/v2/aggs/")]) == 2


async def test_bars_start_inside_the_range(fake: FakeMassive, market: MassiveMarket) -> None:
    sundays = [datetime(2024, 6, d, 4, tzinfo=UTC) for d in (9, 16, 23)]
    fake.add_aggs("AAPL", 1, "week", [agg(s, 190, 195, 185, 192, 5e7) for s in sundays])

    wednesday = datetime(2024, 6, 12, tzinfo=UTC)
    bars = await market.bars("AAPL", Timeframe.WEEK, wednesday, NOW, 10)

    assert [b.timestamp for b in bars] == sundays[1:]
    assert bars[0].volume == Decimal("50000000.0")


@pytest.mark.parametrize(
    ("timeframe", "span"),
    [
        (Timeframe.MINUTE, "1/minute"),
        (Timeframe.FIVE_MINUTES, "5/minute"),
        (Timeframe.FIFTEEN_MINUTES, "15/minute"),
        (Timeframe.HOUR, "1/hour"),
        (Timeframe.DAY, "1/day"),
        (Timeframe.WEEK, "1/week"),
    ],
)
async def test_every_timeframe_asks_for_its_aggregate_span(
    fake: FakeMassive, market: MassiveMarket, timeframe: Timeframe, span: str
) -> None:
    fake.add_aggs("AAPL", *_span(span), [agg(NOW, 1.5, 2, 1, 1.75, 10)])

    bars = await market.bars("AAPL", timeframe, NOW - timedelta(days=1), NOW, 5)

    assert fake.requests[-1].startswith(f"/v2/aggs/ticker/AAPL/range/{span}/")
    assert [b.close for b in bars] == [Decimal("1.75")]


def _span(span: str) -> tuple[int, str]:
    multiplier, timespan = span.split("/")
    return int(multiplier), timespan


# --- quotes, search, details, news --------------------------------------------------


async def test_quote_maps_the_snapshot(market: MassiveMarket) -> None:
    quote = await market.quote("aapl")

    assert quote == Quote(
        symbol="AAPL",
        bid=Decimal("189.95"),
        ask=Decimal("190.05"),
        last=Decimal("190.0"),
        volume=Decimal(1_000_000),
        timestamp=NOW,
        prev_close=Decimal("188.0"),
    )
    assert quote.change == Decimal("2.0")


async def test_quote_falls_back_to_the_newest_price_the_snapshot_has(
    fake: FakeMassive, market: MassiveMarket
) -> None:
    snapshot = fake.snapshots["AAPL"]
    # a plan without trades and quotes
    del snapshot["lastTrade"], snapshot["lastQuote"]
    snapshot["min"]["c"] = 189.5
    quote = await market.quote("AAPL")
    assert quote is not None
    assert (quote.last, quote.bid, quote.ask, quote.volume) == (
        Decimal("189.5"),
        None,
        None,
        Decimal(1_000_000),
    )

    # overnight, after Massive cleared the day
    del snapshot["min"]
    snapshot["day"] = {"o": 0, "h": 0, "l": 0, "c": 0, "v": 0, "vw": 0}
    quote = await market.quote("AAPL")
    assert quote is not None
    assert (quote.last, quote.volume, quote.change) == (Decimal("188.0"), Decimal(0), Decimal(0))


async def test_unknown_symbols_are_none(fake: FakeMassive, market: MassiveMarket) -> None:
    assert await market.quote("NOPE") is None
    assert await market.details("NOPE") is None
    assert await market.bars("NOPE", Timeframe.DAY, NOW - timedelta(days=5), NOW, 5) == []
    requests_so_far = len(fake.requests)
    assert await market.quote("../v3/reference/tickers") is None
    assert len(fake.requests) == requests_so_far  # never sent upstream


async def test_search_finds_tickers_by_name_or_symbol(
    fake: FakeMassive, market: MassiveMarket
) -> None:
    fake.add_ticker("AAPL", "Apple Inc.")
    fake.add_ticker("AMZN", "Amazon.com, Inc.")
    fake.add_ticker("MSFT", "Microsoft Corporation")

    assert await market.search("apple", 5) == [SecurityInfo("AAPL", "Apple Inc.", "XNAS")]
    assert [s.symbol for s in await market.search("a", 2)] == ["AAPL", "AMZN"]
    assert await market.search("  ", 5) == []


async def test_details(fake: FakeMassive, market: MassiveMarket) -> None:
    fake.add_ticker(
        "AAPL",
        "Apple Inc.",
        sic_description="ELECTRONIC COMPUTERS",
        description="Apple designs smartphones.",
    )

    assert await market.details("AAPL") == SecurityInfo(
        symbol="AAPL",
        name="Apple Inc.",
        exchange="XNAS",
        sector="ELECTRONIC COMPUTERS",
        description="Apple designs smartphones.",
    )


async def test_news_has_symbols_and_sentiment(fake: FakeMassive, market: MassiveMarket) -> None:
    hour = timedelta(hours=1)
    fake.add_article(
        id="both",
        title="Apple and Microsoft diverge",
        publisher="Benzinga",
        tickers=["AAPL", "MSFT"],
        published=NOW - hour,
        description="One up, one down.",
        url="https://news.example/both",
        sentiments={"AAPL": "positive", "MSFT": "negative"},
    )
    fake.add_article(
        id="msft",
        title="Microsoft holds",
        publisher="Reuters",
        tickers=["MSFT"],
        published=NOW - 2 * hour,
        sentiments={"MSFT": "neutral"},
    )
    fake.add_article(
        id="tsla", title="Tesla", publisher="Reuters", tickers=["TSLA"], published=NOW - hour / 2
    )
    fake.add_article(
        id="aapl-old",
        title="Apple, earlier",
        publisher="Reuters",
        tickers=["AAPL"],
        published=NOW - 3 * hour,
    )

    apple = await market.news(["AAPL"], 10)
    assert apple[0] == NewsItem(
        id="both",
        headline="Apple and Microsoft diverge",
        source="Benzinga",
        symbols=("AAPL", "MSFT"),
        published_at=NOW - hour,
        summary="One up, one down.",
        url="https://news.example/both",
        sentiment=Sentiment.POSITIVE,
    )
    assert [(n.id, n.sentiment) for n in apple] == [
        ("both", Sentiment.POSITIVE),
        ("aapl-old", None),
    ]

    # one request per symbol, merged newest first without duplicates; sentiment toward
    # the first requested symbol the article has an opinion on
    both = await market.news(["MSFT", "AAPL"], 10)
    assert [(n.id, n.sentiment) for n in both] == [
        ("both", Sentiment.NEGATIVE),
        ("msft", Sentiment.NEUTRAL),
        ("aapl-old", None),
    ]
    assert [n.id for n in await market.news(None, 2)] == ["tsla", "both"]
    # strictly before: the article published exactly at `before` is left out
    assert [n.id for n in await market.news(["AAPL"], 10, before=NOW - hour)] == ["aapl-old"]
    half_a_second_later = NOW - hour + timedelta(milliseconds=500)
    assert [n.id for n in await market.news(["AAPL"], 1, before=half_a_second_later)] == ["both"]


# --- failures -----------------------------------------------------------------------


async def test_wrong_api_key_is_a_clear_error(fake: FakeMassive) -> None:
    with pytest.raises(MassiveAuthError, match="Unknown API Key"):
        await massive(fake, api_key="not-the-key").quote("AAPL")


async def test_unreachable_massive_is_unavailable() -> None:
    market = MassiveMarket("key", rest_base_url="http://127.0.0.1:9", ws_url="ws://127.0.0.1:9")

    with pytest.raises(MassiveUnavailableError):
        await market.details("AAPL")


# --- the live stream ----------------------------------------------------------------


async def test_stream_builds_quotes_from_quote_and_trade_messages(
    fake: FakeMassive, stream: MassiveQuoteStream
) -> None:
    quotes = await subscribed(fake, stream)
    assert [a.topics for a in fake.subscriptions()] == [TOPICS]

    await stream.subscribe(["AAPL"])  # already subscribed: nothing goes upstream
    await fake.push(quote_event("AAPL", 190.01, 190.03, NOW + timedelta(seconds=1)))
    assert await next_quote(quotes) == Quote(
        symbol="AAPL",
        bid=Decimal("190.01"),
        ask=Decimal("190.03"),
        last=Decimal("190.0"),
        volume=Decimal(1_000_000),
        timestamp=NOW + timedelta(seconds=1),
        prev_close=Decimal("188.0"),
    )

    await fake.push(trade_event("MSFT", 421.55, 300, NOW + timedelta(seconds=2)))
    msft = await next_quote(quotes)
    assert (msft.symbol, msft.last, msft.volume, msft.bid, msft.ask) == (
        "MSFT",
        Decimal("421.55"),
        Decimal(500_300),
        Decimal("419.9"),
        Decimal("420.1"),
    )
    assert msft.timestamp == NOW + timedelta(seconds=2)

    await fake.push(trade_event("AAPL", 190.02, 50, NOW + timedelta(seconds=3)))
    aapl = await next_quote(quotes)
    assert (aapl.last, aapl.volume, aapl.bid) == (
        Decimal("190.02"),
        Decimal(1_000_050),
        Decimal("190.01"),
    )
    assert len(fake.subscriptions()) == 1


async def test_quotes_wait_for_a_trade_when_there_is_no_snapshot(
    fake: FakeMassive, stream: MassiveQuoteStream
) -> None:
    await stream.subscribe(["NEWCO"])
    await fake.wait_for(lambda: "T.NEWCO" in fake.live_topics())
    quotes = stream.quotes()

    await fake.push(quote_event("NEWCO", 9.9, 10.1, NOW))
    await fake.push(trade_event("NEWCO", 10.0, 100, NOW + timedelta(seconds=1)))

    assert await next_quote(quotes) == Quote(
        symbol="NEWCO",
        bid=Decimal("9.9"),
        ask=Decimal("10.1"),
        last=Decimal("10.0"),
        volume=Decimal(100),
        timestamp=NOW + timedelta(seconds=1),
    )


async def test_unsubscribe_stops_a_symbol(fake: FakeMassive, stream: MassiveQuoteStream) -> None:
    quotes = await subscribed(fake, stream)

    await stream.unsubscribe(["MSFT"])
    # whether this one is dropped here or upstream, it must not come out
    await fake.push(trade_event("MSFT", 430.0, 10, NOW + timedelta(seconds=1)))
    await fake.wait_for(lambda: not {"Q.MSFT", "T.MSFT"} & fake.live_topics())
    unsubscribes = [a for a in fake.ws_actions if a.action == "unsubscribe"]
    assert [(a.connection, a.topics) for a in unsubscribes] == [(1, {"Q.MSFT", "T.MSFT"})]
    assert await fake.push(trade_event("MSFT", 431.0, 10, NOW + timedelta(seconds=2))) == 0
    await fake.push(trade_event("AAPL", 191.0, 10, NOW + timedelta(seconds=3)))

    quote = await next_quote(quotes)
    assert (quote.symbol, quote.last) == ("AAPL", Decimal("191.0"))


@pytest.mark.parametrize("close_code", [1011, 1001], ids=["error-close", "going-away"])
async def test_stream_reconnects_and_resubscribes_after_upstream_drop(
    fake: FakeMassive, stream: MassiveQuoteStream, close_code: int
) -> None:
    quotes = await subscribed(fake, stream)
    # trades the stream will miss while it is down
    fake.set_snapshot(
        "AAPL",
        last=191.0,
        bid=190.9,
        ask=191.1,
        volume=1_200_000,
        prev_close=188.0,
        updated=NOW + timedelta(seconds=10),
    )

    await fake.drop_connections(close_code)
    await fake.wait_for(lambda: fake.connection_count == 2 and fake.live_topics() >= TOPICS)

    second = [a for a in fake.ws_actions if a.connection == 2]
    assert second[0] == WsAction(2, "auth", fake.api_key)
    assert [a.topics for a in fake.subscriptions(2)] == [TOPICS]
    reseeded = await quote_matching(quotes, lambda q: q.symbol == "AAPL")
    assert (reseeded.last, reseeded.volume) == (Decimal("191.0"), Decimal(1_200_000))

    await fake.push(quote_event("AAPL", 191.2, 191.3, NOW + timedelta(seconds=20)))
    after = await quote_matching(quotes, lambda q: q.symbol == "AAPL")
    assert (after.bid, after.ask, after.last) == (
        Decimal("191.2"),
        Decimal("191.3"),
        Decimal("191.0"),
    )
    assert fake.connection_count == 2


async def test_a_new_trading_day_restarts_volume_and_reseeds_prev_close(
    fake: FakeMassive, stream: MassiveQuoteStream
) -> None:
    quotes = await subscribed(fake, stream)
    tomorrow = NOW + timedelta(hours=18)  # 04:30 in New York, Tuesday pre-market
    fake.set_snapshot(
        "AAPL",
        last=190.0,
        bid=189.95,
        ask=190.05,
        volume=0,
        prev_close=190.0,
        updated=tomorrow - timedelta(minutes=1),
    )

    await fake.push(trade_event("AAPL", 190.4, 25, tomorrow))

    quote = await quote_matching(quotes, lambda q: q.prev_close == Decimal("190.0"))
    assert (quote.last, quote.volume, quote.timestamp) == (Decimal("190.4"), Decimal(25), tomorrow)


async def test_stream_with_a_rejected_key_raises(fake: FakeMassive) -> None:
    stream = massive(fake, api_key="not-the-key").stream()
    try:
        await stream.subscribe(["AAPL"])
        with pytest.raises(MassiveAuthError):
            await next_quote(stream.quotes())
        assert fake.connection_count == 1  # no point retrying a rejected key
        with pytest.raises(MassiveAuthError):
            await stream.subscribe(["MSFT"])
    finally:
        await stream.close()


async def test_close_ends_quotes(fake: FakeMassive, stream: MassiveQuoteStream) -> None:
    quotes = await subscribed(fake, stream)
    waiting = asyncio.ensure_future(anext(quotes))
    await asyncio.sleep(0.05)

    await stream.close()

    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)
    await fake.wait_for(lambda: not fake.live_topics())
