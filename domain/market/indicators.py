"""Technical indicators over bars, computed with TA-Lib.

TA-Lib works on float64 arrays; floats live only inside `compute_indicators`, and
every result leaves as a Decimal rounded to 4 decimal places.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import talib
from numpy.typing import NDArray

from domain.market.models import Bar

_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class Indicators:
    """Values at the last bar; None where there are too few bars for the indicator."""

    rsi14: Decimal | None
    macd: Decimal | None
    macd_signal: Decimal | None
    sma20: Decimal | None
    sma50: Decimal | None
    ema20: Decimal | None
    average_volume20: Decimal | None


def _last(series: NDArray[np.float64]) -> Decimal | None:
    if len(series) == 0:
        return None
    value = float(series[-1])
    # TA-Lib pads the warm-up period with NaN.
    if math.isnan(value):
        return None
    return Decimal(value).quantize(_PLACES)


def compute_indicators(bars: Sequence[Bar]) -> Indicators:
    """Indicators at the newest of `bars` (oldest first): RSI 14, MACD 12/26/9, SMA 20/50,
    EMA 20 of closes and the 20-bar average volume."""
    closes = np.array([float(bar.close) for bar in bars], dtype=np.float64)
    volumes = np.array([float(bar.volume) for bar in bars], dtype=np.float64)
    macd, signal, _ = talib.MACD(closes, fastperiod=12, slowperiod=26, signalperiod=9)
    return Indicators(
        rsi14=_last(talib.RSI(closes, timeperiod=14)),
        macd=_last(macd),
        macd_signal=_last(signal),
        sma20=_last(talib.SMA(closes, timeperiod=20)),
        sma50=_last(talib.SMA(closes, timeperiod=50)),
        ema20=_last(talib.EMA(closes, timeperiod=20)),
        average_volume20=_last(talib.SMA(volumes, timeperiod=20)),
    )
