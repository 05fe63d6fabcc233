from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import talib

from domain.market.indicators import compute_indicators
from domain.market.models import Bar, Timeframe
from domain.market.simulated import SimulatedMarket

NOW = datetime(2025, 11, 26, 18, 0, tzinfo=UTC)
FOUR_PLACES = Decimal("0.0001")


def bars_from(closes: list[float], volumes: list[int] | None = None) -> list[Bar]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        Bar(
            timestamp=start + timedelta(days=i),
            open=Decimal(f"{close:.2f}"),
            high=Decimal(f"{close:.2f}"),
            low=Decimal(f"{close:.2f}"),
            close=Decimal(f"{close:.2f}"),
            volume=Decimal(volumes[i] if volumes else 1000 + i),
        )
        for i, close in enumerate(closes)
    ]


def wavy(n: int) -> list[float]:
    return [round(100 + 0.3 * i + 4 * math.sin(i / 3), 2) for i in range(n)]


def test_a_linear_series_has_known_values() -> None:
    result = compute_indicators(bars_from([float(i) for i in range(1, 61)], list(range(1, 61))))
    assert result.sma20 == Decimal("50.5000")  # mean of 41..60
    assert result.sma50 == Decimal("35.5000")  # mean of 11..60
    assert result.ema20 == Decimal("50.5000")  # an EMA of a straight line lags by the SMA's lag
    assert result.rsi14 == Decimal("100.0000")  # never a down move
    assert result.average_volume20 == Decimal("50.5000")
    assert result.macd is not None and result.macd_signal is not None
    assert result.macd > 0


def test_matches_talib_on_a_known_series() -> None:
    closes = wavy(80)
    result = compute_indicators(bars_from(closes))
    array = np.array(closes, dtype=np.float64)
    macd, signal, _ = talib.MACD(array, fastperiod=12, slowperiod=26, signalperiod=9)
    volumes = np.array([1000.0 + i for i in range(80)])

    def expected(series: np.ndarray) -> Decimal:
        return Decimal(float(series[-1])).quantize(FOUR_PLACES)

    assert result.rsi14 == expected(talib.RSI(array, timeperiod=14))
    assert result.macd == expected(macd)
    assert result.macd_signal == expected(signal)
    assert result.sma20 == expected(talib.SMA(array, timeperiod=20))
    assert result.sma50 == expected(talib.SMA(array, timeperiod=50))
    assert result.ema20 == expected(talib.EMA(array, timeperiod=20))
    assert result.average_volume20 == expected(talib.SMA(volumes, timeperiod=20))
    for value in (result.rsi14, result.macd, result.sma20):
        assert value is not None and value.as_tuple().exponent == -4


def test_too_few_bars_give_none() -> None:
    empty = compute_indicators([])
    assert empty.rsi14 is None and empty.sma20 is None and empty.average_volume20 is None
    short = compute_indicators(bars_from(wavy(14)))
    assert short.rsi14 is None and short.sma20 is None and short.ema20 is None
    fifteen = compute_indicators(bars_from(wavy(15)))
    assert fifteen.rsi14 is not None and fifteen.sma20 is None
    twenty = compute_indicators(bars_from(wavy(20)))
    assert twenty.sma20 is not None and twenty.ema20 is not None
    assert twenty.average_volume20 is not None
    assert twenty.sma50 is None and twenty.macd is None and twenty.macd_signal is None
    forty = compute_indicators(bars_from(wavy(40)))
    assert forty.macd is not None and forty.macd_signal is not None and forty.sma50 is None


async def rsi_after_trend(symbol: str, daily_percent: Decimal | None) -> Decimal:
    market = SimulatedMarket(seed=42, clock=lambda: NOW)
    if daily_percent is not None:
        moves = market.script_trend(symbol, daily_percent, days=15)
        assert len(moves) == 15
    bars = await market.bars(symbol, Timeframe.DAY, NOW - timedelta(days=400), NOW, 300)
    rsi = compute_indicators(bars).rsi14
    assert rsi is not None
    return rsi


async def test_a_scripted_decline_is_oversold_and_a_rally_overbought() -> None:
    for symbol in ("AAPL", "JPM", "KO"):
        plain = await rsi_after_trend(symbol, None)
        falling = await rsi_after_trend(symbol, Decimal("-3"))
        rising = await rsi_after_trend(symbol, Decimal("3"))
        assert falling < 30 < 70 < rising
        assert falling < plain < rising
