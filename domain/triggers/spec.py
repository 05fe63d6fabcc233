"""What each kind of trigger listens for, as plain data.

Every config is a frozen dataclass that can `validate()` itself (problems named by the
camelCase field of the GraphQL input), round-trip through JSON for a JSONB column
(`to_json`/`from_json`, Decimals as strings) and `describe()` itself to a person
("Every weekday at 09:30 America/New_York").

Price, volume and indicator triggers are evaluated by `domain.triggers.index`; time
triggers by `next_fire_time`; news, webhook and manual triggers by their callers.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from domain.market.calendar import session_table
from domain.market.indicators import Indicators
from domain.market.models import Sentiment

__all__ = [
    "INDICATORS",
    "NEW_YORK",
    "ConfigProblem",
    "IndicatorConfig",
    "IndicatorOp",
    "ManualConfig",
    "NewsConfig",
    "PriceConfig",
    "TimeConfig",
    "TriggerConfig",
    "TriggerConfigError",
    "TriggerType",
    "VolumeConfig",
    "WebhookConfig",
    "config_from_json",
    "next_fire_time",
]

NEW_YORK = ZoneInfo("America/New_York")
MAX_WINDOW_MINUTES = 1440
MAX_VOLUME_MULTIPLE = Decimal(100)
MAX_NEWS_TERMS = 20
MAX_KEYWORD_LENGTH = 100

_SYMBOL = re.compile(r"[A-Z]{1,5}(?:[.-][A-Z]{1,2})?\Z")
_CRON_MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


class TriggerType(enum.StrEnum):
    TIME = "TIME"
    PRICE = "PRICE"
    VOLUME = "VOLUME"
    INDICATOR = "INDICATOR"
    NEWS = "NEWS"
    WEBHOOK = "WEBHOOK"
    MANUAL = "MANUAL"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    field: str  # the GraphQL input field, e.g. "windowMinutes"
    message: str


class TriggerConfigError(ValueError):
    """Stored or submitted JSON that is not a config of the expected type."""


# ---------------------------------------------------------------- JSON helpers

_C = TypeVar("_C")


def _fields(data: Mapping[str, Any], owner: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TriggerConfigError(f"{owner}: expected an object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise TriggerConfigError(f"{owner}: unknown field {', '.join(unknown)}")
    return data


def _get(data: Mapping[str, Any], key: str, kind: type[_C], owner: str) -> _C | None:
    value = data.get(key)
    if value is None:
        return None
    # bool is a subclass of int: a flag is never a count, nor a count a flag.
    if isinstance(value, kind) and (kind is bool) == isinstance(value, bool):
        return value
    raise TriggerConfigError(f"{owner}.{key}: expected {kind.__name__}")


def _required(data: Mapping[str, Any], key: str, kind: type[_C], owner: str) -> _C:
    value = _get(data, key, kind, owner)
    if value is None:
        raise TriggerConfigError(f"{owner}.{key}: required")
    return value


def _decimal(data: Mapping[str, Any], key: str, owner: str) -> Decimal | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        try:
            return Decimal(value)
        except InvalidOperation:
            pass
    raise TriggerConfigError(f"{owner}.{key}: expected a decimal string")


def _strings(data: Mapping[str, Any], key: str, owner: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TriggerConfigError(f"{owner}.{key}: expected a list of strings")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------- formatting and checks


def _plain(value: Decimal) -> str:
    return format(value.normalize(), ",f")


def _dollars(value: Decimal) -> str:
    if value == value.to_integral_value():
        return f"${value:,.0f}"
    return f"${value:,.2f}" if value.as_tuple().exponent in (-1, -2) else f"${_plain(value)}"


def _check_symbol(symbol: str, field: str = "symbol") -> list[ConfigProblem]:
    if _SYMBOL.match(symbol):
        return []
    return [ConfigProblem(field, f"{symbol!r} is not an upper-case ticker like AAPL or BRK.B")]


def _finite(value: Decimal | None) -> bool:
    return value is None or value.is_finite()


# ---------------------------------------------------------------- time


@dataclass(frozen=True, slots=True)
class TimeConfig:
    """Fire on a five-field cron schedule read in `timezone`. With `market_days_only`, a
    time fires only when its date in New York is an XNYS session (weekends and exchange
    holidays are skipped; pre-market and after-hours times on session days still fire)."""

    type: ClassVar[TriggerType] = TriggerType.TIME
    cron: str
    timezone: str = "America/New_York"
    market_days_only: bool = True

    def validate(self) -> list[ConfigProblem]:
        problems: list[ConfigProblem] = []
        cron = self.cron.strip()
        if cron not in _CRON_MACROS and len(cron.split()) != 5:
            problems.append(
                ConfigProblem("cron", "use five fields: minute hour day-of-month month day-of-week")
            )
        elif not croniter.is_valid(cron):
            problems.append(ConfigProblem("cron", f"{cron!r} is not a valid cron expression"))
        else:
            try:
                croniter(cron, datetime(2025, 1, 1, tzinfo=UTC)).get_next(datetime)
            except CroniterBadDateError:
                problems.append(ConfigProblem("cron", f"{cron!r} never fires"))
            _, _, days, _, weekdays = croniter(cron).expanded
            # With a day of month too, cron fires on either, so only a bare weekday list counts.
            weekend = days == ["*"] and weekdays != ["*"] and set(weekdays) <= {0, 6}
            if self.market_days_only and weekend:
                problems.append(
                    ConfigProblem("cron", "it runs only on weekends, and market days only is set")
                )
        if _zone(self.timezone) is None:
            problems.append(ConfigProblem("timezone", f"unknown time zone {self.timezone!r}"))
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "cron": self.cron,
            "timezone": self.timezone,
            "marketDaysOnly": self.market_days_only,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TimeConfig:
        data = _fields(data, "time", ("cron", "timezone", "marketDaysOnly"))
        timezone = _get(data, "timezone", str, "time")
        market_days_only = _get(data, "marketDaysOnly", bool, "time")
        return cls(
            cron=_required(data, "cron", str, "time"),
            timezone="America/New_York" if timezone is None else timezone,
            market_days_only=True if market_days_only is None else market_days_only,
        )

    def describe(self) -> str:
        fallback = f"On schedule '{self.cron}' ({self.timezone})"
        try:
            minutes, hours, days, months, weekdays = croniter(self.cron).expanded
        except ValueError:
            return fallback
        named = _days(weekdays, self.market_days_only)
        if days != ["*"] or months != ["*"] or named is None:
            return fallback
        each, on = named
        every = _every_minutes(minutes)
        if every is not None:
            between = _hour_span(hours, minutes)
            if between is None:
                return fallback
            return f"{every}{between}{on} {self.timezone}"
        if len(minutes) != 1:
            return fallback
        if hours == ["*"]:
            at = "on the hour" if minutes[0] == 0 else f"at :{minutes[0]:02d}"
            return f"Every hour {at}{on} {self.timezone}"
        times = [f"{h:02d}:{minutes[0]:02d}" for h in hours]
        return f"Every {each} at {_join(times)} {self.timezone}"


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _join(items: Sequence[str], word: str = "and") -> str:
    if len(items) == 1:
        return items[0]
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _days(weekdays: list[Any], market_days_only: bool) -> tuple[str, str] | None:
    """("weekday", " on weekdays"): the days a schedule runs on, as in "Every weekday at
    09:30" and "Every 15 minutes on weekdays"; None when there is no short name."""
    if weekdays == ["*"]:
        return ("market day", " on market days") if market_days_only else ("day", "")
    if weekdays == [1, 2, 3, 4, 5]:
        return "weekday", " on weekdays"
    if all(isinstance(d, int) and 0 <= d <= 6 for d in weekdays):
        names = [_DAY_NAMES[d] for d in weekdays]
        return _join(names), " on " + _join([f"{n}s" for n in names])
    return None


def _every_minutes(minutes: list[Any]) -> str | None:
    if minutes == ["*"]:
        return "Every minute"
    if len(minutes) < 2 or minutes[0] != 0:
        return None
    step = minutes[1]
    if 60 % step or minutes != list(range(0, 60, step)):
        return None
    return f"Every {step} minutes"


def _hour_span(hours: list[Any], minutes: list[Any]) -> str | None:
    if hours == ["*"]:
        return ""
    if hours != list(range(hours[0], hours[-1] + 1)):
        return None
    last_minute = 59 if minutes == ["*"] else minutes[-1]
    return f" between {hours[0]:02d}:00 and {hours[-1]:02d}:{last_minute:02d}"


def next_fire_time(config: TimeConfig, after: datetime) -> datetime:
    """The first fire time strictly after `after`, in UTC.

    The cron is read on the wall clock of `config.timezone`: on the night clocks go back a
    repeated wall time fires once (the first time), and a wall time skipped when clocks go
    forward fires at the same reading after the jump (02:30 becomes 03:30).
    """
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(config.timezone)
    start = after.astimezone(zone).replace(tzinfo=None)
    table = session_table()
    # Each round either returns or jumps to the next session day, so this bounds the
    # search by calendar days, not by cron ticks.
    for _ in range(1_000):
        wall: datetime = croniter(config.cron, start).get_next(datetime)
        fire = wall.replace(tzinfo=zone).astimezone(UTC)
        if fire <= after:  # the second pass through a repeated hour
            start = wall
            continue
        if not config.market_days_only:
            return fire
        day = fire.astimezone(NEW_YORK).date()
        if table.index_of(day) is not None:
            return fire
        following = bisect.bisect_right(table.days, day)
        if following >= len(table.days):
            raise ValueError(f"no XNYS session after {day} in the calendar window")
        midnight = datetime.combine(table.days[following], time(0), NEW_YORK)
        start = midnight.astimezone(zone).replace(tzinfo=None) - timedelta(seconds=1)
    raise ValueError(f"{config.cron!r} does not fire on a market day")


# ---------------------------------------------------------------- price and volume


@dataclass(frozen=True, slots=True)
class PriceConfig:
    """Exactly one of:
    - `change_percent` (negative for a drop): the move from the highest (for a drop) or
      lowest (for a rise) price within the last `window_minutes`, or, without a window,
      the move since the previous session's close;
    - `above` / `below`: the price crossing that level (the previous tick on the other side).
    """

    type: ClassVar[TriggerType] = TriggerType.PRICE
    symbol: str
    change_percent: Decimal | None = None
    above: Decimal | None = None
    below: Decimal | None = None
    window_minutes: int | None = None

    def validate(self) -> list[ConfigProblem]:
        problems = _check_symbol(self.symbol)
        given = [v for v in (self.change_percent, self.above, self.below) if v is not None]
        if len(given) != 1:
            problems.append(
                ConfigProblem("changePercent", "give exactly one of changePercent, above, below")
            )
        if not all(_finite(v) for v in given):
            problems.append(ConfigProblem("changePercent", "numbers must be finite"))
            return problems
        if self.change_percent is not None and not (
            Decimal(-100) < self.change_percent <= Decimal(1000) and self.change_percent != 0
        ):
            problems.append(
                ConfigProblem(
                    "changePercent",
                    "must be a move between -100% and 1000%, negative for a drop, not 0",
                )
            )
        for field, level in (("above", self.above), ("below", self.below)):
            if level is not None and level <= 0:
                problems.append(ConfigProblem(field, "must be a positive price"))
        if self.window_minutes is not None:
            if self.change_percent is None:
                problems.append(
                    ConfigProblem("windowMinutes", "only a changePercent trigger has a window")
                )
            elif not 1 <= self.window_minutes <= MAX_WINDOW_MINUTES:
                problems.append(
                    ConfigProblem("windowMinutes", f"must be 1 to {MAX_WINDOW_MINUTES} minutes")
                )
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "changePercent": _text(self.change_percent),
            "above": _text(self.above),
            "below": _text(self.below),
            "windowMinutes": self.window_minutes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceConfig:
        owner = "price"
        data = _fields(data, owner, ("symbol", "changePercent", "above", "below", "windowMinutes"))
        return cls(
            symbol=_required(data, "symbol", str, owner),
            change_percent=_decimal(data, "changePercent", owner),
            above=_decimal(data, "above", owner),
            below=_decimal(data, "below", owner),
            window_minutes=_get(data, "windowMinutes", int, owner),
        )

    def describe(self) -> str:
        if self.above is not None:
            return f"When {self.symbol} crosses above {_dollars(self.above)}"
        if self.below is not None:
            return f"When {self.symbol} crosses below {_dollars(self.below)}"
        change = self.change_percent or Decimal(0)
        verb = "drops" if change < 0 else "rises"
        if self.window_minutes is None:
            within = "from the previous close"
        elif self.window_minutes % 60 == 0:
            hours = self.window_minutes // 60
            within = f"within {hours} hour{'s' if hours > 1 else ''}"
        else:
            within = f"within {self.window_minutes} minutes"
        return f"When {self.symbol} {verb} {_plain(abs(change))}% {within}"


@dataclass(frozen=True, slots=True)
class VolumeConfig:
    """The session's volume so far reaching `multiple_of_average` times the 20-day average
    volume pro-rated by how much of the session has passed (see index.session_fraction)."""

    type: ClassVar[TriggerType] = TriggerType.VOLUME
    symbol: str
    multiple_of_average: Decimal

    def validate(self) -> list[ConfigProblem]:
        problems = _check_symbol(self.symbol)
        multiple = self.multiple_of_average
        if not (multiple.is_finite() and 1 < multiple <= MAX_VOLUME_MULTIPLE):
            problems.append(
                ConfigProblem(
                    "multipleOfAverage", f"must be more than 1 and at most {MAX_VOLUME_MULTIPLE}"
                )
            )
        return problems

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "multipleOfAverage": str(self.multiple_of_average)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VolumeConfig:
        data = _fields(data, "volume", ("symbol", "multipleOfAverage"))
        multiple = _decimal(data, "multipleOfAverage", "volume")
        if multiple is None:
            raise TriggerConfigError("volume.multipleOfAverage: required")
        return cls(symbol=_required(data, "symbol", str, "volume"), multiple_of_average=multiple)

    def describe(self) -> str:
        return (
            f"When {self.symbol} volume exceeds {_plain(self.multiple_of_average)}x "
            "its 20-day average"
        )


# ---------------------------------------------------------------- indicators


class IndicatorOp(enum.StrEnum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    CROSSES_ABOVE_SIGNAL = "crosses_above_signal"
    CROSSES_BELOW_SIGNAL = "crosses_below_signal"


INDICATORS: dict[str, Callable[[Indicators], Decimal | None]] = {
    "RSI14": lambda i: i.rsi14,
    "MACD": lambda i: i.macd,
    "SMA20": lambda i: i.sma20,
    "SMA50": lambda i: i.sma50,
    "EMA20": lambda i: i.ema20,
}
_CONDITION = re.compile(r"(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\Z")
_CROSSINGS = frozenset({IndicatorOp.CROSSES_ABOVE_SIGNAL, IndicatorOp.CROSSES_BELOW_SIGNAL})


@dataclass(frozen=True, slots=True)
class IndicatorConfig:
    """`condition` is a comparison with a number ("< 30", ">= 70") or, for MACD only,
    "crosses_above_signal" / "crosses_below_signal"."""

    type: ClassVar[TriggerType] = TriggerType.INDICATOR
    symbol: str
    indicator: str
    condition: str

    def parsed(self) -> tuple[IndicatorOp, Decimal | None]:
        """(operator, threshold); the threshold is None for a signal crossing."""
        condition = self.condition.strip()
        if condition in _CROSSINGS:
            return IndicatorOp(condition), None
        m = _CONDITION.match(condition)
        if m is None:
            raise ValueError(f"unknown condition {self.condition!r}")
        return IndicatorOp(m[1]), Decimal(m[2])

    def validate(self) -> list[ConfigProblem]:
        problems = _check_symbol(self.symbol)
        if self.indicator not in INDICATORS:
            problems.append(ConfigProblem("indicator", f"must be one of {', '.join(INDICATORS)}"))
        try:
            op, threshold = self.parsed()
        except ValueError:
            problems.append(
                ConfigProblem(
                    "condition",
                    'use "< 30", "<= 30", "> 70", ">= 70", "crosses_above_signal" or '
                    '"crosses_below_signal"',
                )
            )
            return problems
        if op in _CROSSINGS and self.indicator != "MACD":
            problems.append(ConfigProblem("condition", "only MACD crosses its signal"))
        if self.indicator == "RSI14" and threshold is not None and not 0 <= threshold <= 100:
            problems.append(ConfigProblem("condition", "RSI lies between 0 and 100"))
        return problems

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "indicator": self.indicator, "condition": self.condition}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndicatorConfig:
        owner = "indicator"
        data = _fields(data, owner, ("symbol", "indicator", "condition"))
        return cls(
            symbol=_required(data, "symbol", str, owner),
            indicator=_required(data, "indicator", str, owner),
            condition=_required(data, "condition", str, owner),
        )

    def describe(self) -> str:
        try:
            op, threshold = self.parsed()
        except ValueError:
            return f"When {self.symbol} {self.indicator} {self.condition}"
        if op is IndicatorOp.CROSSES_ABOVE_SIGNAL:
            return f"When {self.indicator} crosses above its signal on {self.symbol}"
        if op is IndicatorOp.CROSSES_BELOW_SIGNAL:
            return f"When {self.indicator} crosses below its signal on {self.symbol}"
        assert threshold is not None
        return f"When {self.symbol} {self.indicator} {op.value} {_plain(threshold)}"


# ---------------------------------------------------------------- news, webhook, manual


@dataclass(frozen=True, slots=True)
class NewsConfig:
    """An article about any of `symbols` (when given) that mentions any of `keywords`
    (when given), with the given sentiment and at least `min_relevance` (0..1)."""

    type: ClassVar[TriggerType] = TriggerType.NEWS
    keywords: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    sentiment: Sentiment | None = None
    min_relevance: Decimal | None = None

    def validate(self) -> list[ConfigProblem]:
        problems: list[ConfigProblem] = []
        if not self.keywords and not self.symbols:
            problems.append(ConfigProblem("keywords", "give keywords, symbols or both"))
        for field, terms in (("keywords", self.keywords), ("symbols", self.symbols)):
            if len(terms) > MAX_NEWS_TERMS:
                problems.append(ConfigProblem(field, f"at most {MAX_NEWS_TERMS}"))
        for keyword in self.keywords:
            if not keyword.strip() or len(keyword) > MAX_KEYWORD_LENGTH:
                problems.append(
                    ConfigProblem("keywords", f"keywords are 1 to {MAX_KEYWORD_LENGTH} characters")
                )
                break
        for symbol in self.symbols:
            problems += _check_symbol(symbol, "symbols")
        relevance = self.min_relevance
        if relevance is not None and not (relevance.is_finite() and 0 <= relevance <= 1):
            problems.append(ConfigProblem("minRelevance", "must be between 0 and 1"))
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "keywords": list(self.keywords),
            "symbols": list(self.symbols),
            "sentiment": None if self.sentiment is None else self.sentiment.value,
            "minRelevance": _text(self.min_relevance),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NewsConfig:
        owner = "news"
        data = _fields(data, owner, ("keywords", "symbols", "sentiment", "minRelevance"))
        sentiment = _get(data, "sentiment", str, owner)
        try:
            parsed = None if sentiment is None else Sentiment(sentiment)
        except ValueError:
            raise TriggerConfigError(f"{owner}.sentiment: unknown {sentiment!r}") from None
        return cls(
            keywords=_strings(data, "keywords", owner),
            symbols=_strings(data, "symbols", owner),
            sentiment=parsed,
            min_relevance=_decimal(data, "minRelevance", owner),
        )

    def describe(self) -> str:
        symbols = _join(list(self.symbols), "or") if self.symbols else ""
        keywords = _join([f'"{k}"' for k in self.keywords], "or") if self.keywords else ""
        if symbols and keywords:
            text = f"When news about {symbols} mentions {keywords}"
        else:
            text = f"When news mentions {symbols or keywords}"
        if self.sentiment is not None:
            text += f" with {self.sentiment.value.lower()} sentiment"
        if self.min_relevance is not None:
            text += f" (relevance at least {_plain(self.min_relevance)})"
        return text


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """A signed POST to the trigger's URL (see domain.triggers.webhook)."""

    type: ClassVar[TriggerType] = TriggerType.WEBHOOK

    def validate(self) -> list[ConfigProblem]:
        return []

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WebhookConfig:
        _fields(data, "webhook", ())
        return cls()

    def describe(self) -> str:
        return "When the webhook is called"


@dataclass(frozen=True, slots=True)
class ManualConfig:
    type: ClassVar[TriggerType] = TriggerType.MANUAL

    def validate(self) -> list[ConfigProblem]:
        return []

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManualConfig:
        _fields(data, "manual", ())
        return cls()

    def describe(self) -> str:
        return "When run by hand"


TriggerConfig = (
    TimeConfig
    | PriceConfig
    | VolumeConfig
    | IndicatorConfig
    | NewsConfig
    | WebhookConfig
    | ManualConfig
)

_CONFIG_TYPES: dict[TriggerType, Callable[[Mapping[str, Any]], TriggerConfig]] = {
    TriggerType.TIME: TimeConfig.from_json,
    TriggerType.PRICE: PriceConfig.from_json,
    TriggerType.VOLUME: VolumeConfig.from_json,
    TriggerType.INDICATOR: IndicatorConfig.from_json,
    TriggerType.NEWS: NewsConfig.from_json,
    TriggerType.WEBHOOK: WebhookConfig.from_json,
    TriggerType.MANUAL: ManualConfig.from_json,
}


def config_from_json(trigger_type: TriggerType, data: Mapping[str, Any]) -> TriggerConfig:
    """The config stored for a trigger of `trigger_type` (its `type` column)."""
    return _CONFIG_TYPES[trigger_type](data)
