"""Envelope encryption for broker credentials.

Each connection's secret is encrypted with its own random 256-bit data key (AES-256-GCM),
and that data key is stored wrapped (AES-256-GCM again) by a master key from the key ring.
Rotating the master key then means re-wrapping 32-byte data keys (`rewrap`), never
touching the secrets themselves, and a leaked database row is useless without the ring.

Both layers authenticate the owning user id and connection id as associated data, so a
ciphertext copied into another user's or another connection's row does not decrypt.

Stored layout of `wrapped_key` and `ciphertext`: one format-version byte, the 96-bit
nonce, then the AES-GCM output (ciphertext and 16-byte tag).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DecryptionFailed",
    "KeyRing",
    "SealedSecret",
    "key_hint",
    "open_sealed",
    "rewrap",
    "seal",
]

_FORMAT_V1 = b"\x01"
_KEY_BYTES = 32
_NONCE_BYTES = 12
# Distinct purposes, so a wrapped key can never be mistaken for a secret or the other way.
_SECRET_PURPOSE = b"kianax/broker-credential/secret/v1\x00"
_DATA_KEY_PURPOSE = b"kianax/broker-credential/data-key/v1\x00"
# Below this length the last four characters would give away too much of the secret.
_MIN_HINTABLE_LENGTH = 8


class DecryptionFailed(Exception):
    """The sealed secret cannot be opened: wrong row, unknown master key, or tampered bytes.

    Deliberately says nothing more, so that it cannot help anyone probing the ciphertexts.
    """

    def __init__(self) -> None:
        super().__init__("the stored secret could not be decrypted")


@dataclass(frozen=True)
class SealedSecret:
    key_id: str  # the master key that wrapped `wrapped_key`
    wrapped_key: bytes
    ciphertext: bytes


class KeyRing:
    """Master keys by id: `current_id` wraps new data keys, every key unwraps."""

    def __init__(self, keys: Mapping[str, bytes], *, current_id: str | None = None) -> None:
        if not keys:
            raise ValueError("the master key ring is empty")
        for key_id, key in keys.items():
            if not key_id:
                raise ValueError("a master key id must not be empty")
            if len(key) != _KEY_BYTES:
                raise ValueError(
                    f"master key {key_id!r} must be {_KEY_BYTES} bytes, got {len(key)}"
                )
        current = next(iter(keys)) if current_id is None else current_id
        if current not in keys:
            raise ValueError(f"the current master key {current!r} is not in the ring")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current_id = current

    @classmethod
    def from_base64(cls, ring: Mapping[str, str]) -> KeyRing:
        """The ring as settings hold it (`Settings.master_key_ring`): the first id is current."""
        keys: dict[str, bytes] = {}
        for key_id, encoded in ring.items():
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                # Never echo the value: it is key material.
                raise ValueError(
                    f"master key {key_id!r} is not valid base64 (expected 32 random bytes)"
                ) from None
        return cls(keys)

    @property
    def current_id(self) -> str:
        return self._current_id

    def __repr__(self) -> str:
        return f"KeyRing(ids={sorted(self._keys)}, current_id={self._current_id!r})"

    def _wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return _encrypt(self._keys[self._current_id], data_key, aad)

    def _unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        master = self._keys.get(key_id)
        if master is None:
            raise DecryptionFailed
        data_key = _decrypt(master, wrapped, aad)
        if len(data_key) != _KEY_BYTES:
            raise DecryptionFailed
        return data_key


def seal(ring: KeyRing, plaintext: str, *, user_id: UUID, connection_id: UUID) -> SealedSecret:
    data_key = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
    ciphertext = _encrypt(AESGCM(data_key), plaintext.encode(), _secret_aad(user_id, connection_id))
    key_id = ring.current_id
    wrapped = ring._wrap(data_key, _data_key_aad(key_id, user_id, connection_id))
    return SealedSecret(key_id=key_id, wrapped_key=wrapped, ciphertext=ciphertext)


def open_sealed(ring: KeyRing, sealed: SealedSecret, *, user_id: UUID, connection_id: UUID) -> str:
    data_key = ring._unwrap(
        sealed.key_id, sealed.wrapped_key, _data_key_aad(sealed.key_id, user_id, connection_id)
    )
    plaintext = _decrypt(AESGCM(data_key), sealed.ciphertext, _secret_aad(user_id, connection_id))
    try:
        return plaintext.decode()
    except UnicodeDecodeError:
        raise DecryptionFailed from None


def rewrap(
    ring: KeyRing, sealed: SealedSecret, *, user_id: UUID, connection_id: UUID
) -> SealedSecret:
    """The same secret ciphertext with its data key wrapped by the ring's current master key.

    A secret already under the current key comes back unchanged, so a rotation job can run
    over every row and stop caring which ones it has done.
    """
    if sealed.key_id == ring.current_id:
        return sealed
    data_key = ring._unwrap(
        sealed.key_id, sealed.wrapped_key, _data_key_aad(sealed.key_id, user_id, connection_id)
    )
    key_id = ring.current_id
    wrapped = ring._wrap(data_key, _data_key_aad(key_id, user_id, connection_id))
    return SealedSecret(key_id=key_id, wrapped_key=wrapped, ciphertext=sealed.ciphertext)


def key_hint(secret: str) -> str:
    """What a user may see of a stored key: "…" and its last four characters."""
    if len(secret) < _MIN_HINTABLE_LENGTH:
        return "…"
    return "…" + secret[-4:]


def _secret_aad(user_id: UUID, connection_id: UUID) -> bytes:
    return _SECRET_PURPOSE + user_id.bytes + connection_id.bytes


def _data_key_aad(key_id: str, user_id: UUID, connection_id: UUID) -> bytes:
    # The UUIDs are fixed-width, so the key id that follows cannot blur into them.
    return _DATA_KEY_PURPOSE + user_id.bytes + connection_id.bytes + key_id.encode()


def _encrypt(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _FORMAT_V1 + nonce + aead.encrypt(nonce, plaintext, aad)


def _decrypt(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    header = len(_FORMAT_V1) + _NONCE_BYTES
    if len(blob) <= header or not blob.startswith(_FORMAT_V1):
        raise DecryptionFailed
    nonce = blob[len(_FORMAT_V1) : header]
    try:
        return aead.decrypt(nonce, blob[header:], aad)
    except InvalidTag:
        raise DecryptionFailed from None
