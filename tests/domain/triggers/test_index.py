from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.market.calendar import session_table
from domain.market.indicators import Indicators
from domain.market.models import Quote
from domain.triggers.index import IndexedConfig, IndexedTrigger, TriggerIndex, session_fraction
from domain.triggers.spec import (
    INDICATORS,
    IndicatorConfig,
    PriceConfig,
    TriggerType,
    VolumeConfig,
)

D = Decimal
# Tuesday 2025-11-25; the regular session runs 14:30-21:00 UTC.
OPEN = datetime(2025, 11, 25, 14, 30, tzinfo=UTC)
USER = uuid.uuid4()
AGENT = uuid.uuid4()


def quote(
    symbol: str,
    price: str | Decimal,
    at: datetime,
    *,
    volume: str | Decimal = "0",
    prev_close: str | Decimal | None = None,
) -> Quote:
    return Quote(
        symbol=symbol,
        bid=None,
        ask=None,
        last=D(price),
        volume=D(volume),
        timestamp=at,
        prev_close=None if prev_close is None else D(prev_close),
    )


def add(index: TriggerIndex, config: IndexedConfig, cooldown: int = 0) -> uuid.UUID:
    trigger_id = uuid.uuid4()
    index.add(trigger_id, USER, AGENT, config, cooldown)
    return trigger_id


def fired(index: TriggerIndex, q: Quote) -> set[uuid.UUID]:
    return {f.trigger_id for f in index.evaluate(q)}


def indicators(**values: str | None) -> Indicators:
    fields = dict.fromkeys(
        ("rsi14", "macd", "macd_signal", "sma20", "sma50", "ema20", "average_volume20")
    )
    fields.update(values)
    return Indicators(**{k: None if v is None else D(v) for k, v in fields.items()})


# ---------------------------------------------------------------- behaviour


def test_a_level_crossing_fires_once_per_crossing() -> None:
    index = TriggerIndex()
    up = add(index, PriceConfig("AAPL", above=D(200)))
    down = add(index, PriceConfig("AAPL", below=D(150)))
    t = OPEN
    # The first tick has nothing to cross from, even though it is above the level.
    assert fired(index, quote("AAPL", "201", t)) == set()
    assert fired(index, quote("AAPL", "199", t + timedelta(minutes=1))) == set()
    (firing,) = index.evaluate(quote("AAPL", "200.13", t + timedelta(minutes=2)))
    assert firing.trigger_id == up
    assert firing.trigger_type is TriggerType.PRICE
    assert firing.symbol == "AAPL"
    assert firing.detail == "When AAPL crosses above $200: price $200.13"
    assert fired(index, quote("AAPL", "205", t + timedelta(minutes=3))) == set()
    assert fired(index, quote("AAPL", "149", t + timedelta(minutes=4))) == {down}
    assert fired(index, quote("AAPL", "148", t + timedelta(minutes=5))) == set()
    assert fired(index, quote("AAPL", "201", t + timedelta(minutes=6))) == {up}


def test_a_drop_within_a_window_is_measured_from_the_window_high() -> None:
    index = TriggerIndex()
    drop = add(index, PriceConfig("AAPL", change_percent=D(-3), window_minutes=30))
    t = OPEN
    assert fired(index, quote("AAPL", "100", t)) == set()
    assert fired(index, quote("AAPL", "103", t + timedelta(minutes=5))) == set()
    assert fired(index, quote("AAPL", "100.5", t + timedelta(minutes=10))) == set()  # -2.4%
    assert fired(index, quote("AAPL", "99.9", t + timedelta(minutes=20))) == {drop}  # -3.0%
    assert fired(index, quote("AAPL", "99", t + timedelta(minutes=25))) == set()  # still down
    # The 103 high has left the window, whose high is now 100.5: the drop is 0.7%...
    assert fired(index, quote("AAPL", "99.8", t + timedelta(minutes=36))) == set()
    # ... so a new 3% drop from 100.5 fires again.
    assert fired(index, quote("AAPL", "97.4", t + timedelta(minutes=40))) == {drop}


def test_a_move_without_a_window_is_measured_from_the_previous_close() -> None:
    index = TriggerIndex()
    rise = add(index, PriceConfig("AAPL", change_percent=D(2)))
    t = OPEN
    assert fired(index, quote("AAPL", "101", t, prev_close="100")) == set()
    assert fired(index, quote("AAPL", "102", t + timedelta(minutes=1), prev_close="100")) == {rise}
    assert fired(index, quote("AAPL", "103", t + timedelta(minutes=2), prev_close="100")) == set()


def test_volume_is_compared_with_the_pro_rated_average() -> None:
    index = TriggerIndex()
    spike = add(index, VolumeConfig("MSFT", D(2)))
    index.set_average_volume("MSFT", D(3_900_000))
    at = OPEN + timedelta(minutes=90)  # 90 of 390 minutes: 900,000 shares is a normal day
    assert session_fraction(at) == D(90) / D(390)
    assert fired(index, quote("MSFT", "400", at, volume="1700000")) == set()
    (firing,) = index.evaluate(quote("MSFT", "400", at + timedelta(minutes=1), volume="1900000"))
    assert firing.trigger_id == spike
    assert "volume 2.09x the pro-rated average" in firing.detail


def test_volume_is_not_evaluated_outside_the_session() -> None:
    index = TriggerIndex()
    add(index, VolumeConfig("MSFT", D(2)))
    index.set_average_volume("MSFT", D(1000))
    assert session_fraction(OPEN - timedelta(minutes=1)) is None
    assert fired(index, quote("MSFT", "400", OPEN - timedelta(minutes=1), volume="1e9")) == set()


def test_the_opening_minutes_count_as_fifteen() -> None:
    assert session_fraction(OPEN) == D(15) / D(390)
    assert session_fraction(OPEN + timedelta(minutes=15)) == D(15) / D(390)


def test_the_move_since_the_close_and_the_volume_start_over_each_session() -> None:
    index = TriggerIndex()
    rise = add(index, PriceConfig("AAPL", change_percent=D(3)), cooldown=3600)
    spike = add(index, VolumeConfig("AAPL", D(2)), cooldown=3600)
    index.set_average_volume("AAPL", D(3_900_000))  # 10,000 shares a session minute
    wednesday = datetime(2025, 11, 19, 20, tzinfo=UTC)  # 330 minutes into the session
    assert fired(index, quote("AAPL", "102", wednesday, volume="100", prev_close="100")) == set()
    t = wednesday + timedelta(minutes=1)
    assert fired(index, quote("AAPL", "105", t, volume="8350000", prev_close="100")) == {
        rise,
        spike,
    }
    # After the close the quote still belongs to Wednesday's session: nothing new is true.
    t = wednesday + timedelta(hours=2)
    assert fired(index, quote("AAPL", "105.5", t, volume="8400000", prev_close="100")) == set()

    # Thursday, 30 minutes into the session: +4.0% on Wednesday's close, 3x the volume.
    thursday = wednesday + timedelta(hours=19)
    assert fired(index, quote("AAPL", "109.20", thursday, volume="900000", prev_close="105")) == {
        rise,
        spike,
    }
    t = thursday + timedelta(minutes=1)
    later = quote("AAPL", "109.305", t, volume="1000000", prev_close="105")  # +4.1%, 3.2x
    assert fired(index, later) == set()


def test_indicator_comparisons_fire_when_they_turn_true() -> None:
    index = TriggerIndex()
    oversold = add(index, IndicatorConfig("AAPL", "RSI14", "< 30"))
    overbought = add(index, IndicatorConfig("AAPL", "RSI14", ">= 70"))
    at = OPEN
    # The first update has no previous values: a true comparison fires.
    assert {
        f.trigger_id for f in index.update_indicators("AAPL", indicators(rsi14="25"), None, at)
    } == {oversold}
    assert index.update_indicators("AAPL", indicators(rsi14="24"), indicators(rsi14="25"), at) == []
    assert index.update_indicators("AAPL", indicators(rsi14="50"), indicators(rsi14="24"), at) == []
    firings = index.update_indicators("AAPL", indicators(rsi14="70"), indicators(rsi14="50"), at)
    assert [f.trigger_id for f in firings] == [overbought]
    assert firings[0].detail == "When AAPL RSI14 >= 70: RSI14 70"
    # Missing values never fire.
    assert index.update_indicators("AAPL", indicators(), indicators(rsi14="80"), at) == []


def test_macd_signal_crossings_need_the_previous_values() -> None:
    index = TriggerIndex()
    up = add(index, IndicatorConfig("AAPL", "MACD", "crosses_above_signal"))
    down = add(index, IndicatorConfig("AAPL", "MACD", "crosses_below_signal"))
    at = OPEN
    below = indicators(macd="0.40", macd_signal="0.48")
    above = indicators(macd="0.52", macd_signal="0.48")
    assert index.update_indicators("AAPL", above, None, at) == []
    assert [f.trigger_id for f in index.update_indicators("AAPL", above, below, at)] == [up]
    assert index.update_indicators("AAPL", above, above, at) == []
    assert [f.trigger_id for f in index.update_indicators("AAPL", below, above, at)] == [down]


def test_cooldown_silences_a_trigger_and_drops_events_meanwhile() -> None:
    index = TriggerIndex()
    level = add(index, PriceConfig("AAPL", above=D(200)), cooldown=600)
    t = OPEN
    crossings = [
        (0, "199", set()),
        (1, "201", {level}),
        (2, "199", set()),
        (3, "201", set()),  # crossed again, but within 10 minutes of the firing
        (10, "199", set()),
        (11, "201", {level}),
    ]
    for minute, price, expected in crossings:
        assert fired(index, quote("AAPL", price, t + timedelta(minutes=minute))) == expected


def test_cooldown_counts_from_the_stored_last_firing() -> None:
    index = TriggerIndex()
    trigger_id = uuid.uuid4()
    config = PriceConfig("AAPL", above=D(200))
    index.add(trigger_id, USER, AGENT, config, 600, last_fired_at=OPEN)
    index.evaluate(quote("AAPL", "199", OPEN + timedelta(minutes=1)))
    assert fired(index, quote("AAPL", "201", OPEN + timedelta(minutes=2))) == set()


def test_event_keys_are_stable_per_trigger_and_minute() -> None:
    index = TriggerIndex()
    level = add(index, PriceConfig("AAPL", above=D(200)))
    keys = []
    for second in (0, 10, 20, 30, 65, 70):
        price = "201" if second in (10, 30, 70) else "199"
        keys += [
            f.event_key
            for f in index.evaluate(quote("AAPL", price, OPEN + timedelta(seconds=second)))
        ]
    first, second_in_same_minute, next_minute = keys
    assert first == second_in_same_minute == f"{level}:{int(OPEN.timestamp()) // 60}"
    assert next_minute != first


def test_remove_and_replace() -> None:
    index = TriggerIndex()
    level = add(index, PriceConfig("AAPL", above=D(200)))
    assert len(index) == 1
    assert index.remove(level)
    assert not index.remove(level)
    index.evaluate(quote("AAPL", "199", OPEN))
    assert fired(index, quote("AAPL", "201", OPEN + timedelta(minutes=1))) == set()

    # Adding an existing id replaces its config.
    index.add(level, USER, AGENT, PriceConfig("AAPL", above=D(210)), 0)
    index.add(level, USER, AGENT, PriceConfig("AAPL", above=D(205)), 0)
    assert len(index) == 1
    assert fired(index, quote("AAPL", "206", OPEN + timedelta(minutes=2))) == {level}


def test_replace_all_keeps_market_state_and_skips_invalid_triggers() -> None:
    index = TriggerIndex()
    drop_id, level_id, bad_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    drop = PriceConfig("AAPL", change_percent=D(-3), window_minutes=30)
    index.add(drop_id, USER, AGENT, drop, 0)
    index.evaluate(quote("AAPL", "100", OPEN))
    rejected = index.replace_all(
        [
            IndexedTrigger(drop_id, USER, AGENT, drop, 0),
            IndexedTrigger(level_id, USER, AGENT, PriceConfig("AAPL", below=D(98)), 0),
            IndexedTrigger(bad_id, USER, AGENT, PriceConfig("AAPL"), 0),
        ]
    )
    assert rejected == [bad_id]
    assert len(index) == 2
    # The window still remembers the 100 high; the last price makes 97 a crossing of 98.
    assert fired(index, quote("AAPL", "97", OPEN + timedelta(minutes=5))) == {drop_id, level_id}


def test_replace_all_keeps_the_later_last_firing() -> None:
    index = TriggerIndex()
    level_id = uuid.uuid4()
    config = PriceConfig("AAPL", above=D(200))
    index.add(level_id, USER, AGENT, config, 3600)
    index.evaluate(quote("AAPL", "199", OPEN))
    assert fired(index, quote("AAPL", "201", OPEN + timedelta(minutes=1))) == {level_id}
    # The database has not recorded that firing yet.
    index.replace_all([IndexedTrigger(level_id, USER, AGENT, config, 3600, last_fired_at=None)])
    index.evaluate(quote("AAPL", "199", OPEN + timedelta(minutes=2)))
    assert fired(index, quote("AAPL", "201", OPEN + timedelta(minutes=3))) == set()


def test_replace_user_replaces_one_users_triggers_only() -> None:
    index = TriggerIndex()
    other = uuid.uuid4()
    level, drop, volume, below, bad, others = (uuid.uuid4() for _ in range(6))
    mine = [
        IndexedTrigger(level, USER, AGENT, PriceConfig("AAPL", above=D(200)), 3600),
        IndexedTrigger(
            drop, USER, AGENT, PriceConfig("AAPL", change_percent=D(-3), window_minutes=30), 0
        ),
        IndexedTrigger(volume, USER, AGENT, VolumeConfig("MSFT", D(2)), 0),
    ]
    index.replace_all(
        [*mine, IndexedTrigger(others, other, AGENT, PriceConfig("AAPL", above=D(200)), 0)]
    )
    assert index.users() == {USER, other}
    assert index.symbols() == {"AAPL", "MSFT"}
    assert index.indicator_symbols() == {"MSFT"}
    index.evaluate(quote("AAPL", "199", OPEN))
    assert fired(index, quote("AAPL", "201", OPEN + timedelta(minutes=1))) == {level, others}

    # The database has not recorded the firing of `level` yet.
    rejected = index.replace_user(
        USER,
        [
            *mine[:2],
            IndexedTrigger(below, USER, AGENT, PriceConfig("AAPL", below=D(196)), 0),
            IndexedTrigger(bad, USER, AGENT, PriceConfig("AAPL"), 0),
        ],
    )
    assert rejected == [bad]
    assert (len(index), volume in index, bad in index, others in index) == (4, False, False, True)
    assert index.symbols() == {"AAPL"}
    assert index.indicator_symbols() == frozenset()
    # The window still remembers the 201 high; the last price makes 194 a crossing of 196.
    assert fired(index, quote("AAPL", "194", OPEN + timedelta(minutes=2))) == {drop, below}
    # `level` is still cooling down; the other user's trigger is as it was.
    assert fired(index, quote("AAPL", "201", OPEN + timedelta(minutes=3))) == {others}

    index.replace_user(USER, [])
    assert index.users() == {other}
    assert list(index.symbols()) == ["AAPL"]
    assert (len(index), level in index) == (1, False)


def test_out_of_order_quotes_are_ignored() -> None:
    index = TriggerIndex()
    add(index, PriceConfig("AAPL", above=D(200)))
    index.evaluate(quote("AAPL", "199", OPEN + timedelta(minutes=5)))
    assert fired(index, quote("AAPL", "201", OPEN)) == set()


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="windowMinutes"):
        add(TriggerIndex(), PriceConfig("AAPL", change_percent=D(-3), window_minutes=0))


# ---------------------------------------------------------------- against a brute force


@dataclass
class _Reference:
    """The same semantics, evaluated the obvious way: every trigger, full history, the
    measures of a session kept per session."""

    triggers: dict[uuid.UUID, tuple[IndexedConfig, int]]
    average_volume: dict[str, Decimal]
    # Only to keep the test fast: each tick still checks every trigger on its symbol.
    by_symbol: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    history: dict[str, list[tuple[float, Decimal]]] = field(default_factory=dict)
    last_fired: dict[uuid.UUID, float] = field(default_factory=dict)
    previous: dict[tuple[uuid.UUID, str], Decimal] = field(default_factory=dict)

    def evaluate(self, q: Quote) -> set[uuid.UUID]:
        ts = q.timestamp.timestamp()
        history = self.history.setdefault(q.symbol, [])
        if history and ts < history[-1][0]:
            return set()
        last_price = history[-1][1] if history else None
        history.append((ts, q.last))
        out: set[uuid.UUID] = set()
        if not self.by_symbol:
            for trigger_id, (config, _) in self.triggers.items():
                self.by_symbol.setdefault(config.symbol, []).append(trigger_id)
        for trigger_id in self.by_symbol.get(q.symbol, []):
            config, cooldown = self.triggers[trigger_id]
            if not self._happened(trigger_id, config, q, last_price):
                continue
            last = self.last_fired.get(trigger_id)
            if last is None or ts - last >= cooldown:
                self.last_fired[trigger_id] = ts
                out.add(trigger_id)
        return out

    def _happened(
        self, trigger_id: uuid.UUID, config: IndexedConfig, q: Quote, last: Decimal | None
    ) -> bool:
        price = q.last
        session = session_table().index_at(q.timestamp.timestamp())
        if isinstance(config, VolumeConfig):
            fraction = session_fraction(q.timestamp)
            if fraction is None:
                return False
            ratio = q.volume / (self.average_volume[q.symbol] * fraction)
            return self._rose_through(trigger_id, f"v{session}", ratio, config.multiple_of_average)
        assert isinstance(config, PriceConfig)
        if config.above is not None:
            return last is not None and last < config.above <= price
        if config.below is not None:
            return last is not None and last > config.below >= price
        change = config.change_percent
        assert change is not None
        if config.window_minutes is None:
            assert q.prev_close is not None
            move = (price - q.prev_close) / q.prev_close * 100
            move = move if change > 0 else -move
            return self._rose_through(trigger_id, f"c{session}", move, abs(change))
        horizon = q.timestamp.timestamp() - config.window_minutes * 60
        window = [p for ts, p in self.history[q.symbol] if ts >= horizon]
        if change < 0:
            move = (max(window) - price) / max(window) * 100
        else:
            move = (price - min(window)) / min(window) * 100
        return self._rose_through(trigger_id, "w", move, abs(change))

    def _rose_through(self, trigger_id: uuid.UUID, kind: str, now: Decimal, level: Decimal) -> bool:
        before = self.previous.get((trigger_id, kind), Decimal(0))
        self.previous[(trigger_id, kind)] = now
        return before < level <= now


def _random_config(rng: random.Random, symbol: str) -> IndexedConfig:
    kind = rng.random()
    if kind < 0.3:
        return PriceConfig(symbol, above=D(rng.randint(9000, 11000)) / 100)
    if kind < 0.5:
        return PriceConfig(symbol, below=D(rng.randint(9000, 11000)) / 100)
    if kind < 0.8:
        return PriceConfig(
            symbol,
            change_percent=D(rng.choice([-1, 1]) * rng.randint(5, 300)) / 100,
            window_minutes=rng.choice([1, 5, 15, 30, 60]),
        )
    if kind < 0.9:
        return PriceConfig(
            symbol, change_percent=D(rng.choice([-1, 1]) * rng.randint(5, 400)) / 100
        )
    return VolumeConfig(symbol, D(rng.randint(105, 400)) / 100)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_a_brute_force_reference_on_random_ticks(seed: int) -> None:
    rng = random.Random(seed)
    symbols = [f"X{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(100)]
    index = TriggerIndex()
    triggers: dict[uuid.UUID, tuple[IndexedConfig, int]] = {}
    for _ in range(10_000):
        config = _random_config(rng, rng.choice(symbols))
        cooldown = rng.choice([0, 0, 60, 300])
        triggers[add(index, config, cooldown)] = (config, cooldown)
    averages = {s: D(rng.randint(100_000, 1_000_000)) for s in symbols}
    for symbol, average in averages.items():
        index.set_average_volume(symbol, average)
    reference = _Reference(dict(triggers), averages)

    # Remove a tenth of the triggers from both before any tick.
    for trigger_id in rng.sample(sorted(triggers), 1_000):
        assert index.remove(trigger_id)
        del reference.triggers[trigger_id]

    prices = {s: D(100) for s in symbols}
    closes = dict(prices)
    volumes = {s: D(0) for s in symbols}
    t = OPEN + timedelta(minutes=1)
    total = 0
    for tick in range(3_000):
        if tick == 1_500:  # overnight: the next session, with new closes and volumes
            t += timedelta(days=1)
            closes = dict(prices)
            volumes = {s: D(0) for s in symbols}
        symbol = rng.choice(symbols[:10]) if rng.random() < 0.7 else rng.choice(symbols)
        t += timedelta(seconds=rng.randint(0, 20))
        prices[symbol] = max(
            D("80"), (prices[symbol] * D(1 + rng.gauss(0, 0.006))).quantize(D("0.01"))
        )
        volumes[symbol] += rng.randint(0, 20_000)
        q = quote(symbol, prices[symbol], t, volume=volumes[symbol], prev_close=closes[symbol])
        got = fired(index, q)
        assert got == reference.evaluate(q), f"at {t} on {symbol}"
        total += len(got)
    assert total > 500  # the comparison is not vacuous


def test_replacing_one_user_at_a_time_matches_replacing_everything() -> None:
    rng = random.Random(11)
    symbols = ["AAA", "BBB", "CCC"]
    users = [uuid.uuid4() for _ in range(20)]

    def triggers_of(user: uuid.UUID) -> list[IndexedTrigger]:
        return [
            IndexedTrigger(uuid.uuid4(), user, AGENT, _random_config(rng, rng.choice(symbols)), 900)
            for _ in range(rng.randint(0, 30))
        ]

    current = {user: triggers_of(user) for user in users}
    by_user, everything = TriggerIndex(), TriggerIndex()
    for index in (by_user, everything):
        index.replace_all(t for mine in current.values() for t in mine)
        for symbol in symbols:
            index.set_average_volume(symbol, D(500_000))
    prices = dict.fromkeys(symbols, D(100))
    t = OPEN + timedelta(minutes=1)
    total = 0
    for tick in range(2_000):
        if tick % 100 == 99:
            # One user keeps some triggers (their last firings too), drops the rest, adds some.
            user = rng.choice(users)
            kept = [trigger for trigger in current[user] if rng.random() < 0.5]
            current[user] = kept + triggers_of(user)
            by_user.replace_user(user, current[user])
            everything.replace_all(t for mine in current.values() for t in mine)
        symbol = rng.choice(symbols)
        t += timedelta(seconds=rng.randint(0, 20))
        prices[symbol] = (prices[symbol] * D(1 + rng.gauss(0, 0.006))).quantize(D("0.01"))
        q = quote(symbol, prices[symbol], t, volume=D(tick * 1_000), prev_close="100")
        got = fired(by_user, q)
        assert got == fired(everything, q), f"at {t} on {symbol}"
        total += len(got)
    assert total > 200  # the comparison is not vacuous
    assert len(by_user) == len(everything)
    assert by_user.symbols() == everything.symbols()


def test_indicator_triggers_match_a_brute_force_reference() -> None:
    rng = random.Random(7)
    index = TriggerIndex()
    configs: dict[uuid.UUID, IndicatorConfig] = {}
    for _ in range(2_000):
        name = rng.choice(list(INDICATORS))
        if name == "MACD" and rng.random() < 0.3:
            condition = rng.choice(["crosses_above_signal", "crosses_below_signal"])
        else:
            condition = f"{rng.choice(['<', '<=', '>', '>='])} {rng.randint(0, 100)}"
        config = IndicatorConfig(rng.choice(["AAPL", "MSFT"]), name, condition)
        configs[add(index, config)] = config

    def holds(config: IndicatorConfig, values: Indicators | None) -> bool:
        if values is None:
            return False
        op, threshold = config.parsed()
        value = INDICATORS[config.indicator](values)
        if value is None:
            return False
        if threshold is None:
            assert values.macd_signal is not None
            gap = value - values.macd_signal
            return gap > 0 if op == "crosses_above_signal" else gap < 0
        return {
            "<": value < threshold,
            "<=": value <= threshold,
            ">": value > threshold,
            ">=": value >= threshold,
        }[op.value]

    previous: dict[str, Indicators | None] = {"AAPL": None, "MSFT": None}
    total = 0
    for step in range(300):
        symbol = rng.choice(["AAPL", "MSFT"])
        values = {k: str(rng.randint(0, 100)) for k in ("rsi14", "macd", "sma20", "sma50", "ema20")}
        current = indicators(**values, macd_signal=str(rng.randint(0, 100)))
        before = previous[symbol]
        expected = set()
        for trigger_id, config in configs.items():
            if config.symbol != symbol:
                continue
            is_crossing = config.condition.startswith("crosses")
            if is_crossing and before is None:
                continue
            if holds(config, current) and not holds(config, before):
                expected.add(trigger_id)
        at = OPEN + timedelta(minutes=step)
        got = {f.trigger_id for f in index.update_indicators(symbol, current, before, at)}
        assert got == expected
        total += len(got)
        previous[symbol] = current
    assert total > 1_000
