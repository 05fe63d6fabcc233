"""The built-in rules model: a documented plain-English strategy grammar, no key needed.

`parse_strategy` turns text such as "Buy AAPL when RSI < 30 and price drops 3%+. Sell when
RSI > 70 or profit reaches 5%. Max position size: $5,000" into a `Strategy`, or raises a
`StrategyParseError` quoting the exact phrase it did not understand: a strategy is rejected
when it is saved, never half-understood at run time. docs/strategy-grammar.md is the
grammar's reference; the tests parse every example in it.

`RulesModel` evaluates a parsed strategy against a `DecisionContext` and explains each
decision with the numbers it used ("RSI14 27.3 < 30 and change -3.4% <= -3%").
"""

from __future__ import annotations

import enum
import functools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from domain.agents.decision import (
    Action,
    Decision,
    DecisionAction,
    DecisionContext,
    LlmSettings,
    ModelInvalidOutput,
    ModelResult,
    SymbolSnapshot,
)
from domain.trading.types import OrderSide
from domain.triggers.index import session_fraction

__all__ = [
    "MAX_STRATEGY_LENGTH",
    "MAX_SYMBOLS",
    "MODEL_NAME",
    "AllOf",
    "AnyOf",
    "Comparison",
    "Condition",
    "Metric",
    "Op",
    "Rule",
    "RulesModel",
    "Strategy",
    "StrategyParseError",
    "evaluate_strategy",
    "parse_strategy",
    "render_strategy",
    "watched_symbols",
]

MODEL_NAME = "rules-v1"
MAX_STRATEGY_LENGTH = 2_000  # characters
# One action per symbol, and a decision carries at most ten actions (llm.MAX_ACTIONS).
MAX_SYMBOLS = 10
# Brokers refuse dollar orders below $1 (Alpaca's minimum notional).
_MIN_NOTIONAL = Decimal(1)
_CENTS = Decimal("0.01")
_ONE = Decimal(1)
_HUNDRED = Decimal(100)
_CERTAIN = Decimal(1)


# ---------------------------------------------------------------- the parsed strategy


class Metric(enum.StrEnum):
    RSI14 = "RSI14"
    MACD = "MACD"
    MACD_SIGNAL = "MACD signal"
    SMA20 = "SMA20"
    SMA50 = "SMA50"
    EMA20 = "EMA20"
    PRICE = "price"
    CHANGE = "change"  # percent since the previous session's close
    VOLUME = "volume"  # multiple of the 20-day average volume, pro-rated by session time
    PROFIT = "profit"  # percent of the agent's position over its average cost


class Op(enum.StrEnum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="

    def holds(self, left: Decimal, right: Decimal) -> bool:
        if self is Op.LT:
            return left < right
        if self is Op.LE:
            return left <= right
        if self is Op.GT:
            return left > right
        return left >= right


@dataclass(frozen=True, slots=True)
class Comparison:
    """`left op right`. A crossing ("MACD crosses above signal") is read as the state after
    the crossing, because a DecisionContext carries no previous indicator values."""

    left: Metric
    op: Op
    right: Metric | Decimal
    crossing: bool = False


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Condition, ...]


Condition = Comparison | AllOf | AnyOf


@dataclass(frozen=True, slots=True)
class Rule:
    """Buy or sell each of `symbols` when `condition` holds (on every run when it is None).
    A buy may carry its own size: `notional` dollars or `quantity` shares."""

    side: OrderSide
    symbols: tuple[str, ...]
    condition: Condition | None
    notional: Decimal | None = None
    quantity: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Strategy:
    rules: tuple[Rule, ...]
    max_position: Decimal | None = None  # dollars per symbol


class StrategyParseError(ValueError):
    """`phrase` is exactly text[start:end], the part that was not understood."""

    def __init__(self, message: str, *, phrase: str, start: int, end: int) -> None:
        super().__init__(message)
        self.phrase = phrase
        self.start = start
        self.end = end


def watched_symbols(strategy: Strategy) -> list[str]:
    """Every symbol the strategy names, in order of first mention."""
    return list(dict.fromkeys(s for rule in strategy.rules for s in rule.symbols))


# ---------------------------------------------------------------- lexicon

_I = re.IGNORECASE
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_SIGNED = rf"[-+]?{_NUM}"
# "$5,000", "$5k", "5000 dollars", "5,000 USD".
_MONEY = rf"(?:\$\s*{_NUM}(?:\s*[km]\b)?|{_NUM}(?:\s*[km])?\s*(?:dollars|usd)\b)"
_PERCENT = r"\s*(?:%|percent\b|pct\b)"
_THE = r"(?:(?:the|its|a)\s+)?"
# Verbs that may stand between a subject and a comparator: "price drops below $150".
_VERB = (
    r"(?:(?:is|was|are|gets|goes|falls|drops|dips|sinks|slips|moves|rises|climbs|jumps"
    r"|trades|closes|stays|remains)\s+)?"
)
_COMPARATOR = (
    r"(?:cross(?:es|ed)?\s+(?:above|over|below|under)"
    r"|at\s+or\s+(?:below|above)|at\s+(?:most|least)|no\s+(?:more|less|higher|lower)\s+than"
    r"|(?:less|lower|greater|more|higher)\s+than|below|under|beneath|above|over"
    r"|exceeds|exceeding|<=|=<|>=|=>|≤|≥|<|>)"
)
_COMPARATORS: dict[str, Op] = {
    **dict.fromkeys(("below", "under", "beneath", "less than", "lower than", "<"), Op.LT),
    **dict.fromkeys(
        ("at or below", "at most", "no more than", "no higher than", "<=", "=<", "≤"), Op.LE
    ),
    **dict.fromkeys(
        ("above", "over", "greater than", "more than", "higher than", "exceeds", "exceeding", ">"),
        Op.GT,
    ),
    **dict.fromkeys(
        ("at or above", "at least", "no less than", "no lower than", ">=", "=>", "≥"), Op.GE
    ),
}
_FLIPPED = {Op.LT: Op.GT, Op.LE: Op.GE, Op.GT: Op.LT, Op.GE: Op.LE}

_SERIES: dict[Metric, str] = {
    Metric.RSI14: r"(?:14[\s-]*day\s+)?rsi(?:\s*-?\s*14|\s*\(\s*14\s*\))?",
    Metric.MACD_SIGNAL: r"(?:macd\s+)?signal(?:\s+line)?",
    Metric.MACD: r"macd(?:\s+line)?(?!\s+signal)",
    Metric.SMA20: (
        r"(?:sma\s*-?\s*(?:20|\(\s*20\s*\))|ma\s*20"
        r"|20[\s-]*(?:day|period)\s+(?:sma|simple\s+moving\s+average|moving\s+average|ma))"
    ),
    Metric.SMA50: (
        r"(?:sma\s*-?\s*(?:50|\(\s*50\s*\))|ma\s*50"
        r"|50[\s-]*(?:day|period)\s+(?:sma|simple\s+moving\s+average|moving\s+average|ma))"
    ),
    Metric.EMA20: (
        r"(?:ema\s*-?\s*(?:20|\(\s*20\s*\))"
        r"|20[\s-]*(?:day|period)\s+(?:ema|exponential\s+moving\s+average))"
    ),
    Metric.PRICE: r"(?:(?:(?:share|stock|last)\s+)?price|it|stock)\b",
}
_ANY_SERIES = "|".join(f"(?:{p})" for p in _SERIES.values())
_SERIES_EXACT = {m: re.compile(rf"(?:{p})\Z", _I) for m, p in _SERIES.items()}
_PRICE_LIKE = frozenset({Metric.PRICE, Metric.SMA20, Metric.SMA50, Metric.EMA20})
_MACD_PAIR = frozenset({Metric.MACD, Metric.MACD_SIGNAL})

_DOWN = (
    r"drops?|dropped|falls?|fell|declines?|declined|dips?|dipped|decreases?|slides?|sinks?"
    r"|loses|lost|tanks?|plunges?|plummets?|(?:goes|moves|is|trades)\s+down|down"
)
_UP = (
    r"rises?|rose|gains?|gained|climbs?|jumps?|increases?|rall(?:y|ies)|surges?|spikes?"
    r"|(?:goes|moves|is|trades)\s+up|up"
)
_SINCE_CLOSE = (
    r"(?:\s+(?:today|on\s+the\s+day|(?:from|since)\s+(?:the\s+)?(?:previous|prior|last"
    r"|yesterday'?s)\s+close|since\s+yesterday))?"
)
_OR_MORE = r"(?:\+|\s*or\s+(?:more|greater|higher)\b)?"

_ATOM_COMPARE = re.compile(
    rf"{_THE}(?P<left>{_ANY_SERIES})\s*{_VERB}(?P<cmp>{_COMPARATOR})\s*"
    rf"(?:{_THE}(?P<right>{_ANY_SERIES})|(?P<money>{_MONEY})|(?P<number>{_SIGNED}))",
    _I,
)
_ATOM_MOVE = re.compile(
    rf"(?:{_THE}(?:(?:share|stock)\s+)?(?:price|stock|it)\s+)?(?:is\s+)?"
    rf"(?:(?P<down>{_DOWN})|(?P<up>{_UP}))\s+(?:by\s+)?"
    rf"(?P<qual>more\s+than\s+|over\s+|at\s+least\s+)?(?P<pct>{_NUM}){_PERCENT}{_OR_MORE}"
    rf"{_SINCE_CLOSE}",
    _I,
)
_ATOM_CHANGE = re.compile(
    rf"{_THE}(?:(?:price|day|daily|percent)\s+)?change(?:\s+percent)?\s*{_VERB}"
    rf"(?P<cmp>{_COMPARATOR})\s*(?P<pct>{_SIGNED}){_PERCENT}{_SINCE_CLOSE}",
    _I,
)
_ATOM_VOLUME = re.compile(
    rf"{_THE}(?:trading\s+)?volume\s*{_VERB}(?:(?P<cmp>{_COMPARATOR})\s*)?"
    r"(?:(?P<mult>\d+(?:\.\d+)?)\s*(?:x|times)\s*)?"
    r"(?:(?:the|its)\s+)?(?:(?:20[\s-]*day|daily|normal|usual)\s+)?(?:average|avg)\b"
    r"(?:\s+(?:daily\s+)?volume)?",
    _I,
)
_ATOM_PROFIT = re.compile(
    rf"{_THE}(?:(?:unrealized|position)\s+)?(?P<kind>profit|gain|loss)"
    r"(?:\s+on\s+the\s+position)?\s*"
    rf"(?:{_VERB}(?P<cmp>{_COMPARATOR})|(?P<verb>reaches|hits|is|of|gets\s+to|goes\s+above))?"
    rf"\s*(?P<pct>{_SIGNED}){_PERCENT}{_OR_MORE}",
    _I,
)
_ATOM_STOP = re.compile(
    r"(?:(?P<stop>stop[\s-]*loss)|take[\s-]*profit)\s*(?::|=|at\s|of\s|is\s)?"
    rf"\s*(?P<pct>{_NUM}){_PERCENT}",
    _I,
)
_ATOMS = (_ATOM_COMPARE, _ATOM_MOVE, _ATOM_CHANGE, _ATOM_VOLUME, _ATOM_PROFIT, _ATOM_STOP)

_SENTENCE_BREAK = re.compile(r"[.!?;]+(?=\s|$)|\n")
_ACTION_AHEAD = r"(?=(?:buy|sell)\b)"
_SETTING_AHEAD = r"(?=(?:max(?:imum)?\.?\s+position|stop[\s-]*loss|take[\s-]*profit|limit|cap)\b)"
# A condition ends where a new clause starts: "..., sell when ...", "... then buy ...".
# Settings may follow only after a comma, since "or stop loss 3%" is also a condition.
_CLAUSE_BREAK = re.compile(
    rf"\s*,?\s*(?:(?:and|then|also)\s+)*{_ACTION_AHEAD}"
    rf"|\s*,\s*(?:(?:and|then|also)\s+)*{_SETTING_AHEAD}",
    _I,
)
_AND = re.compile(r"\s*,?\s*and\b\s*", _I)
_OR = re.compile(r"\s*,?\s*or\b\s*", _I)
# An unknown phrase ends at the next connective, comma (not in a number), parenthesis,
# action or condition.
_PHRASE_END = re.compile(
    rf"\s+(?:and|or)\s|,(?!\d)|[()]|\s+{_ACTION_AHEAD}|\s+(?=(?:when|if|whenever|once)\b)",
    _I,
)

_ACTION = re.compile(r"(?:(?:then|also)\s+)?(?P<side>buy|sell)\b\s*", _I)
_WHEN = re.compile(r"\s*(?:when|if|whenever|once|as\s+soon\s+as)\b\s*", _I)
_SIZE = re.compile(
    rf"(?:(?P<money>{_MONEY})(?:\s+(?:worth\s+of|of|in))?"
    rf"|(?P<shares>{_NUM})\s+shares?(?:\s+of)?)(?=\s|$)\s*",
    _I,
)
_SELL_WHAT = re.compile(
    r"(?:it|them|everything|all|(?:the|my|our)\s+(?:position|positions|stock|shares)"
    r"|positions?|shares)\b\s*",
    _I,
)
_SYMBOL = re.compile(r"\$?(?P<sym>[A-Za-z]{1,5}(?:[.-][A-Za-z]{1,2})?)\b", _I)
_SYMBOL_SEP = re.compile(r"\s*(?:,\s*(?:(?:and|or)\s+)?|\s(?:and|or)\s+|&|/)\s*", _I)
_MAX_POSITION = re.compile(
    r"(?:max(?:imum)?\.?\s+position(?:\s+(?:size|value))?"
    r"(?:\s+(?:per|for\s+each|each)\s+(?:symbol|stock|position|ticker))?"
    r"\s*(?::|=|is\b|of\b|at\b)?"
    r"|(?:limit|cap)\s+(?:(?:each|every|the)\s+)?positions?(?:\s+size)?\s+(?:to|at)\b)"
    rf"\s*(?P<money>{_MONEY})",
    _I,
)
_UNSUPPORTED_INDICATOR = re.compile(
    r"\b(?:(?:sma|ma)\s*-?\s*\(?(?!(?:20|50)\b)\d+|ema\s*-?\s*\(?(?!20\b)\d+"
    r"|\d+[\s-]*day\s+(?:sma|ema|ma|moving\s+average))",
    _I,
)

# Words that end a symbol list whatever their case.
_RESERVED = frozenset(
    {
        *("when", "if", "whenever", "once", "as", "and", "or", "then", "also", "buy", "sell"),
        *("of", "in", "shares", "share", "worth", "at", "on", "with", "for", "every", "each"),
        *("max", "maximum", "stop", "take"),
    }
)
# Words that are symbols only when written in capitals ("IT", "ALL" are tickers too).
_FILLER = frozenset(
    {
        *("the", "a", "an", "some", "stock", "stocks", "it", "them", "all", "more", "any"),
        *("my", "our", "everything", "position", "positions"),
    }
)


def _number(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def _money(text: str) -> Decimal:
    cleaned = re.sub(r"dollars|usd|[$,\s]", "", text.lower())
    if cleaned.endswith("k"):
        return Decimal(cleaned[:-1]) * 1_000
    if cleaned.endswith("m"):
        return Decimal(cleaned[:-1]) * 1_000_000
    return Decimal(cleaned)


def _comparator(text: str) -> tuple[Op, bool]:
    words = " ".join(text.lower().split())
    if words.startswith("cross"):
        return (Op.GT if words.endswith(("above", "over")) else Op.LT), True
    return _COMPARATORS[words], False


def _series(text: str) -> Metric:
    words = " ".join(text.split())
    return next(m for m, pattern in _SERIES_EXACT.items() if pattern.match(words))


def _flat(kind: type[AllOf] | type[AnyOf], parts: list[Condition]) -> Condition:
    """One condition from `parts`; nested groups of the same kind are spliced in, so
    "(a or b) or c" and "a or b or c" are the same strategy."""
    flat: list[Condition] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, kind) else (part,))
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.rules: list[tuple[Rule, int, int]] = []
        self.max_position: Decimal | None = None

    def error(self, start: int, end: int, hint: str | None = None) -> StrategyParseError:
        while end > start + 1 and not (
            self.text[end - 1].isalnum() or self.text[end - 1] in "%$)+"
        ):
            end -= 1
        phrase = self.text[start:end]
        message = f'could not understand "{phrase}"' + (f": {hint}" if hint else "")
        return StrategyParseError(message, phrase=phrase, start=start, end=end)

    def unknown(self, pos: int, end: int, hint: str | None = None) -> StrategyParseError:
        """An error quoting the phrase at `pos`, up to the next connective or comma."""
        pos = self.skip_space(pos, end)
        if pos >= end:
            # Something is missing at the end: quote the word it should have followed.
            word_end = pos
            while word_end > 0 and self.text[word_end - 1].isspace():
                word_end -= 1
            start = word_end
            while start > 0 and not self.text[start - 1].isspace():
                start -= 1
            return self.error(start, word_end, hint or "something is missing after it")
        stop = _PHRASE_END.search(self.text, pos + 1, end)
        return self.error(pos, stop.start() if stop else end, hint)

    def skip_space(self, pos: int, end: int) -> int:
        while pos < end and self.text[pos].isspace():
            pos += 1
        return pos

    def at_clause_end(self, pos: int, end: int) -> bool:
        return (
            self.skip_space(pos, end) >= end or _CLAUSE_BREAK.match(self.text, pos, end) is not None
        )

    def parse(self) -> Strategy:
        for start, end in _sentences(self.text):
            pos = self.clause(start, end)
            while pos < end:
                brk = _CLAUSE_BREAK.match(self.text, pos, end)
                if brk is None:
                    raise self.unknown(pos, end)
                pos = self.clause(brk.end(), end)
        return self.finish()

    def finish(self) -> Strategy:
        if not self.rules:
            raise self.error(
                0, len(self.text), 'no buy or sell rule, e.g. "Buy AAPL when RSI < 30"'
            )
        bought = tuple(
            dict.fromkeys(
                s for rule, _, _ in self.rules if rule.side is OrderSide.BUY for s in rule.symbols
            )
        )
        rules: list[Rule] = []
        for rule, start, end in self.rules:
            if rule.symbols:
                rules.append(rule)
            elif bought:
                rules.append(Rule(rule.side, bought, rule.condition))
            else:
                raise self.error(
                    start, end, 'it names no symbol and no buy rule does: "Sell AAPL when ..."'
                )
        strategy = Strategy(tuple(rules), self.max_position)
        if len(watched_symbols(strategy)) > MAX_SYMBOLS:
            raise self.error(
                0, len(self.text), f"a strategy may name at most {MAX_SYMBOLS} symbols"
            )
        return strategy

    def clause(self, pos: int, end: int) -> int:
        """Parse one clause starting at `pos`; return where it ends."""
        text = self.text
        if m := _MAX_POSITION.match(text, pos, end):
            if self.max_position is not None:
                raise self.error(pos, m.end(), "the maximum position size is already set")
            self.max_position = self.positive(_money(m["money"]), pos, m.end())
            return m.end()
        if (m := _ATOM_STOP.match(text, pos, end)) and self.at_clause_end(m.end(), end):
            rule = Rule(OrderSide.SELL, (), self.comparison(m))
            self.rules.append((rule, pos, m.end()))
            return m.end()
        if m := _WHEN.match(text, pos, end):
            condition, after = self.expression(m.end(), end)
            brk = _CLAUSE_BREAK.match(text, after, end)
            action = _ACTION.match(text, brk.end(), end) if brk else None
            if action is None:
                needs_action = 'a condition needs an action: "When RSI < 30, buy AAPL"'
                if brk is not None:
                    raise self.unknown(brk.end(), end, needs_action)
                if self.skip_space(after, end) < end:
                    raise self.unknown(after, end)
                raise self.error(pos, end, needs_action)
            rule, after = self.action(action, end, condition)
        elif action := _ACTION.match(text, pos, end):
            rule, after = self.action(action, end, None)
            if when := _WHEN.match(text, after, end):
                condition, after = self.expression(when.end(), end)
                rule = Rule(rule.side, rule.symbols, condition, rule.notional, rule.quantity)
        else:
            raise self.unknown(pos, end)
        self.rules.append((rule, pos, after))
        return after

    def positive(self, value: Decimal, start: int, end: int) -> Decimal:
        if value <= 0:
            raise self.error(start, end, "the amount must be positive")
        return value

    def action(
        self, action: re.Match[str], end: int, condition: Condition | None
    ) -> tuple[Rule, int]:
        """An action's side, size and symbols, up to where its condition may start."""
        text = self.text
        side = OrderSide.BUY if action["side"].lower() == "buy" else OrderSide.SELL
        pos = action.end()
        notional = quantity = None
        if size := _SIZE.match(text, pos, end):
            if side is OrderSide.SELL:
                raise self.error(pos, size.end(), "a sell always closes the agent's whole position")
            if size["money"]:
                notional = self.positive(_money(size["money"]), pos, size.end())
            else:
                quantity = self.positive(_number(size["shares"]), pos, size.end())
            pos = size.end()
        what = _SELL_WHAT.match(text, pos, end) if side is OrderSide.SELL else None
        # "Sell it" refers to the bought symbols; "Sell IT" names Gartner.
        if what and not what[0].strip().isupper():
            pos = what.end()
        symbols, after = self.symbols(pos, end)
        if side is OrderSide.BUY and not symbols:
            raise self.unknown(pos, end, 'expected ticker symbols such as AAPL or "AAPL and MSFT"')
        if _WHEN.match(text, after, end):
            if condition is not None:
                raise self.unknown(after, end, "the condition is already given")
        elif not self.at_clause_end(after, end):
            raise self.unknown(after, end)
        return Rule(side, symbols, condition, notional, quantity), after

    def symbols(self, pos: int, end: int) -> tuple[tuple[str, ...], int]:
        found: list[str] = []
        after = cursor = pos
        while m := _SYMBOL.match(self.text, cursor, end):
            word = m["sym"]
            lowered = word.lower()
            if lowered in _RESERVED or (lowered in _FILLER and not word.isupper()):
                break
            found.append(word.upper())
            after = m.end()
            sep = _SYMBOL_SEP.match(self.text, after, end)
            if sep is None:
                break
            cursor = sep.end()
        return tuple(dict.fromkeys(found)), after

    # condition := conjunction ("or" conjunction)* ; conjunction := atom ("and" atom)*
    def expression(self, pos: int, end: int) -> tuple[Condition, int]:
        return self.chain(pos, end, _OR, AnyOf, self.conjunction)

    def conjunction(self, pos: int, end: int) -> tuple[Condition, int]:
        return self.chain(pos, end, _AND, AllOf, self.atom)

    def chain(
        self,
        pos: int,
        end: int,
        connective: re.Pattern[str],
        kind: type[AllOf] | type[AnyOf],
        operand: Callable[[int, int], tuple[Condition, int]],
    ) -> tuple[Condition, int]:
        parts: list[Condition] = []
        while True:
            condition, pos = operand(pos, end)
            parts.append(condition)
            if _CLAUSE_BREAK.match(self.text, pos, end):
                break
            m = connective.match(self.text, pos, end)
            if m is None:
                break
            pos = m.end()
        return _flat(kind, parts), pos

    def atom(self, pos: int, end: int) -> tuple[Condition, int]:
        text = self.text
        pos = self.skip_space(pos, end)
        if pos < end and text[pos] == "(":
            condition, after = self.expression(pos + 1, end)
            after = self.skip_space(after, end)
            if after < end and text[after] == ")":
                return condition, after + 1
            if after < end:
                raise self.unknown(after, end)
            raise self.error(pos, end, 'missing ")"')
        best: re.Match[str] | None = None
        for pattern in _ATOMS:
            m = pattern.match(text, pos, end)
            if (
                m
                and (m.end() >= end or not text[m.end()].isalnum())
                and (best is None or m.end() > best.end())
            ):
                best = m
        if best is None:
            hint = None
            if _UNSUPPORTED_INDICATOR.search(text, pos, end):
                hint = "the indicators are RSI14, MACD and its signal, SMA20, SMA50 and EMA20"
            raise self.unknown(pos, end, hint)
        return self.comparison(best), best.end()

    def comparison(self, m: re.Match[str]) -> Comparison:
        pattern = m.re
        if pattern is _ATOM_COMPARE:
            return self.series_comparison(m)
        if pattern is _ATOM_MOVE:
            pct = _number(m["pct"])
            strict = bool(m["qual"]) and m["qual"].split()[0].lower() in ("more", "over")
            if m["down"]:
                return Comparison(Metric.CHANGE, Op.LT if strict else Op.LE, -pct)
            return Comparison(Metric.CHANGE, Op.GT if strict else Op.GE, pct)
        if pattern is _ATOM_CHANGE:
            op, crossing = _comparator(m["cmp"])
            return Comparison(Metric.CHANGE, op, _number(m["pct"]), crossing)
        if pattern is _ATOM_VOLUME:
            op, crossing = _comparator(m["cmp"]) if m["cmp"] else (Op.GE, False)
            multiple = _number(m["mult"]) if m["mult"] else _ONE
            return Comparison(
                Metric.VOLUME, op, self.positive(multiple, m.start(), m.end()), crossing
            )
        if pattern is _ATOM_STOP:
            pct = _number(m["pct"])
            if m["stop"]:
                return Comparison(Metric.PROFIT, Op.LE, -pct)
            return Comparison(Metric.PROFIT, Op.GE, pct)
        return self.profit_comparison(m)

    def profit_comparison(self, m: re.Match[str]) -> Comparison:
        pct = _number(m["pct"])
        op, crossing = _comparator(m["cmp"]) if m["cmp"] else (Op.GE, False)
        if m["verb"] and m["verb"].lower() == "goes above":
            op = Op.GT
        if m["kind"].lower() != "loss":
            return Comparison(Metric.PROFIT, op, pct, crossing)
        if pct < 0:
            raise self.error(m.start(), m.end(), "give a loss as a positive percentage")
        return Comparison(Metric.PROFIT, _FLIPPED[op], -pct, crossing)

    def series_comparison(self, m: re.Match[str]) -> Comparison:
        left = _series(m["left"])
        op, crossing = _comparator(m["cmp"])
        right: Metric | Decimal
        if m["right"]:
            right = _series(m["right"])
            if left is right or not (
                (left in _PRICE_LIKE and right in _PRICE_LIKE) or {left, right} == _MACD_PAIR
            ):
                raise self.error(
                    m.start(), m.end(), f"{left.value} cannot be compared with {right.value}"
                )
        elif m["money"]:
            if left not in _PRICE_LIKE:
                raise self.error(m.start(), m.end(), f"{left.value} is not a dollar amount")
            right = _money(m["money"])
        else:
            right = _number(m["number"])
            if left is Metric.MACD_SIGNAL:
                raise self.error(m.start(), m.end(), "compare MACD, not its signal, with a number")
            if left is Metric.RSI14 and not 0 <= right <= 100:
                raise self.error(m.start(), m.end(), "RSI lies between 0 and 100")
        return Comparison(left, op, right, crossing)


def _sentences(text: str) -> Iterator[tuple[int, int]]:
    start = 0
    for m in _SENTENCE_BREAK.finditer(text):
        yield from _trimmed(text, start, m.start())
        start = m.end()
    yield from _trimmed(text, start, len(text))


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and (text[start].isspace() or text[start] == ","):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] == ","):
        end -= 1
    if start < end:
        yield start, end


def parse_strategy(text: str) -> Strategy:
    """Parse a plain-English strategy (docs/strategy-grammar.md) or raise StrategyParseError."""
    if len(text) > MAX_STRATEGY_LENGTH:
        raise StrategyParseError(
            f"the strategy is {len(text):,} characters long; the limit is {MAX_STRATEGY_LENGTH:,}",
            phrase=text[MAX_STRATEGY_LENGTH:],
            start=MAX_STRATEGY_LENGTH,
            end=len(text),
        )
    if not text.strip():
        raise StrategyParseError("the strategy is empty", phrase="", start=0, end=0)
    return _Parser(text).parse()


# ---------------------------------------------------------------- canonical rendering


def _plain(value: Decimal, places: int | None = None) -> str:
    if places is not None:
        value = value.quantize(_ONE.scaleb(-places))
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _money_text(value: Decimal) -> str:
    return "$" + format(value.normalize(), ",f")


def _dollars(value: Decimal) -> str:
    # Rounded down like the notional itself, so "cash available" never exceeds the buy.
    return f"${value.quantize(_CENTS, ROUND_DOWN):,}"


def _threshold(metric: Metric, value: Decimal) -> str:
    if metric in _PRICE_LIKE:
        return _money_text(value)
    if metric in (Metric.CHANGE, Metric.PROFIT):
        return f"{_plain(value)}%"
    if metric is Metric.VOLUME:
        return f"{_plain(value)}x average"
    return _plain(value)


def _render_comparison(c: Comparison) -> str:
    left = "price change" if c.left is Metric.CHANGE else c.left.value
    op = c.op.value
    if c.crossing:
        op = "crosses above" if c.op in (Op.GT, Op.GE) else "crosses below"
    if isinstance(c.right, Metric):
        right = "signal" if c.right is Metric.MACD_SIGNAL else c.right.value
    else:
        right = _threshold(c.left, c.right)
    return f"{left} {op} {right}"


def _render_condition(condition: Condition, inside_all: bool = False) -> str:
    if isinstance(condition, Comparison):
        return _render_comparison(condition)
    if isinstance(condition, AllOf):
        return " and ".join(_render_condition(p, inside_all=True) for p in condition.parts)
    text = " or ".join(_render_condition(p) for p in condition.parts)
    return f"({text})" if inside_all else text


def render_strategy(strategy: Strategy) -> str:
    """The strategy in canonical grammar: parse_strategy(render_strategy(s)) == s."""
    lines = []
    for rule in strategy.rules:
        size = ""
        if rule.notional is not None:
            size = f" {_money_text(rule.notional)} of"
        elif rule.quantity is not None:
            size = f" {_plain(rule.quantity)} shares of"
        when = f" when {_render_condition(rule.condition)}" if rule.condition else ""
        side = "Buy" if rule.side is OrderSide.BUY else "Sell"
        lines.append(f"{side}{size} {' and '.join(rule.symbols)}{when}.")
    if strategy.max_position is not None:
        lines.append(f"Max position size: {_money_text(strategy.max_position)}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class _Outcome:
    held: bool
    text: str  # what held, or why not


def _read(metric: Metric, snap: SymbolSnapshot, now: datetime) -> Decimal | str:
    """The metric's value for `snap`, or why it is unknown."""
    ind = snap.indicators
    values = {
        Metric.RSI14: ind.rsi14,
        Metric.MACD: ind.macd,
        Metric.MACD_SIGNAL: ind.macd_signal,
        Metric.SMA20: ind.sma20,
        Metric.SMA50: ind.sma50,
        Metric.EMA20: ind.ema20,
    }
    if metric in values:
        value = values[metric]
        return f"{metric.value} unavailable (too little price history)" if value is None else value
    if metric is Metric.PRICE:
        return snap.price
    if metric is Metric.CHANGE:
        if snap.change_percent is None:
            return "change unavailable (no previous close)"
        return snap.change_percent
    if metric is Metric.VOLUME:
        average = ind.average_volume20
        if not average:
            return "volume multiple unavailable (no 20-day average volume)"
        # Outside the regular session the session's volume is complete.
        return snap.volume / (average * (session_fraction(now) or _ONE))
    if snap.position_quantity <= 0 or not snap.average_cost:
        return f"profit unavailable (the agent holds no {snap.symbol})"
    return (snap.price - snap.average_cost) / snap.average_cost * _HUNDRED


def _show(metric: Metric, value: Decimal) -> str:
    if metric in _PRICE_LIKE:
        return f"{metric.value} {_dollars(value)}"
    if metric in (Metric.CHANGE, Metric.PROFIT):
        return f"{metric.value} {_plain(value, 2)}%"
    if metric is Metric.VOLUME:
        return f"volume {_plain(value, 2)}x average"
    if metric is Metric.RSI14:
        return f"RSI14 {_plain(value, 2)}"
    return f"{metric.value} {_plain(value, 4)}"


def _evaluate(condition: Condition, snap: SymbolSnapshot, now: datetime) -> _Outcome:
    if isinstance(condition, Comparison):
        left = _read(condition.left, snap, now)
        if isinstance(left, str):
            return _Outcome(False, left)
        if isinstance(condition.right, Metric):
            right = _read(condition.right, snap, now)
            if isinstance(right, str):
                return _Outcome(False, right)
            right_text = _show(condition.right, right)
        else:
            right, right_text = condition.right, _threshold(condition.left, condition.right)
        held = condition.op.holds(left, right)
        negation = "" if held else "not "
        return _Outcome(
            held, f"{_show(condition.left, left)} {negation}{condition.op} {right_text}"
        )
    held_parts: list[str] = []
    failed_parts: list[str] = []
    for part in condition.parts:
        outcome = _evaluate(part, snap, now)
        text = outcome.text if isinstance(part, Comparison) else f"({outcome.text})"
        (held_parts if outcome.held else failed_parts).append(text)
    if isinstance(condition, AllOf):
        if failed_parts:
            return _Outcome(False, " and ".join(failed_parts))
        return _Outcome(True, " and ".join(held_parts))
    if held_parts:
        return _Outcome(True, " or ".join(held_parts))
    return _Outcome(False, " and ".join(failed_parts))


def _first_rule(
    strategy: Strategy, side: OrderSide, snap: SymbolSnapshot, now: datetime
) -> tuple[Rule | None, str]:
    """The first `side` rule for the symbol that fires, with what held; else why none did."""
    misses: list[str] = []
    for rule in strategy.rules:
        if rule.side is not side or snap.symbol not in rule.symbols:
            continue
        if rule.condition is None:
            return rule, "the rule has no condition"
        outcome = _evaluate(rule.condition, snap, now)
        if outcome.held:
            return rule, outcome.text
        misses.append(f"{side.value.lower()} rule: {outcome.text}")
    return None, "; ".join(misses)


@dataclass(frozen=True, slots=True)
class _BuySignal:
    snap: SymbolSnapshot
    rule: Rule
    why: str


def _size_buy(
    strategy: Strategy, signal: _BuySignal, cash: Decimal, pending: int
) -> tuple[Action, Decimal]:
    """The buy for `signal` and what it spends, given the cash the earlier buys left and the
    number of buy signals still to size, this one included."""
    snap, rule = signal.snap, signal.rule
    held = max(snap.position_quantity, Decimal(0)) * snap.price
    # Each candidate caps the spend; the smallest one decides and is named in the reasoning.
    caps = [(cash, f"cash available {_dollars(cash)}")]
    if strategy.max_position is not None:
        caps.append(
            (
                strategy.max_position - held,
                f"max position {_money_text(strategy.max_position)} less {_dollars(held)} held",
            )
        )
    elif rule.notional is None and rule.quantity is None:
        caps.append((cash / pending, f"cash split across {pending} buys"))
    if rule.notional is not None:
        caps.append((rule.notional, f"the rule's {_money_text(rule.notional)}"))
    budget, limit = min(caps, key=lambda cap: cap[0])

    if rule.quantity is not None:
        quantity = rule.quantity
        if quantity * snap.price > budget:
            quantity = (max(budget, Decimal(0)) / snap.price).to_integral_value(ROUND_DOWN)
        else:
            limit = f"the rule's {_plain(rule.quantity)} shares"
        if quantity <= 0:
            return _hold(snap.symbol, f"{signal.why}, but {limit} buys no whole share"), Decimal(0)
        spend = quantity * snap.price
        reasoning = f"{signal.why}; buy {_plain(quantity)} shares of {snap.symbol} ({limit})"
        return _action(DecisionAction.BUY, snap.symbol, reasoning, quantity=quantity), spend

    amount = max(budget, Decimal(0)).quantize(_CENTS, ROUND_DOWN)
    if amount < _MIN_NOTIONAL:
        return _hold(snap.symbol, f"{signal.why}, but {limit} leaves less than $1"), Decimal(0)
    reasoning = f"{signal.why}; buy {_dollars(amount)} of {snap.symbol} ({limit})"
    return _action(DecisionAction.BUY, snap.symbol, reasoning, notional=amount), amount


def _action(
    action: DecisionAction,
    symbol: str | None,
    reasoning: str,
    *,
    quantity: Decimal | None = None,
    notional: Decimal | None = None,
) -> Action:
    return Action(
        action=action,
        symbol=symbol,
        reasoning=reasoning,
        quantity=quantity,
        notional=notional,
        confidence=_CERTAIN,
    )


def _hold(symbol: str | None, reasoning: str) -> Action:
    return _action(DecisionAction.HOLD, symbol, reasoning)


def evaluate_strategy(strategy: Strategy, context: DecisionContext) -> Decision:
    """One action per symbol whose rule fired; a single HOLD when none did.

    A sell closes the agent's whole position and wins over a buy of the same symbol. Buys
    are sized in the strategy's order from the cash still available, so together they never
    spend more than `context.cash_available`.
    """
    actions: dict[str, Action] = {}
    notes: dict[str, str] = {}
    buys: list[_BuySignal] = []
    for symbol in watched_symbols(strategy):
        snap = context.symbols.get(symbol)
        if snap is None:
            notes[symbol] = "no market data, nothing evaluated"
            continue
        sell, sell_why = _first_rule(strategy, OrderSide.SELL, snap, context.now)
        if sell is not None and snap.position_quantity > 0:
            quantity = snap.position_quantity
            reasoning = f"{sell_why}; sell all {_plain(quantity)} shares of {symbol}"
            actions[symbol] = _action(DecisionAction.SELL, symbol, reasoning, quantity=quantity)
            continue
        buy, buy_why = _first_rule(strategy, OrderSide.BUY, snap, context.now)
        if buy is not None:
            buys.append(_BuySignal(snap, buy, buy_why))
        elif sell is not None:
            actions[symbol] = _hold(symbol, f"{sell_why}, but the agent holds no {symbol}")
        else:
            notes[symbol] = "no rule fired - " + "; ".join(w for w in (buy_why, sell_why) if w)

    cash = context.cash_available
    for i, signal in enumerate(buys):
        action, spent = _size_buy(strategy, signal, cash, len(buys) - i)
        actions[signal.snap.symbol] = action
        cash -= spent

    lines = {s: f"{s}: {a.action.value} - {a.reasoning}" for s, a in actions.items()}
    lines |= {s: f"{s}: {note}" for s, note in notes.items()}
    symbols = watched_symbols(strategy)
    reasoning = "\n".join(lines[s] for s in symbols)
    chosen = tuple(actions[s] for s in symbols if s in actions)
    return Decision(
        actions=chosen or (_hold(None, reasoning),), reasoning=reasoning, confidence=_CERTAIN
    )


# ---------------------------------------------------------------- the model

# Parsed strategies are immutable, so one cached parse serves every agent with that text.
_parse_cached = functools.lru_cache(maxsize=1024)(parse_strategy)


class RulesModel:
    """The DecisionModel for LlmProvider.RULES: deterministic, free, and explains itself."""

    async def decide(
        self, strategy: str, context: DecisionContext, settings: LlmSettings
    ) -> ModelResult:
        started = time.perf_counter()
        try:
            parsed = _parse_cached(strategy)
        except StrategyParseError as exc:
            # Strategies are checked when saved; this one predates a grammar change.
            raise ModelInvalidOutput(str(exc)) from exc
        decision = evaluate_strategy(parsed, context)
        return ModelResult(
            decision=decision,
            model=MODEL_NAME,
            prompt=render_strategy(parsed),
            latency_ms=int((time.perf_counter() - started) * 1000),
        )
