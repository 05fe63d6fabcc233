"""Password rules and hashing (Argon2id at OWASP's recommended parameters)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from domain.auth.common_passwords import COMMON_PASSWORDS

MIN_LENGTH = 10
MAX_LENGTH = 256  # long enough for passphrases, short enough that hashing cannot be abused

# OWASP Password Storage Cheat Sheet: Argon2id, m=19 MiB, t=2, p=1.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the email is unknown, so both paths cost the same time.
_DUMMY_HASH = _hasher.hash("kianax-timing-equalizer")


def password_problem(password: str, *, email: str | None = None) -> str | None:
    if len(password) < MIN_LENGTH:
        return f"use at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"use at most {MAX_LENGTH} characters"
    try:
        password.encode()
    except UnicodeEncodeError:
        return "the password contains characters that are not valid text"
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or len(set(password)) < 4:
        return "this password is too common; choose another"
    if email and lowered == email.lower():
        return "the password must not be your email address"
    return None


async def hash_password(password: str) -> str:
    # Hashing takes tens of milliseconds of CPU; keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored_hash: str | None, password: str) -> tuple[bool, str | None]:
    """(matches, upgraded hash when the stored one used older parameters)."""

    def check() -> tuple[bool, str | None]:
        try:
            _hasher.verify(stored_hash or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False, None
        if stored_hash is None:
            return False, None
        if _hasher.check_needs_rehash(stored_hash):
            return True, _hasher.hash(password)
        return True, None

    return await asyncio.to_thread(check)
