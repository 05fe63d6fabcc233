from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.agents.decision import (
    DecisionAction,
    DecisionContext,
    LlmSettings,
    ModelInvalidOutput,
    SymbolSnapshot,
)
from domain.agents.rules import (
    MAX_STRATEGY_LENGTH,
    AllOf,
    AnyOf,
    Comparison,
    Condition,
    Metric,
    Op,
    Rule,
    RulesModel,
    Strategy,
    StrategyParseError,
    evaluate_strategy,
    parse_strategy,
    render_strategy,
    watched_symbols,
)
from domain.market.indicators import Indicators
from domain.trading.types import OrderSide

SEED = (
    "Buy AAPL when RSI < 30 and price drops 3%+. Sell when RSI > 70 or profit reaches 5%. "
    "Max position size: $5,000"
)
GRAMMAR = Path(__file__).resolve().parents[3] / "docs" / "strategy-grammar.md"
# Tuesday 2025-11-25, 11:00 in New York: 90 of the session's 390 minutes have passed.
NOW = datetime(2025, 11, 25, 16, 0, tzinfo=UTC)
D = Decimal


def rsi_below(n: str) -> Comparison:
    return Comparison(Metric.RSI14, Op.LT, D(n))


def indicators(**values: str | None) -> Indicators:
    fields = dict.fromkeys(
        ("rsi14", "macd", "macd_signal", "sma20", "sma50", "ema20", "average_volume20")
    )
    fields.update(values)
    return Indicators(**{k: None if v is None else D(v) for k, v in fields.items()})


def snapshot(
    symbol: str = "AAPL",
    *,
    price: str = "190",
    change: str | None = "0",
    volume: str = "1000",
    held: str = "0",
    cost: str | None = None,
    **values: str | None,
) -> SymbolSnapshot:
    return SymbolSnapshot(
        symbol=symbol,
        price=D(price),
        change_percent=None if change is None else D(change),
        volume=D(volume),
        indicators=indicators(**values),
        position_quantity=D(held),
        average_cost=None if cost is None else D(cost),
    )


def context(*snaps: SymbolSnapshot, cash: str = "10000") -> DecisionContext:
    return DecisionContext(
        now=NOW,
        symbols={s.symbol: s for s in snaps},
        cash_available=D(cash),
        allocation=D(20000),
        equity=D(100000),
    )


def decide(strategy: str, *snaps: SymbolSnapshot, cash: str = "10000") -> DecisionAction:
    return evaluate_strategy(parse_strategy(strategy), context(*snaps, cash=cash)).actions[0].action


# ---------------------------------------------------------------- parsing


def test_seed_example_parses_to_its_structure() -> None:
    assert parse_strategy(SEED) == Strategy(
        rules=(
            Rule(
                OrderSide.BUY,
                ("AAPL",),
                AllOf((rsi_below("30"), Comparison(Metric.CHANGE, Op.LE, D(-3)))),
            ),
            Rule(
                OrderSide.SELL,
                ("AAPL",),
                AnyOf(
                    (
                        Comparison(Metric.RSI14, Op.GT, D(70)),
                        Comparison(Metric.PROFIT, Op.GE, D(5)),
                    )
                ),
            ),
        ),
        max_position=D(5000),
    )


def test_a_sell_without_symbol_sells_every_bought_symbol() -> None:
    strategy = parse_strategy("Buy AAPL or MSFT when RSI < 30. Buy NVDA. Sell when RSI > 70")
    assert strategy.rules[0].symbols == ("AAPL", "MSFT")
    assert strategy.rules[2].symbols == ("AAPL", "MSFT", "NVDA")
    assert watched_symbols(strategy) == ["AAPL", "MSFT", "NVDA"]


def test_sizes_and_settings() -> None:
    strategy = parse_strategy(
        "Buy $1,000 of AAPL when RSI < 30. Buy 10 shares of MSFT when RSI < 25. "
        "Maximum position size is $5k"
    )
    assert strategy.rules[0].notional == D(1000)
    assert strategy.rules[1].quantity == D(10)
    assert strategy.max_position == D(5000)


_A = rsi_below("30")
_B = Comparison(Metric.CHANGE, Op.LE, D(-3))
_C = Comparison(Metric.VOLUME, Op.GT, D(2))
_WORDS = {"a": "RSI < 30", "b": "price drops 3%", "c": "volume above 2x average"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a and b or c", AnyOf((AllOf((_A, _B)), _C))),
        ("a or b and c", AnyOf((_A, AllOf((_B, _C))))),
        ("a and (b or c)", AllOf((_A, AnyOf((_B, _C))))),
        ("(a or b) or c", AnyOf((_A, _B, _C))),
        ("a and b and c", AllOf((_A, _B, _C))),
        ("a, and b, or c", AnyOf((AllOf((_A, _B)), _C))),
    ],
)
def test_and_binds_tighter_than_or(text: str, expected: Condition) -> None:
    sentence = "Buy AAPL when " + re.sub(r"\b[abc]\b", lambda m: _WORDS[m[0]], text)
    assert parse_strategy(sentence).rules[0].condition == expected


def test_precedence_changes_the_decision() -> None:
    # RSI is high, the price fell and volume is 4x: only the unparenthesized form fires.
    avg = "1000"
    spike = str(D(avg) * D(90) / D(390) * 4)
    snap = snapshot(rsi14="50", change="-5", volume=spike, average_volume20=avg)
    flat = "Buy AAPL when RSI < 30 and price drops 3% or volume above 3x average"
    grouped = "Buy AAPL when RSI < 30 and (price drops 3% or volume above 3x average)"
    assert decide(flat, snap) is DecisionAction.BUY
    assert decide(grouped, snap) is DecisionAction.HOLD


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("RSI below 30", rsi_below("30")),
        ("RSI under 30", rsi_below("30")),
        ("the RSI is less than 30", rsi_below("30")),
        ("RSI(14) < 30", rsi_below("30")),
        ("14-day RSI at most 30", Comparison(Metric.RSI14, Op.LE, D(30))),
        ("RSI14 >= 70", Comparison(Metric.RSI14, Op.GE, D(70))),
        ("MACD above signal", Comparison(Metric.MACD, Op.GT, Metric.MACD_SIGNAL)),
        (
            "MACD crosses above the signal line",
            Comparison(Metric.MACD, Op.GT, Metric.MACD_SIGNAL, crossing=True),
        ),
        ("MACD moves below its signal", Comparison(Metric.MACD, Op.LT, Metric.MACD_SIGNAL)),
        ("MACD > 0", Comparison(Metric.MACD, Op.GT, D(0))),
        ("price above SMA50", Comparison(Metric.PRICE, Op.GT, Metric.SMA50)),
        (
            "price is above the 50-day moving average",
            Comparison(Metric.PRICE, Op.GT, Metric.SMA50),
        ),
        (
            "SMA20 crosses above SMA50",
            Comparison(Metric.SMA20, Op.GT, Metric.SMA50, crossing=True),
        ),
        (
            "the 20-day SMA crosses over MA50",
            Comparison(Metric.SMA20, Op.GT, Metric.SMA50, crossing=True),
        ),
        ("20-day EMA below price", Comparison(Metric.EMA20, Op.LT, Metric.PRICE)),
        ("EMA20 > $150", Comparison(Metric.EMA20, Op.GT, D(150))),
        ("price drops 3%+", Comparison(Metric.CHANGE, Op.LE, D(-3))),
        ("price drops by 3%", Comparison(Metric.CHANGE, Op.LE, D(-3))),
        ("price falls 3% or more", Comparison(Metric.CHANGE, Op.LE, D(-3))),
        ("it is down 3 percent today", Comparison(Metric.CHANGE, Op.LE, D(-3))),
        ("price drops at least 3.5%", Comparison(Metric.CHANGE, Op.LE, D("-3.5"))),
        ("price drops more than 3%", Comparison(Metric.CHANGE, Op.LT, D(-3))),
        ("price rises 2%", Comparison(Metric.CHANGE, Op.GE, D(2))),
        ("stock is up 2% on the day", Comparison(Metric.CHANGE, Op.GE, D(2))),
        (
            "price climbs 2% or more since yesterday's close",
            Comparison(Metric.CHANGE, Op.GE, D(2)),
        ),
        ("price change <= -3%", Comparison(Metric.CHANGE, Op.LE, D(-3))),
        ("change > 1%", Comparison(Metric.CHANGE, Op.GT, D(1))),
        ("price falls below $150", Comparison(Metric.PRICE, Op.LT, D(150))),
        ("price above $200", Comparison(Metric.PRICE, Op.GT, D(200))),
        ("price > 200", Comparison(Metric.PRICE, Op.GT, D(200))),
        ("it drops below $1,250.50", Comparison(Metric.PRICE, Op.LT, D("1250.50"))),
        (
            "price crosses above $200",
            Comparison(Metric.PRICE, Op.GT, D(200), crossing=True),
        ),
        ("volume above 2x average", Comparison(Metric.VOLUME, Op.GT, D(2))),
        (
            "volume exceeds 2 times the 20-day average",
            Comparison(Metric.VOLUME, Op.GT, D(2)),
        ),
        ("volume >= 1.5x average", Comparison(Metric.VOLUME, Op.GE, D("1.5"))),
        ("volume above average", Comparison(Metric.VOLUME, Op.GT, D(1))),
        ("profit reaches 5%", Comparison(Metric.PROFIT, Op.GE, D(5))),
        ("profit of 5%", Comparison(Metric.PROFIT, Op.GE, D(5))),
        ("profit is 5% or more", Comparison(Metric.PROFIT, Op.GE, D(5))),
        ("gain hits 5%", Comparison(Metric.PROFIT, Op.GE, D(5))),
        ("take profit 5%", Comparison(Metric.PROFIT, Op.GE, D(5))),
        ("profit exceeds 5%", Comparison(Metric.PROFIT, Op.GT, D(5))),
        ("loss reaches 3%", Comparison(Metric.PROFIT, Op.LE, D(-3))),
        ("loss of 3%", Comparison(Metric.PROFIT, Op.LE, D(-3))),
        ("stop loss 3%", Comparison(Metric.PROFIT, Op.LE, D(-3))),
        ("stop-loss at 3%", Comparison(Metric.PROFIT, Op.LE, D(-3))),
        ("profit <= -3%", Comparison(Metric.PROFIT, Op.LE, D(-3))),
    ],
)
def test_phrasing_variants(phrase: str, expected: Comparison) -> None:
    for text in (f"Buy AAPL when {phrase}", f"If {phrase}, buy AAPL"):
        assert parse_strategy(text).rules[0].condition == expected


@pytest.mark.parametrize(
    ("text", "symbols"),
    [
        ("Buy $AAPL and MSFT when RSI < 30", ("AAPL", "MSFT")),
        ("Buy AAPL, MSFT, or NVDA when RSI < 30", ("AAPL", "MSFT", "NVDA")),
        ("Buy AAPL & MSFT / BRK.B when RSI < 30", ("AAPL", "MSFT", "BRK.B")),
        ("buy aapl when rsi < 30", ("AAPL",)),
        ("BUY AAPL WHEN RSI < 30", ("AAPL",)),
        ("Buy IT and ALL when RSI < 30", ("IT", "ALL")),
    ],
)
def test_symbols(text: str, symbols: tuple[str, ...]) -> None:
    assert parse_strategy(text).rules[0].symbols == symbols


def test_sell_it_refers_to_bought_symbols_but_sell_capital_it_names_a_ticker() -> None:
    assert parse_strategy("Buy AAPL. Sell it when RSI > 70").rules[1].symbols == ("AAPL",)
    assert parse_strategy("Buy AAPL. Sell IT when RSI > 70").rules[1].symbols == ("IT",)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Buy AAPL when the moon is full", "the moon is full"),
        ("Buy AAPL when RSI < 30 and the moon is full. Sell when RSI > 70", "the moon is full"),
        ("Buy AAPL when RSI < 30 or when the moon is full", "when the moon is full"),
        ("Buy AAPL when price above SMA200", "price above SMA200"),
        ("Buy AAPL when RSI < thirty", "RSI < thirty"),
        ("Buy AAPL when RSI < 30 today", "today"),
        ("Buy some AAPL when RSI < 30", "some AAPL"),
        ("Buy AAPL at the open", "at the open"),
        ("Hello world", "Hello world"),
        ("Buy AAPL when RSI < 30. Then dance.", "Then dance"),
        ("Sell when RSI > 70", "Sell when RSI > 70"),
        ("Sell 10 shares of AAPL when RSI > 70", "10 shares of"),
        ("Buy AAPL when RSI < 130", "RSI < 130"),
        ("Buy AAPL when RSI > SMA50", "RSI > SMA50"),
        ("Buy AAPL when RSI < $30", "RSI < $30"),
        ("Buy AAPL when RSI < 30)", ")"),
        ("Buy AAPL when (RSI < 30 or price drops 3%", "(RSI < 30 or price drops 3%"),
        ("Max position size: $5,000", "Max position size: $5,000"),
        ("Buy AAPL. Max position $5,000. Max position $6,000", "Max position $6,000"),
        ("When RSI < 30", "When RSI < 30"),
        ("Buy $0 of AAPL", "$0 of"),
        ("Buy AAPL when", "when"),
        ("When RSI < 30, max position $5,000", "max position $5,000"),
        ("Buy AAPL when RSI < 30 and", "and"),
    ],
)
def test_unknown_phrases_are_quoted_exactly(text: str, phrase: str) -> None:
    with pytest.raises(StrategyParseError) as caught:
        parse_strategy(text)
    error = caught.value
    assert error.phrase == phrase
    assert text[error.start : error.end] == phrase
    assert str(error).startswith(f'could not understand "{phrase}"')


def test_unsupported_indicator_names_the_supported_ones() -> None:
    with pytest.raises(StrategyParseError, match="SMA20, SMA50 and EMA20"):
        parse_strategy("Buy AAPL when SMA200 crosses above SMA50")


@pytest.mark.parametrize("text", ["", "   \n ", "x" * (MAX_STRATEGY_LENGTH + 1)])
def test_empty_and_too_long_strategies_are_rejected(text: str) -> None:
    with pytest.raises(StrategyParseError):
        parse_strategy(text)


def test_at_most_ten_symbols() -> None:
    eleven = " and ".join(f"S{chr(65 + i)}" for i in range(11))
    with pytest.raises(StrategyParseError, match="at most 10 symbols"):
        parse_strategy(f"Buy {eleven} when RSI < 30")


def _examples(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", GRAMMAR.read_text(), re.DOTALL)


def test_the_grammar_page_starts_with_the_seed_example() -> None:
    assert _examples("strategy")[0].strip() == SEED
    assert len(_examples("strategy")) >= 10
    assert len(_examples("rejected")) >= 5


@pytest.mark.parametrize("example", _examples("strategy"))
def test_every_documented_example_parses_and_round_trips(example: str) -> None:
    strategy = parse_strategy(example)
    assert parse_strategy(render_strategy(strategy)) == strategy


@pytest.mark.parametrize("example", _examples("rejected"))
def test_every_documented_rejection_is_rejected(example: str) -> None:
    with pytest.raises(StrategyParseError):
        parse_strategy(example)


# ---------------------------------------------------------------- canonical form

_SYMBOLS = st.sampled_from(["AAPL", "MSFT", "BRK.B", "SPY", "IT"])
_AMOUNT = st.decimals(min_value=D("0.01"), max_value=D(100000), places=2)
_SIGNED = st.decimals(min_value=D(-50), max_value=D(50), places=2)
_OPS = st.sampled_from(list(Op))


@st.composite
def _comparisons(draw: st.DrawFn) -> Comparison:
    left = draw(st.sampled_from(list(Metric)))
    right: Metric | Decimal
    price_like = [Metric.PRICE, Metric.SMA20, Metric.SMA50, Metric.EMA20]
    if left is Metric.MACD_SIGNAL:
        right = Metric.MACD
    elif left is Metric.MACD:
        right = draw(st.one_of(st.just(Metric.MACD_SIGNAL), _SIGNED))
    elif left in price_like:
        others = [m for m in price_like if m is not left]
        right = draw(st.one_of(st.sampled_from(others), _AMOUNT))
    elif left is Metric.RSI14:
        right = draw(st.decimals(min_value=0, max_value=100, places=1))
    elif left is Metric.VOLUME:
        right = draw(st.decimals(min_value=D("0.1"), max_value=D(20), places=1))
    else:
        right = draw(_SIGNED)
    op = draw(_OPS)
    crossing = op in (Op.GT, Op.LT) and draw(st.booleans())
    return Comparison(left, op, right, crossing)


def _conditions() -> st.SearchStrategy[Condition]:
    def grow(children: st.SearchStrategy[Condition]) -> st.SearchStrategy[Condition]:
        parts = st.lists(children, min_size=2, max_size=3)
        return st.one_of(
            parts.map(lambda ps: AllOf(tuple(ps))), parts.map(lambda ps: AnyOf(tuple(ps)))
        ).filter(_flat)

    return st.recursive(_comparisons(), grow, max_leaves=6)


def _flat(condition: Condition) -> bool:
    """Whether no group directly holds a group of its own kind (the parser flattens those)."""
    if isinstance(condition, Comparison):
        return True
    return all(type(part) is not type(condition) and _flat(part) for part in condition.parts)


@st.composite
def _rules(draw: st.DrawFn) -> Rule:
    side = draw(st.sampled_from(list(OrderSide)))
    symbols = tuple(dict.fromkeys(draw(st.lists(_SYMBOLS, min_size=1, max_size=3))))
    condition = draw(st.one_of(st.none(), _conditions()))
    notional = quantity = None
    if side is OrderSide.BUY:
        size = draw(st.sampled_from(["none", "notional", "quantity"]))
        if size == "notional":
            notional = draw(_AMOUNT)
        elif size == "quantity":
            quantity = draw(st.decimals(min_value=D("0.5"), max_value=D(500), places=1))
    return Rule(side, symbols, condition, notional, quantity)


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(_rules(), min_size=1, max_size=4),
    max_position=st.one_of(st.none(), _AMOUNT),
)
def test_canonical_rendering_parses_back_to_the_same_strategy(
    rules: list[Rule], max_position: Decimal | None
) -> None:
    strategy = Strategy(tuple(rules), max_position)
    assert parse_strategy(render_strategy(strategy)) == strategy


# ---------------------------------------------------------------- deciding


async def test_seed_buys_the_max_position_when_rsi_is_low_and_price_dropped() -> None:
    snap = snapshot(rsi14="27.3", change="-3.4")
    result = await RulesModel().decide(SEED, context(snap), LlmSettings())
    (action,) = result.decision.actions
    assert action.action is DecisionAction.BUY
    assert action.symbol == "AAPL"
    assert action.notional == D("5000.00")
    assert action.quantity is None
    assert action.confidence == D(1)
    assert "RSI14 27.3 < 30 and change -3.4% <= -3%" in action.reasoning
    assert result.decision.confidence == D(1)
    assert result.model == "rules-v1"
    assert (result.input_tokens, result.output_tokens, result.cost_usd) == (0, 0, D(0))
    assert result.prompt == render_strategy(parse_strategy(SEED))
    assert result.prompt.startswith("Buy AAPL when RSI14 < 30 and price change <= -3%.")


def test_a_buy_never_spends_more_than_the_cash_available() -> None:
    decision = evaluate_strategy(
        parse_strategy(SEED), context(snapshot(rsi14="27", change="-3.4"), cash="1234.567")
    )
    (action,) = decision.actions
    assert action.notional == D("1234.56")
    assert "cash available $1,234.56" in action.reasoning


def test_a_buy_tops_the_position_up_to_the_max() -> None:
    snap = snapshot(rsi14="27", change="-3.4", held="10", cost="200", price="190")
    (action,) = evaluate_strategy(parse_strategy(SEED), context(snap)).actions
    assert action.notional == D("3100.00")
    assert "max position $5,000 less $1,900.00 held" in action.reasoning


def test_a_full_position_holds() -> None:
    snap = snapshot(rsi14="27", change="-3.4", held="30", cost="200", price="190")
    (action,) = evaluate_strategy(parse_strategy(SEED), context(snap)).actions
    assert action.action is DecisionAction.HOLD
    assert action.symbol == "AAPL"
    assert "leaves less than $1" in action.reasoning


def test_high_rsi_sells_the_whole_position() -> None:
    snap = snapshot(rsi14="75", held="12", cost="189", price="190")
    (action,) = evaluate_strategy(parse_strategy(SEED), context(snap)).actions
    assert action.action is DecisionAction.SELL
    assert action.quantity == D(12)
    assert action.notional is None
    assert "RSI14 75 > 70" in action.reasoning


def test_high_rsi_without_a_position_holds_and_says_why() -> None:
    (action,) = evaluate_strategy(parse_strategy(SEED), context(snapshot(rsi14="75"))).actions
    assert action.action is DecisionAction.HOLD
    assert action.symbol == "AAPL"
    assert "holds no AAPL" in action.reasoning


def test_profit_target_sells() -> None:
    snap = snapshot(rsi14="50", held="10", cost="100", price="105")
    (action,) = evaluate_strategy(parse_strategy(SEED), context(snap)).actions
    assert action.action is DecisionAction.SELL
    assert "profit 5% >= 5%" in action.reasoning


def test_stop_loss_sells() -> None:
    strategy = parse_strategy("Buy AAPL when RSI < 30. Stop loss 3%")
    snap = snapshot(rsi14="50", held="10", cost="100", price="96.9")
    (action,) = evaluate_strategy(strategy, context(snap)).actions
    assert action.action is DecisionAction.SELL
    assert "profit -3.1% <= -3%" in action.reasoning


def test_nothing_fired_is_one_hold_that_explains() -> None:
    decision = evaluate_strategy(
        parse_strategy(SEED), context(snapshot(rsi14="45.12", change="-1"))
    )
    (action,) = decision.actions
    assert action.action is DecisionAction.HOLD
    assert action.symbol is None
    assert "RSI14 45.12 not < 30" in decision.reasoning
    assert "change -1% not <= -3%" in decision.reasoning
    assert action.reasoning == decision.reasoning


def test_missing_indicators_make_conditions_false_with_the_reason() -> None:
    decision = evaluate_strategy(parse_strategy(SEED), context(snapshot(rsi14=None, change="-9")))
    assert decision.actions[0].action is DecisionAction.HOLD
    assert "RSI14 unavailable" in decision.reasoning


def test_missing_market_data_is_reported() -> None:
    decision = evaluate_strategy(parse_strategy(SEED), context())
    assert decision.actions[0].action is DecisionAction.HOLD
    assert "AAPL: no market data" in decision.reasoning


def test_buys_share_the_cash_in_strategy_order() -> None:
    strategy = parse_strategy("Buy AAPL and MSFT when RSI < 30. Max position size: $5,000")
    decision = evaluate_strategy(
        strategy,
        context(snapshot("AAPL", rsi14="20"), snapshot("MSFT", rsi14="20"), cash="6000"),
    )
    assert [a.notional for a in decision.actions] == [D(5000), D(1000)]


def test_without_a_size_the_cash_is_split_between_buys() -> None:
    strategy = parse_strategy("Buy AAPL and MSFT when RSI < 30")
    decision = evaluate_strategy(
        strategy, context(snapshot("AAPL", rsi14="20"), snapshot("MSFT", rsi14="20"), cash="6000")
    )
    assert [a.notional for a in decision.actions] == [D(3000), D(3000)]


def test_explicit_sizes() -> None:
    dollars = parse_strategy("Buy $1,000 of AAPL when RSI < 30. Max position size: $5,000")
    (action,) = evaluate_strategy(dollars, context(snapshot(rsi14="20"))).actions
    assert action.notional == D(1000)

    shares = parse_strategy("Buy 10 shares of AAPL when RSI < 30")
    (action,) = evaluate_strategy(shares, context(snapshot(rsi14="20", price="190"))).actions
    assert (action.quantity, action.notional) == (D(10), None)

    # $1,000 buys only 5 whole shares at $190.
    (action,) = evaluate_strategy(
        shares, context(snapshot(rsi14="20", price="190"), cash="1000")
    ).actions
    assert action.quantity == D(5)


def test_volume_is_compared_with_the_pro_rated_average() -> None:
    strategy = parse_strategy("Buy AAPL when volume above 2x average")
    average = D(1_000_000)
    so_far = average * D(90) / D(390)  # a normal day's volume by 11:00
    quiet = snapshot(volume=str(so_far * D("1.9")), average_volume20=str(average))
    busy = snapshot(volume=str(so_far * D("2.5")), average_volume20=str(average))
    assert evaluate_strategy(strategy, context(quiet)).actions[0].action is DecisionAction.HOLD
    decision = evaluate_strategy(strategy, context(busy))
    assert decision.actions[0].action is DecisionAction.BUY
    assert "volume 2.5x average > 2x" in decision.reasoning


def test_crossings_are_read_as_the_current_state() -> None:
    strategy = "Buy NVDA when MACD crosses above signal"
    above = snapshot("NVDA", macd="0.52", macd_signal="0.48")
    below = snapshot("NVDA", macd="0.40", macd_signal="0.48")
    assert decide(strategy, above) is DecisionAction.BUY
    assert decide(strategy, below) is DecisionAction.HOLD


def test_a_sell_wins_over_a_buy_of_the_same_symbol() -> None:
    strategy = "Buy AAPL when RSI < 30. Sell AAPL when price drops 3%"
    snap = snapshot(rsi14="20", change="-4", held="1", cost="200")
    assert decide(strategy, snap) is DecisionAction.SELL


async def test_an_invalid_strategy_is_invalid_output() -> None:
    with pytest.raises(ModelInvalidOutput, match="the moon"):
        await RulesModel().decide(
            "Buy AAPL when the moon is full", context(snapshot()), LlmSettings()
        )


_VOCABULARY = [
    *("buy", "sell", "when", "if", "and", "or", "(", ")", ",", ".", ";", "then", "+", "-", "x"),
    *("AAPL", "MSFT", "it", "RSI", "MACD", "signal", "SMA20", "SMA50", "price", "volume"),
    *("profit", "loss", "stop", "take", "max", "position", "size:", "$5,000", "10", "shares"),
    *("of", "3%", "30", "<", ">", "<=", "above", "below", "crosses", "drops", "rises", "by"),
    *("more", "than", "2x", "average", "the", "moon", "is", "full"),
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_VOCABULARY), min_size=1, max_size=25))
def test_any_text_parses_or_fails_with_an_exact_quote(words: list[str]) -> None:
    text = " ".join(words)
    try:
        strategy = parse_strategy(text)
    except StrategyParseError as error:
        assert text[error.start : error.end] == error.phrase
        assert error.phrase.strip() or not text.strip()
    else:
        assert parse_strategy(render_strategy(strategy)) == strategy
