"""Envelope encryption of broker credentials."""

from __future__ import annotations

import base64
import dataclasses
import os
import uuid

import pytest

from domain.brokers.crypto import (
    DecryptionFailed,
    KeyRing,
    SealedSecret,
    key_hint,
    open_sealed,
    rewrap,
    seal,
)

SECRET = "sk-alpaca-4f7e1c9b2d8a6e3f0c5b7a9d1e2f3a4b"
USER = uuid.UUID("11111111-1111-1111-1111-111111111111")
CONNECTION = uuid.UUID("22222222-2222-2222-2222-222222222222")
OLD_KEY, NEW_KEY = os.urandom(32), os.urandom(32)


def sealed_by(ring: KeyRing) -> SealedSecret:
    return seal(ring, SECRET, user_id=USER, connection_id=CONNECTION)


def opened(ring: KeyRing, sealed: SealedSecret) -> str:
    return open_sealed(ring, sealed, user_id=USER, connection_id=CONNECTION)


def flipped(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


def test_round_trip() -> None:
    ring = KeyRing({"k1": OLD_KEY})
    sealed = sealed_by(ring)
    assert sealed.key_id == "k1"
    assert SECRET.encode() not in sealed.ciphertext
    assert opened(ring, sealed) == SECRET


def test_each_seal_uses_a_fresh_data_key_and_nonce() -> None:
    ring = KeyRing({"k1": OLD_KEY})
    first, second = sealed_by(ring), sealed_by(ring)
    assert first.ciphertext != second.ciphertext
    assert first.wrapped_key != second.wrapped_key


def test_any_tampered_byte_fails() -> None:
    ring = KeyRing({"k1": OLD_KEY})
    sealed = sealed_by(ring)
    for field in ("ciphertext", "wrapped_key"):
        blob: bytes = getattr(sealed, field)
        for index in range(len(blob)):
            with pytest.raises(DecryptionFailed):
                opened(ring, with_blob(sealed, field, flipped(blob, index)))
        for truncated in (b"", blob[:13], blob[:-1]):
            with pytest.raises(DecryptionFailed):
                opened(ring, with_blob(sealed, field, truncated))


def with_blob(sealed: SealedSecret, field: str, blob: bytes) -> SealedSecret:
    if field == "ciphertext":
        return dataclasses.replace(sealed, ciphertext=blob)
    return dataclasses.replace(sealed, wrapped_key=blob)


def test_a_secret_copied_to_another_row_does_not_open() -> None:
    ring = KeyRing({"k1": OLD_KEY})
    sealed = sealed_by(ring)
    with pytest.raises(DecryptionFailed):
        open_sealed(ring, sealed, user_id=uuid.uuid4(), connection_id=CONNECTION)
    with pytest.raises(DecryptionFailed):
        open_sealed(ring, sealed, user_id=USER, connection_id=uuid.uuid4())
    # Nor can the two ids be swapped.
    with pytest.raises(DecryptionFailed):
        open_sealed(ring, sealed, user_id=CONNECTION, connection_id=USER)


def test_the_parts_of_two_rows_cannot_be_mixed() -> None:
    ring = KeyRing({"k1": OLD_KEY})
    mine = sealed_by(ring)
    other = seal(ring, "another-secret-value", user_id=USER, connection_id=CONNECTION)
    with pytest.raises(DecryptionFailed):
        opened(ring, dataclasses.replace(mine, wrapped_key=other.wrapped_key))
    with pytest.raises(DecryptionFailed):
        opened(ring, SealedSecret("k1", wrapped_key=mine.ciphertext, ciphertext=mine.wrapped_key))


def test_rewrap_moves_to_the_current_key_without_touching_the_secret() -> None:
    old_ring = KeyRing({"k1": OLD_KEY})
    sealed = sealed_by(old_ring)
    rotated = KeyRing({"k2": NEW_KEY, "k1": OLD_KEY})
    assert rotated.current_id == "k2"

    moved = rewrap(rotated, sealed, user_id=USER, connection_id=CONNECTION)

    assert moved.key_id == "k2"
    assert moved.ciphertext == sealed.ciphertext
    assert moved.wrapped_key != sealed.wrapped_key
    assert opened(rotated, moved) == SECRET
    # Once every row is re-wrapped, the old master key can leave the ring.
    assert opened(KeyRing({"k2": NEW_KEY}), moved) == SECRET
    assert rewrap(rotated, moved, user_id=USER, connection_id=CONNECTION) is moved


def test_rewrap_checks_the_row() -> None:
    sealed = sealed_by(KeyRing({"k1": OLD_KEY}))
    rotated = KeyRing({"k2": NEW_KEY, "k1": OLD_KEY})
    with pytest.raises(DecryptionFailed):
        rewrap(rotated, sealed, user_id=uuid.uuid4(), connection_id=CONNECTION)


def test_unknown_key_id_fails() -> None:
    sealed = sealed_by(KeyRing({"k1": OLD_KEY}))
    with pytest.raises(DecryptionFailed):
        opened(KeyRing({"k2": NEW_KEY}), sealed)
    # Relabelling the row with another key id does not help either.
    both = KeyRing({"k1": OLD_KEY, "k2": NEW_KEY})
    with pytest.raises(DecryptionFailed):
        opened(both, dataclasses.replace(sealed, key_id="k2"))


def test_errors_say_nothing_about_the_secret() -> None:
    sealed = sealed_by(KeyRing({"k1": OLD_KEY}))
    with pytest.raises(DecryptionFailed) as failure:
        opened(KeyRing({"k1": NEW_KEY}), sealed)
    assert str(failure.value) == "the stored secret could not be decrypted"
    assert failure.value.__cause__ is None
    assert failure.value.__suppress_context__ or failure.value.__context__ is None


def test_key_ring_from_settings() -> None:
    encoded = {"new": base64.b64encode(NEW_KEY).decode(), "old": base64.b64encode(OLD_KEY).decode()}
    ring = KeyRing.from_base64(encoded)
    assert ring.current_id == "new"
    assert opened(KeyRing({"new": NEW_KEY}), sealed_by(ring)) == SECRET
    assert base64.b64encode(NEW_KEY).decode() not in repr(ring)


@pytest.mark.parametrize(
    ("ring", "message"),
    [
        ({"k1": base64.b64encode(b"x" * 31).decode()}, "'k1' must be 32 bytes, got 31"),
        ({"k1": base64.b64encode(b"x" * 33).decode()}, "'k1' must be 32 bytes, got 33"),
        ({"k1": "not base64!"}, "'k1' is not valid base64"),
        ({}, "empty"),
    ],
)
def test_key_ring_refuses_bad_keys(ring: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as failure:
        KeyRing.from_base64(ring)
    for value in ring.values():
        assert value not in str(failure.value)


def test_key_ring_current_id_must_exist() -> None:
    with pytest.raises(ValueError, match="'k9' is not in the ring"):
        KeyRing({"k1": OLD_KEY}, current_id="k9")


def test_key_hint_shows_only_the_last_four_characters() -> None:
    assert key_hint("PKABCDEFGHIJKLMNWXYZ") == "…WXYZ"
    assert key_hint(SECRET) == "…3a4b"
    assert key_hint("short") == "…"
