from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.market.calendar import is_open, session_bounds
from domain.market.models import Sentiment
from domain.triggers.spec import (
    NEW_YORK,
    IndicatorConfig,
    IndicatorOp,
    ManualConfig,
    NewsConfig,
    PriceConfig,
    TimeConfig,
    TriggerConfig,
    TriggerConfigError,
    TriggerType,
    VolumeConfig,
    WebhookConfig,
    config_from_json,
    next_fire_time,
)

D = Decimal


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def fields(config: TriggerConfig) -> list[str]:
    return [p.field for p in config.validate()]


# ---------------------------------------------------------------- descriptions


@pytest.mark.parametrize(
    ("config", "text"),
    [
        (TimeConfig("30 9 * * 1-5"), "Every weekday at 09:30 America/New_York"),
        (TimeConfig("0 9 * * MON-FRI"), "Every weekday at 09:00 America/New_York"),
        (TimeConfig("30 9 * * *"), "Every market day at 09:30 America/New_York"),
        (
            TimeConfig("30 9 * * *", market_days_only=False),
            "Every day at 09:30 America/New_York",
        ),
        (
            TimeConfig("0 9,15 * * 1-5", timezone="Europe/London"),
            "Every weekday at 09:00 and 15:00 Europe/London",
        ),
        (
            TimeConfig("0 10 * * 1,3,5"),
            "Every Monday, Wednesday and Friday at 10:00 America/New_York",
        ),
        (
            TimeConfig("*/15 9-16 * * 1-5"),
            "Every 15 minutes between 09:00 and 16:45 on weekdays America/New_York",
        ),
        (TimeConfig("0 * * * 1-5"), "Every hour on the hour on weekdays America/New_York"),
        (
            TimeConfig("5 * * * *", market_days_only=False),
            "Every hour at :05 America/New_York",
        ),
        (TimeConfig("* * * * *"), "Every minute on market days America/New_York"),
        (TimeConfig("0 0 1 * *"), "On schedule '0 0 1 * *' (America/New_York)"),
        (TimeConfig("*/7 * * * *"), "On schedule '*/7 * * * *' (America/New_York)"),
        (TimeConfig("nonsense"), "On schedule 'nonsense' (America/New_York)"),
        (
            PriceConfig("AAPL", change_percent=D(-3), window_minutes=30),
            "When AAPL drops 3% within 30 minutes",
        ),
        (
            PriceConfig("AAPL", change_percent=D("2.5"), window_minutes=120),
            "When AAPL rises 2.5% within 2 hours",
        ),
        (
            PriceConfig("AAPL", change_percent=D(-5)),
            "When AAPL drops 5% from the previous close",
        ),
        (PriceConfig("AAPL", above=D(200)), "When AAPL crosses above $200"),
        (PriceConfig("AAPL", below=D("150.5")), "When AAPL crosses below $150.50"),
        (VolumeConfig("MSFT", D(2)), "When MSFT volume exceeds 2x its 20-day average"),
        (IndicatorConfig("AAPL", "RSI14", "< 30"), "When AAPL RSI14 < 30"),
        (
            IndicatorConfig("AAPL", "MACD", "crosses_above_signal"),
            "When MACD crosses above its signal on AAPL",
        ),
        (
            NewsConfig(symbols=("AAPL",), sentiment=Sentiment.NEGATIVE),
            "When news mentions AAPL with negative sentiment",
        ),
        (
            NewsConfig(keywords=("merger", "buyout"), symbols=("AAPL", "MSFT")),
            'When news about AAPL or MSFT mentions "merger" or "buyout"',
        ),
        (
            NewsConfig(keywords=("recall",), min_relevance=D("0.5")),
            'When news mentions "recall" (relevance at least 0.5)',
        ),
        (WebhookConfig(), "When the webhook is called"),
        (ManualConfig(), "When run by hand"),
    ],
)
def test_describe(config: TriggerConfig, text: str) -> None:
    assert config.describe() == text


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("config", "problems"),
    [
        (TimeConfig("30 9 * * 1-5"), []),
        (TimeConfig("@daily"), []),
        (TimeConfig("30 9 * * * *"), ["cron"]),
        (TimeConfig("61 9 * * *"), ["cron"]),
        (TimeConfig("0 0 30 2 *"), ["cron"]),
        (TimeConfig("0 9 * * 6,0"), ["cron"]),
        (TimeConfig("0 9 * * 6,0", market_days_only=False), []),
        (TimeConfig("0 9 1 * 6"), []),
        (TimeConfig("30 9 * * *", timezone="Mars/Olympus"), ["timezone"]),
        (TimeConfig("30 9 * * *", timezone="../etc/passwd"), ["timezone"]),
        (PriceConfig("AAPL", change_percent=D(-3), window_minutes=30), []),
        (PriceConfig("AAPL", above=D(200)), []),
        (PriceConfig("aapl", above=D(200)), ["symbol"]),
        (PriceConfig("AAPL"), ["changePercent"]),
        (PriceConfig("AAPL", above=D(200), below=D(100)), ["changePercent"]),
        (PriceConfig("AAPL", change_percent=D(0)), ["changePercent"]),
        (PriceConfig("AAPL", change_percent=D(-100)), ["changePercent"]),
        (PriceConfig("AAPL", change_percent=D("NaN")), ["changePercent"]),
        (PriceConfig("AAPL", above=D(-1)), ["above"]),
        (PriceConfig("AAPL", below=D(0)), ["below"]),
        (PriceConfig("AAPL", change_percent=D(2), window_minutes=0), ["windowMinutes"]),
        (PriceConfig("AAPL", change_percent=D(2), window_minutes=1441), ["windowMinutes"]),
        (PriceConfig("AAPL", above=D(2), window_minutes=5), ["windowMinutes"]),
        (VolumeConfig("MSFT", D("1.5")), []),
        (VolumeConfig("MSFT", D(1)), ["multipleOfAverage"]),
        (VolumeConfig("MSFT", D(101)), ["multipleOfAverage"]),
        (IndicatorConfig("AAPL", "SMA50", ">= 150.5"), []),
        (IndicatorConfig("AAPL", "MACD", "crosses_below_signal"), []),
        (IndicatorConfig("AAPL", "MACD", "< -0.5"), []),
        (IndicatorConfig("AAPL", "ADX", "< 30"), ["indicator"]),
        (IndicatorConfig("AAPL", "RSI14", "crosses_above_signal"), ["condition"]),
        (IndicatorConfig("AAPL", "RSI14", "< 130"), ["condition"]),
        (IndicatorConfig("AAPL", "RSI14", "below 30"), ["condition"]),
        (NewsConfig(symbols=("AAPL",)), []),
        (NewsConfig(), ["keywords"]),
        (NewsConfig(keywords=("",)), ["keywords"]),
        (NewsConfig(keywords=("x" * 101,)), ["keywords"]),
        (NewsConfig(keywords=tuple(f"k{i}" for i in range(21))), ["keywords"]),
        (NewsConfig(symbols=("AAPL", "bad")), ["symbols"]),
        (NewsConfig(symbols=("AAPL",), min_relevance=D("1.5")), ["minRelevance"]),
        (WebhookConfig(), []),
        (ManualConfig(), []),
    ],
)
def test_validate(config: TriggerConfig, problems: list[str]) -> None:
    assert fields(config) == problems


def test_indicator_conditions_parse() -> None:
    assert IndicatorConfig("AAPL", "RSI14", "<= 30").parsed() == (IndicatorOp.LE, D(30))
    assert IndicatorConfig("AAPL", "MACD", "crosses_above_signal").parsed() == (
        IndicatorOp.CROSSES_ABOVE_SIGNAL,
        None,
    )


# ---------------------------------------------------------------- JSON


_ONE_OF_EACH: list[TriggerConfig] = [
    TimeConfig("30 9 * * 1-5"),
    PriceConfig("AAPL", above=D(200)),
    VolumeConfig("MSFT", D(2)),
    IndicatorConfig("AAPL", "RSI14", "< 30"),
    NewsConfig(symbols=("AAPL",)),
    WebhookConfig(),
    ManualConfig(),
]


def test_every_trigger_type_has_a_config() -> None:
    assert [c.type for c in _ONE_OF_EACH] == list(TriggerType)
    for config in _ONE_OF_EACH:
        assert config_from_json(config.type, config.to_json()) == config


_SYMBOLS = st.sampled_from(["AAPL", "MSFT", "BRK.B"])
_DECIMALS = st.decimals(min_value=D("-1000"), max_value=D("1000"), places=4)
_CONFIGS: st.SearchStrategy[TriggerConfig] = st.one_of(
    st.builds(
        TimeConfig,
        cron=st.sampled_from(["30 9 * * 1-5", "*/5 * * * *", "@daily"]),
        timezone=st.sampled_from(["America/New_York", "UTC", "Asia/Tokyo"]),
        market_days_only=st.booleans(),
    ),
    st.builds(
        PriceConfig,
        symbol=_SYMBOLS,
        change_percent=st.none() | _DECIMALS,
        above=st.none() | _DECIMALS,
        below=st.none() | _DECIMALS,
        window_minutes=st.none() | st.integers(1, 1440),
    ),
    st.builds(VolumeConfig, symbol=_SYMBOLS, multiple_of_average=_DECIMALS),
    st.builds(
        IndicatorConfig,
        symbol=_SYMBOLS,
        indicator=st.sampled_from(["RSI14", "MACD"]),
        condition=st.sampled_from(["< 30", "crosses_above_signal"]),
    ),
    st.builds(
        NewsConfig,
        keywords=st.lists(st.text(max_size=10), max_size=3).map(tuple),
        symbols=st.lists(_SYMBOLS, max_size=3).map(tuple),
        sentiment=st.none() | st.sampled_from(Sentiment),
        min_relevance=st.none() | _DECIMALS,
    ),
    st.just(WebhookConfig()),
    st.just(ManualConfig()),
)


@settings(max_examples=300)
@given(_CONFIGS)
def test_json_round_trip(config: TriggerConfig) -> None:
    data = config.to_json()
    assert all(not isinstance(v, Decimal | float) for v in data.values())
    assert config_from_json(config.type, data) == config


@pytest.mark.parametrize(
    ("trigger_type", "data"),
    [
        (TriggerType.TIME, {}),
        (TriggerType.TIME, {"cron": 5}),
        (TriggerType.TIME, {"cron": "* * * * *", "marketDaysOnly": "yes"}),
        (TriggerType.TIME, {"cron": "* * * * *", "surprise": 1}),
        (TriggerType.PRICE, {"symbol": "AAPL", "above": 200.5}),
        (TriggerType.PRICE, {"symbol": "AAPL", "above": "two hundred"}),
        (TriggerType.PRICE, {"symbol": "AAPL", "windowMinutes": True}),
        (TriggerType.VOLUME, {"symbol": "AAPL"}),
        (TriggerType.NEWS, {"sentiment": "GLOOMY"}),
        (TriggerType.NEWS, {"keywords": "merger"}),
        (TriggerType.WEBHOOK, {"secret": "x"}),
        (TriggerType.MANUAL, []),
    ],
)
def test_malformed_json_is_refused(trigger_type: TriggerType, data: Any) -> None:
    with pytest.raises(TriggerConfigError):
        config_from_json(trigger_type, data)


def test_json_is_camel_case_with_decimal_strings() -> None:
    config = PriceConfig("AAPL", change_percent=D("-3.5"), window_minutes=30)
    assert config.to_json() == {
        "symbol": "AAPL",
        "changePercent": "-3.5",
        "above": None,
        "below": None,
        "windowMinutes": 30,
    }
    assert TimeConfig.from_json({"cron": "30 9 * * 1-5"}) == TimeConfig("30 9 * * 1-5")


# ---------------------------------------------------------------- next fire time


def test_weekday_schedule_skips_weekends_and_holidays() -> None:
    config = TimeConfig("30 9 * * 1-5")
    # Thursday 2025-07-03 10:00 ET; Friday the 4th is Independence Day.
    assert next_fire_time(config, utc(2025, 7, 3, 14)) == utc(2025, 7, 7, 13, 30)
    # Strictly after: a fire time is not its own successor.
    assert next_fire_time(config, utc(2025, 7, 7, 13, 30)) == utc(2025, 7, 8, 13, 30)
    assert next_fire_time(config, utc(2025, 7, 7, 13, 29)) == utc(2025, 7, 7, 13, 30)


def test_without_market_days_only_holidays_fire() -> None:
    config = TimeConfig("30 9 * * *", market_days_only=False)
    assert next_fire_time(config, utc(2025, 7, 4)) == utc(2025, 7, 4, 13, 30)
    assert next_fire_time(config, utc(2025, 7, 5)) == utc(2025, 7, 5, 13, 30)


def test_every_minute_on_market_days_jumps_the_weekend() -> None:
    config = TimeConfig("* * * * *")
    # Friday 2025-11-21 23:59 ET; the next market day starts at midnight Monday ET.
    assert next_fire_time(config, utc(2025, 11, 22, 4, 59)) == utc(2025, 11, 24, 5, 0)


def test_the_wall_clock_is_read_across_daylight_saving_changes() -> None:
    config = TimeConfig("30 9 * * 1-5")
    # Friday 2025-03-07 is EST (UTC-5); Monday the 10th is EDT (UTC-4).
    assert next_fire_time(config, utc(2025, 3, 7, 15)) == utc(2025, 3, 10, 13, 30)
    nightly = TimeConfig("30 1 * * *", market_days_only=False)
    # 2025-11-02 01:30 happens twice in New York; it fires once.
    first = next_fire_time(nightly, utc(2025, 11, 2, 5))
    assert first == utc(2025, 11, 2, 5, 30)
    assert next_fire_time(nightly, first) == utc(2025, 11, 3, 6, 30)
    # 2025-03-09 02:30 does not exist in New York; it fires at 03:30 EDT.
    skipped = TimeConfig("30 2 * * *", market_days_only=False)
    assert next_fire_time(skipped, utc(2025, 3, 9)) == utc(2025, 3, 9, 7, 30)


def test_other_time_zones_use_the_new_york_date_for_market_days() -> None:
    config = TimeConfig("0 15 * * *", timezone="Europe/London")
    # Christmas 2025 is a Thursday and a holiday; the 26th is a session.
    assert next_fire_time(config, utc(2025, 12, 24, 16)) == utc(2025, 12, 26, 15)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire_time(TimeConfig("* * * * *"), datetime(2025, 1, 1))  # noqa: DTZ001


@settings(max_examples=100, deadline=None)
@given(
    after=st.datetimes(
        min_value=datetime(2024, 6, 1),  # noqa: DTZ001 - hypothesis bounds are naive
        max_value=datetime(2026, 6, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    cron=st.sampled_from(["30 9 * * 1-5", "0 16 * * *", "*/30 * * * *", "15 3 * * 0,3"]),
)
def test_fire_times_land_on_sessions_and_follow_after(after: datetime, cron: str) -> None:
    fire = next_fire_time(TimeConfig(cron), after)
    assert fire > after
    assert fire.tzinfo is UTC
    assert session_bounds(fire.astimezone(NEW_YORK).date()) is not None
    if cron == "30 9 * * 1-5":
        assert is_open(fire)
