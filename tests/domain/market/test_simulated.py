from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from domain.market.calendar import is_open, session_bounds
from domain.market.models import Bar, Quote, Sentiment, Timeframe
from domain.market.simulated import NEWS_SOURCE, SimulatedMarket
from domain.market.universe import UNIVERSE

CENT = Decimal("0.01")
NEW_YORK = ZoneInfo("America/New_York")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def market_at(now: datetime, seed: int = 42) -> tuple[SimulatedMarket, Clock]:
    clock = Clock(now)
    return SimulatedMarket(seed=seed, clock=clock), clock


async def quote(market: SimulatedMarket, symbol: str) -> Quote:
    result = await market.quote(symbol)
    assert result is not None
    return result


# Wednesday before Thanksgiving 2025, 13:00 ET
MIDDAY = utc(2025, 11, 26, 18, 0, 17)


# -- determinism -------------------------------------------------------------------


async def test_same_seed_and_clock_give_the_same_data_whatever_the_call_order() -> None:
    first, _ = market_at(MIDDAY)
    second, _ = market_at(MIDDAY)
    year_ago = MIDDAY - timedelta(days=365)

    a_quotes = [await quote(first, s) for s in ("AAPL", "MSFT", "SPY")]
    a_day = await first.bars("AAPL", Timeframe.DAY, year_ago, MIDDAY, 300)
    a_minute = await first.bars("MSFT", Timeframe.MINUTE, MIDDAY - timedelta(days=3), MIDDAY, 50)
    a_news = await first.news(None, 20)

    # Warm other caches first and ask in the opposite order.
    await second.bars("MSFT", Timeframe.WEEK, year_ago, MIDDAY, 60)
    await second.bars("AAPL", Timeframe.HOUR, MIDDAY - timedelta(days=30), MIDDAY, 500)
    await second.news(["AAPL"], 5)
    b_news = await second.news(None, 20)
    b_minute = await second.bars("MSFT", Timeframe.MINUTE, MIDDAY - timedelta(days=3), MIDDAY, 50)
    b_day = await second.bars("AAPL", Timeframe.DAY, year_ago, MIDDAY, 300)
    b_quotes = [await quote(second, s) for s in ("SPY", "MSFT", "AAPL")][::-1]

    assert a_quotes == b_quotes
    assert a_day == b_day
    assert a_minute == b_minute
    assert a_news == b_news


async def test_a_price_depends_on_the_time_not_on_what_was_asked_before() -> None:
    travelled, clock = market_at(MIDDAY + timedelta(days=5))
    await travelled.quote("NVDA")
    await travelled.bars("NVDA", Timeframe.MINUTE, MIDDAY, MIDDAY + timedelta(days=5), 1000)
    clock.now = MIDDAY
    fresh, _ = market_at(MIDDAY)
    assert await quote(travelled, "NVDA") == await quote(fresh, "NVDA")


async def test_a_different_seed_gives_a_different_market() -> None:
    one, _ = market_at(MIDDAY, seed=1)
    two, _ = market_at(MIDDAY, seed=2)
    assert (await quote(one, "AAPL")).last != (await quote(two, "AAPL")).last
    year_ago = MIDDAY - timedelta(days=365)
    one_bars = await one.bars("AAPL", Timeframe.DAY, year_ago, MIDDAY, 300)
    two_bars = await two.bars("AAPL", Timeframe.DAY, year_ago, MIDDAY, 300)
    assert [b.close for b in one_bars] != [b.close for b in two_bars]
    assert [n.headline for n in await one.news(None, 10)] != [
        n.headline for n in await two.news(None, 10)
    ]


# -- universe and lookup -------------------------------------------------------------


def test_the_universe_is_real_and_varied() -> None:
    market, _ = market_at(MIDDAY)
    symbols = market.symbols()
    assert len(symbols) >= 50
    assert len(set(symbols)) == len(symbols)
    assert {
        "AAPL",
        "MSFT",
        "NVDA",
        "AMZN",
        "GOOGL",
        "META",
        "TSLA",
        "JPM",
        "V",
        "SPY",
        "QQQ",
    } <= set(symbols)
    assert {spec.exchange for spec in UNIVERSE} == {"NASDAQ", "NYSE", "NYSE Arca"}
    assert len({spec.sector for spec in UNIVERSE}) >= 8
    assert all(spec.name and spec.description and spec.base_price > 0 for spec in UNIVERSE)
    assert len({spec.annual_volatility for spec in UNIVERSE}) > 10
    assert len({spec.average_daily_volume for spec in UNIVERSE}) > 10
    assert market.is_known("aapl") and not market.is_known("NOPE")


async def test_search_prefers_symbol_prefixes_then_names() -> None:
    market, _ = market_at(MIDDAY)
    assert [s.symbol for s in await market.search("aap", 5)] == ["AAPL"]
    by_name = await market.search("apple", 5)
    assert [s.symbol for s in by_name] == ["AAPL"]
    assert by_name[0].name == "Apple Inc." and by_name[0].sector == "Technology"
    mixed = [s.symbol for s in await market.search("MS", 10)]
    assert mixed[:2] == ["MS", "MSFT"]  # symbol prefixes first, shortest first
    assert "JPM" not in mixed
    assert [s.symbol for s in await market.search("bank", 10)] == ["BAC"]
    assert len(await market.search("a", 3)) == 3


async def test_details_and_quote_of_unknown_symbols() -> None:
    market, _ = market_at(MIDDAY)
    details = await market.details("spy")
    assert details is not None and details.exchange == "NYSE Arca"
    assert await market.details("NOPE") is None
    assert await market.quote("NOPE") is None
    assert await market.bars("NOPE", Timeframe.DAY, MIDDAY - timedelta(days=9), MIDDAY, 9) == []


# -- quotes and market hours --------------------------------------------------------------


async def test_quote_shape() -> None:
    market, _ = market_at(MIDDAY)
    q = await quote(market, "AAPL")
    assert q.symbol == "AAPL"
    assert q.timestamp == MIDDAY
    assert q.bid is not None and q.ask is not None
    assert q.bid < q.last < q.ask
    for value in (q.bid, q.ask, q.last, q.prev_close):
        assert isinstance(value, Decimal) and value == value.quantize(CENT)
    assert q.volume > 0 and q.volume == q.volume.to_integral_value()


async def test_prices_and_volume_move_during_a_session() -> None:
    market, clock = market_at(utc(2025, 11, 25, 15, 0))
    earlier = await quote(market, "AAPL")
    clock.now += timedelta(minutes=30)
    later = await quote(market, "AAPL")
    assert later.last != earlier.last
    assert later.volume > earlier.volume
    assert later.prev_close == earlier.prev_close


async def test_no_movement_on_a_saturday() -> None:
    market, clock = market_at(utc(2025, 11, 21, 21, 0))  # Friday's close
    friday = await quote(market, "TSLA")
    for moment in (utc(2025, 11, 22, 3, 0), utc(2025, 11, 22, 16, 45), utc(2025, 11, 24, 14, 29)):
        clock.now = moment
        weekend = await quote(market, "TSLA")
        assert (weekend.last, weekend.volume, weekend.prev_close) == (
            friday.last,
            friday.volume,
            friday.prev_close,
        )
        assert weekend.bid is not None and weekend.ask is not None
        assert weekend.bid < weekend.last < weekend.ask
    clock.now = utc(2025, 11, 24, 15, 0)
    monday = await quote(market, "TSLA")
    assert monday.prev_close == friday.last
    assert monday.last != friday.last


async def test_no_movement_on_a_holiday() -> None:
    market, clock = market_at(utc(2025, 12, 24, 18, 0))  # Christmas Eve closes at 13:00 ET
    eve = await quote(market, "NVDA")
    for hour in (2, 15, 20):
        clock.now = utc(2025, 12, 25, hour, 0)
        christmas = await quote(market, "NVDA")
        assert (christmas.last, christmas.volume) == (eve.last, eve.volume)
    day_bars = await market.bars("NVDA", Timeframe.DAY, utc(2025, 12, 20), clock.now, 10)
    assert day_bars[-1].timestamp == utc(2025, 12, 24, 14, 30)
    assert day_bars[-1].close == eve.last


async def test_half_day_closes_at_one_pm_eastern() -> None:
    market, clock = market_at(utc(2025, 11, 28, 17, 30))
    before_close = await quote(market, "AMZN")
    clock.now = utc(2025, 11, 28, 17, 59, 30)
    near_close = await quote(market, "AMZN")
    assert near_close.last != before_close.last
    clock.now = utc(2025, 11, 28, 18, 0, 1)
    at_close = await quote(market, "AMZN")
    clock.now = utc(2025, 11, 28, 20, 30)  # would still be trading on a full day
    afternoon = await quote(market, "AMZN")
    assert (afternoon.last, afternoon.volume) == (at_close.last, at_close.volume)
    minutes = await market.bars("AMZN", Timeframe.MINUTE, utc(2025, 11, 28), clock.now, 1000)
    assert len(minutes) == 210
    assert minutes[-1].timestamp == utc(2025, 11, 28, 17, 59)
    assert minutes[-1].close == afternoon.last
    assert sum(b.volume for b in minutes) == afternoon.volume
    # A short session also trades less than the full sessions around it.
    days = await market.bars("AMZN", Timeframe.DAY, utc(2025, 11, 1), clock.now, 30)
    full_days = [b.volume for b in days[:-1]]
    assert days[-1].volume < sum(full_days) / len(full_days)


async def test_prev_close_is_the_previous_sessions_close() -> None:
    market, _ = market_at(utc(2025, 11, 28, 15, 0))  # the day after Thanksgiving
    q = await quote(market, "JPM")
    days = await market.bars(
        "JPM", Timeframe.DAY, utc(2025, 11, 20), MIDDAY + timedelta(days=2), 10
    )
    assert days[-2].timestamp == utc(2025, 11, 26, 14, 30)
    assert q.prev_close == days[-2].close
    assert q.last == days[-1].close


# -- bars -----------------------------------------------------------------------


def assert_well_formed(bars: list[Bar], start: datetime, end: datetime, now: datetime) -> None:
    assert bars
    assert [b.timestamp for b in bars] == sorted({b.timestamp for b in bars})
    for bar in bars:
        assert start <= bar.timestamp <= end and bar.timestamp < now
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.vwap is not None and bar.low <= bar.vwap <= bar.high
        assert bar.volume > 0 and bar.volume == bar.volume.to_integral_value()
        for price in (bar.open, bar.high, bar.low, bar.close, bar.vwap):
            assert price == price.quantize(CENT)


@pytest.mark.parametrize("timeframe", list(Timeframe))
async def test_bars_are_consistent_for_every_timeframe(timeframe: Timeframe) -> None:
    market, _ = market_at(MIDDAY)
    start = MIDDAY - timedelta(days=400 if timeframe in (Timeframe.DAY, Timeframe.WEEK) else 12)
    bars = await market.bars("META", timeframe, start, MIDDAY, 5000)
    assert_well_formed(bars, start, MIDDAY, MIDDAY)
    if timeframe not in (Timeframe.DAY, Timeframe.WEEK):
        assert all(is_open(b.timestamp) for b in bars)
        # Every bar of a session starts a whole number of bar lengths after its open.
        for bar in bars:
            bounds = session_bounds(bar.timestamp.date())
            assert bounds is not None
            assert (bar.timestamp - bounds[0]) % timeframe.duration == timedelta(0)


async def test_a_year_of_daily_bars() -> None:
    market, _ = market_at(MIDDAY)
    bars = await market.bars("SPY", Timeframe.DAY, MIDDAY - timedelta(days=365), MIDDAY, 1000)
    assert 245 <= len(bars) <= 255
    assert bars[0].timestamp.date() >= (MIDDAY - timedelta(days=365)).date()
    assert bars[-1].timestamp == utc(2025, 11, 26, 14, 30)


async def test_limit_keeps_the_newest_bars() -> None:
    market, _ = market_at(MIDDAY)
    start = MIDDAY - timedelta(days=60)
    every = await market.bars("KO", Timeframe.DAY, start, MIDDAY, 1000)
    newest = await market.bars("KO", Timeframe.DAY, start, MIDDAY, 5)
    assert newest == every[-5:]
    minutes = await market.bars("KO", Timeframe.MINUTE, start, MIDDAY, 7)
    assert len(minutes) == 7 and minutes[-1].timestamp == utc(2025, 11, 26, 18, 0)


async def test_the_forming_bar_holds_data_up_to_now() -> None:
    market, _ = market_at(MIDDAY)
    q = await quote(market, "GOOGL")
    start = utc(2025, 11, 26)
    minute = (await market.bars("GOOGL", Timeframe.MINUTE, start, MIDDAY, 1))[0]
    assert minute.timestamp == utc(2025, 11, 26, 18, 0)
    assert minute.close == q.last
    day = (await market.bars("GOOGL", Timeframe.DAY, start, MIDDAY, 1))[0]
    assert day.close == q.last and day.volume == q.volume
    hours = await market.bars("GOOGL", Timeframe.HOUR, start, MIDDAY + timedelta(days=3), 100)
    assert hours[-1].timestamp == utc(2025, 11, 26, 17, 30)  # nothing past now
    assert sum(b.volume for b in hours) == q.volume


async def test_bars_aggregate_consistently() -> None:
    market, _ = market_at(MIDDAY)
    start = utc(2025, 11, 10)
    minutes = await market.bars("V", Timeframe.MINUTE, start, MIDDAY, 10000)
    days = await market.bars("V", Timeframe.DAY, start, MIDDAY, 100)
    weeks = await market.bars("V", Timeframe.WEEK, start, MIDDAY, 100)
    assert [w.timestamp for w in weeks] == [
        utc(2025, 11, 10, 14, 30),
        utc(2025, 11, 17, 14, 30),
        utc(2025, 11, 24, 14, 30),
    ]
    for week in weeks:
        members = [
            d for d in days if d.timestamp.isocalendar()[:2] == week.timestamp.isocalendar()[:2]
        ]
        assert week.volume == sum(d.volume for d in members)
        assert week.high == max(d.high for d in members)
        assert week.low == min(d.low for d in members)
        assert (week.open, week.close) == (members[0].open, members[-1].close)
    for day in days:
        members = [m for m in minutes if m.timestamp.date() == day.timestamp.date()]
        assert day.volume == sum(m.volume for m in members)
        assert (day.open, day.close) == (members[0].open, members[-1].close)
        assert day.high == max(m.high for m in members)


async def test_intraday_volume_is_u_shaped() -> None:
    market, _ = market_at(MIDDAY)
    first: list[Decimal] = []
    middle: list[Decimal] = []
    last: list[Decimal] = []
    for symbol in ("AAPL", "XOM", "QQQ"):
        bars = await market.bars(
            symbol, Timeframe.MINUTE, utc(2025, 10, 27), utc(2025, 11, 26), 20000
        )
        for bar in bars:
            bounds = session_bounds(bar.timestamp.date())
            assert bounds is not None
            since_open = bar.timestamp - bounds[0]
            to_close = bounds[1] - bar.timestamp
            if since_open < timedelta(minutes=30):
                first.append(bar.volume)
            elif to_close <= timedelta(minutes=30):
                last.append(bar.volume)
            elif timedelta(hours=2) <= since_open < timedelta(hours=4):
                middle.append(bar.volume)
    midday = sum(middle, Decimal(0)) / len(middle)
    assert sum(first, Decimal(0)) / len(first) > Decimal("1.5") * midday
    assert sum(last, Decimal(0)) / len(last) > Decimal("1.5") * midday


# -- scripted moves -----------------------------------------------------------------


async def test_a_scripted_drop_shows_up_after_its_duration() -> None:
    scripted, clock = market_at(MIDDAY)
    plain, plain_clock = market_at(MIDDAY)
    scripted.script_move("AAPL", Decimal("-3.5"))
    clock.now = plain_clock.now = MIDDAY + timedelta(minutes=2, seconds=30)
    halfway = (await quote(scripted, "AAPL")).last / (await quote(plain, "AAPL")).last - 1
    assert Decimal("-0.0185") < halfway < Decimal("-0.0165")
    for later in (timedelta(minutes=5), timedelta(minutes=47), timedelta(days=6)):
        clock.now = plain_clock.now = MIDDAY + later
        ratio = (await quote(scripted, "AAPL")).last / (await quote(plain, "AAPL")).last - 1
        assert abs(ratio - Decimal("-0.035")) < Decimal("0.0003")
    # Other symbols are untouched.
    assert await quote(scripted, "MSFT") == await quote(plain, "MSFT")


async def test_a_past_move_shows_in_daily_bars_and_prev_close() -> None:
    scripted, _ = market_at(MIDDAY)
    plain, _ = market_at(MIDDAY)
    scripted.script_move("BA", Decimal("10"), over=timedelta(hours=1), at=utc(2025, 11, 20, 15, 0))
    start = utc(2025, 11, 17)
    moved = await scripted.bars("BA", Timeframe.DAY, start, MIDDAY, 20)
    base = await plain.bars("BA", Timeframe.DAY, start, MIDDAY, 20)
    assert [b.timestamp for b in moved] == [b.timestamp for b in base]
    assert moved[:3] == base[:3]  # before the move
    for m, b in zip(moved[3:], base[3:], strict=True):
        assert abs(m.close / b.close - Decimal("1.1")) < Decimal("0.0005")
    assert moved[3].high > base[3].high
    q = await quote(scripted, "BA")
    assert q.prev_close == moved[-2].close
    assert len(scripted.scripted_moves) == 1


async def test_a_move_scripted_on_a_weekend_waits_for_the_open() -> None:
    scripted, clock = market_at(utc(2025, 11, 22, 16, 0))
    plain, plain_clock = market_at(utc(2025, 11, 22, 16, 0))
    before = await quote(scripted, "PFE")
    scripted.script_move("PFE", Decimal("-5"))
    clock.now = plain_clock.now = utc(2025, 11, 23, 12, 0)
    assert (await quote(scripted, "PFE")).last == before.last
    clock.now = plain_clock.now = utc(2025, 11, 24, 14, 31)
    ratio = (await quote(scripted, "PFE")).last / (await quote(plain, "PFE")).last - 1
    assert abs(ratio - Decimal("-0.05")) < Decimal("0.001")


def test_script_move_validates_its_input() -> None:
    market, _ = market_at(MIDDAY)
    with pytest.raises(ValueError, match="unknown symbol"):
        market.script_move("NOPE", Decimal("-1"))
    with pytest.raises(ValueError):
        market.script_move("AAPL", Decimal("-100"))


# -- news ---------------------------------------------------------------------------


async def test_news_is_generated_newest_first_and_pages_with_before() -> None:
    market, _ = market_at(MIDDAY)
    items = await market.news(None, 40)
    assert len(items) == 40
    stamps = [n.published_at for n in items]
    assert stamps == sorted(stamps, reverse=True) and stamps[0] <= MIDDAY
    assert len({n.id for n in items}) == 40
    for item in items:
        assert item.source == NEWS_SOURCE and item.url is None
        assert item.symbols and all(market.is_known(s) for s in item.symbols)
        assert isinstance(item.sentiment, Sentiment)
        assert item.relevance is not None and Decimal(0) < item.relevance <= Decimal(1)
        assert item.headline and item.summary
    page = await market.news(None, 10, before=items[19].published_at)
    assert page == [n for n in items if n.published_at < items[19].published_at][:10]


async def test_a_few_news_items_a_day() -> None:
    market, _ = market_at(MIDDAY)
    items = await market.news(None, 100, before=utc(2025, 11, 15))
    days = {n.published_at.astimezone(NEW_YORK).date() for n in items}
    assert 2.0 <= len(items) / len(days) <= 6.0


async def test_news_filters_by_symbol() -> None:
    market, _ = market_at(MIDDAY)
    items = await market.news(["aapl", "msft"], 10)
    assert len(items) == 10
    assert all(set(n.symbols) & {"AAPL", "MSFT"} for n in items)


async def test_scripted_news_comes_first_when_newest() -> None:
    market, clock = market_at(MIDDAY)
    item = market.add_news("Apple recalls a product line", ["AAPL"], sentiment=Sentiment.NEGATIVE)
    assert item.published_at == MIDDAY and item.source == NEWS_SOURCE
    assert (await market.news(["AAPL"], 3))[0] == item
    assert item not in await market.news(["MSFT"], 3)
    clock.now = MIDDAY - timedelta(hours=1)
    assert item not in await market.news(None, 50)  # not published yet at that time


# -- streaming ----------------------------------------------------------------------


async def test_stream_yields_subscribed_symbols_until_closed() -> None:
    market = SimulatedMarket(seed=3, clock=lambda: MIDDAY, tick_interval=0.01)
    stream = market.stream()
    await stream.subscribe(["AAPL", "msft", "NOPE"])
    quotes = stream.quotes()
    first = [await asyncio.wait_for(anext(quotes), 1) for _ in range(6)]
    assert [q.symbol for q in first] == ["AAPL", "MSFT"] * 3
    await stream.unsubscribe(["MSFT"])
    later = [await asyncio.wait_for(anext(quotes), 1) for _ in range(4)]
    assert [q.symbol for q in later] == ["AAPL"] * 4
    await stream.close()
    with pytest.raises(StopAsyncIteration):
        while True:
            await asyncio.wait_for(anext(quotes), 1)


async def test_stream_ticks_at_the_interval() -> None:
    market = SimulatedMarket(seed=3, clock=lambda: MIDDAY, tick_interval=0.05)
    stream = market.stream()
    await stream.subscribe(["SPY"])
    quotes = stream.quotes()
    started = time.perf_counter()
    for _ in range(4):
        await asyncio.wait_for(anext(quotes), 1)
    assert time.perf_counter() - started >= 0.14  # three sleeps between four ticks
    await stream.close()


# -- cost ---------------------------------------------------------------------------


async def test_cached_quotes_are_cheap() -> None:
    market, _ = market_at(MIDDAY)
    symbols = market.symbols()[:50]
    for symbol in symbols:
        await market.quote(symbol)
    started = time.perf_counter()
    for i in range(1000):
        await market.quote(symbols[i % 50])
    assert time.perf_counter() - started < 1.0
