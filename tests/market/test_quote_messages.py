"""A quote published to many subscribers is parsed once, and each message gets its own quote."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from domain.market import codec, models
from domain.market.service import quote_channel
from kianax.broadcast import Message
from schema.market import quote_from_message


def message(symbol: str, last: str) -> Message:
    quote = models.Quote(
        symbol=symbol,
        bid=Decimal("9.99"),
        ask=Decimal("10.01"),
        last=Decimal(last),
        volume=Decimal(500),
        timestamp=datetime(2026, 11, 18, 15, 0, tzinfo=UTC),
        prev_close=Decimal(8),
    )
    return Message(quote_channel(symbol), codec.quote_to_dict(quote))


def test_every_subscriber_of_a_message_gets_the_quote_parsed_for_the_first() -> None:
    first = message("XLF", "10")
    parsed = quote_from_message(first)
    assert (parsed.symbol, parsed.last, parsed.change, parsed.change_percent) == (
        "XLF",
        Decimal(10),
        Decimal(2),
        Decimal(25),
    )
    assert quote_from_message(first) is parsed


def test_a_subscriber_behind_the_others_still_gets_its_own_messages_quote() -> None:
    older, newer = message("XLF", "10"), message("XLF", "11")
    assert quote_from_message(older).last == Decimal(10)
    assert quote_from_message(newer).last == Decimal(11)
    assert quote_from_message(message("XLK", "20")).last == Decimal(20)
    assert quote_from_message(older).last == Decimal(10)
