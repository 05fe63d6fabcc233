from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from domain.market.calendar import (
    is_open,
    market_status,
    next_close,
    next_open,
    session_bounds,
    sessions_between,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_status_during_a_regular_weekday_session() -> None:
    status = market_status(utc(2025, 11, 25, 15, 0))  # Tuesday 10:00 ET
    assert status.is_open
    assert status.next_close == utc(2025, 11, 25, 21, 0)
    assert status.next_open == utc(2025, 11, 26, 14, 30)


def test_status_on_a_saturday() -> None:
    status = market_status(utc(2025, 11, 22, 16, 0))
    assert not status.is_open
    assert status.next_open == utc(2025, 11, 24, 14, 30)
    assert status.next_close == utc(2025, 11, 24, 21, 0)


def test_status_on_a_holiday() -> None:
    status = market_status(utc(2025, 12, 25, 16, 0))  # Christmas, a Thursday
    assert not status.is_open
    assert status.next_open == utc(2025, 12, 26, 14, 30)


def test_thanksgiving_is_skipped_and_the_day_after_closes_early() -> None:
    assert next_open(utc(2025, 11, 26, 22, 0)) == utc(2025, 11, 28, 14, 30)
    assert next_close(utc(2025, 11, 28, 15, 0)) == utc(2025, 11, 28, 18, 0)  # 13:00 ET
    assert not is_open(utc(2025, 11, 28, 18, 30))
    assert session_bounds(date(2025, 11, 28)) == (
        utc(2025, 11, 28, 14, 30),
        utc(2025, 11, 28, 18, 0),
    )


def test_open_is_inclusive_and_close_exclusive() -> None:
    assert is_open(utc(2025, 11, 25, 14, 30))
    assert not is_open(utc(2025, 11, 25, 14, 29, 59))
    assert not is_open(utc(2025, 11, 25, 21, 0))


def test_session_times_follow_daylight_saving() -> None:
    assert session_bounds(date(2025, 7, 1)) == (utc(2025, 7, 1, 13, 30), utc(2025, 7, 1, 20, 0))


def test_sessions_between_skips_weekends_and_holidays() -> None:
    assert sessions_between(date(2025, 11, 22), date(2025, 11, 30)) == [
        date(2025, 11, 24),
        date(2025, 11, 25),
        date(2025, 11, 26),
        date(2025, 11, 28),
    ]
    assert session_bounds(date(2025, 12, 25)) is None


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(datetime(2025, 11, 25, 15, 0))  # noqa: DTZ001
