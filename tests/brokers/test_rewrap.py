"""`kianax rewrap-keys`: every stored data key moves under the current master key.

It runs over every row of a database, so it gets a database of its own here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from domain.brokers.crypto import DecryptionFailed, KeyRing, SealedSecret, open_sealed, seal
from kianax.migrate import migrate
from kianax.settings import Settings
from tests.conftest import REPO

NEW_KEY = base64.b64encode(b"n" * 32).decode()


@dataclass
class Scratch:
    url: str
    engine: AsyncEngine
    dev_keys: str  # the KIANAX_MASTER_KEYS everything was sealed with


@pytest.fixture
async def scratch(settings: Settings) -> AsyncIterator[Scratch]:
    assert settings.database_url
    server = make_url(settings.database_url)
    name = f"kianax_rewrap_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    await asyncio.to_thread(migrate, settings.model_copy(update={"database_url": url}))
    engine = create_async_engine(url)
    try:
        yield Scratch(url, engine, settings.master_keys)
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def _seed(scratch: Scratch, ring: KeyRing) -> list[tuple[str, uuid.UUID, uuid.UUID]]:
    """Two users, each with a broker connection and a TOTP secret, sealed under `ring`."""
    rows: list[tuple[str, uuid.UUID, uuid.UUID]] = []
    async with scratch.engine.begin() as connection:
        for _ in range(2):
            user_id, connection_id = uuid.uuid4(), uuid.uuid4()
            await connection.execute(
                text("INSERT INTO users (id, email, password_hash) VALUES (:id, :e, 'x')"),
                {"id": user_id, "e": f"{user_id}@example.com"},
            )
            keys = seal(
                ring,
                json.dumps({"keyId": "PKREWRAP0001", "secret": "s3cret-value"}),
                user_id=user_id,
                connection_id=connection_id,
            )
            await connection.execute(
                text(
                    "INSERT INTO broker_connections (id, user_id, provider, environment, status, "
                    "key_hint, key_id, wrapped_key, ciphertext) VALUES (:id, :u, 'ALPACA', "
                    "'PAPER', 'connected', '…0001', :k, :w, :c)"
                ),
                {
                    "id": connection_id,
                    "u": user_id,
                    "k": keys.key_id,
                    "w": keys.wrapped_key,
                    "c": keys.ciphertext,
                },
            )
            totp = seal(ring, "JBSWY3DPEHPK3PXP", user_id=user_id, connection_id=user_id)
            await connection.execute(
                text(
                    "INSERT INTO totp_secrets (user_id, key_id, wrapped_key, ciphertext) "
                    "VALUES (:u, :k, :w, :c)"
                ),
                {"u": user_id, "k": totp.key_id, "w": totp.wrapped_key, "c": totp.ciphertext},
            )
            rows += [
                ("broker_connections", user_id, connection_id),
                ("totp_secrets", user_id, user_id),
            ]
    return rows


async def _sealed(scratch: Scratch, table: str, user_id: uuid.UUID) -> SealedSecret:
    async with scratch.engine.connect() as connection:
        row = (
            await connection.execute(
                text(f"SELECT key_id, wrapped_key, ciphertext FROM {table} WHERE user_id = :u"),  # noqa: S608
                {"u": user_id},
            )
        ).one()
    return SealedSecret(row[0], row[1], row[2])


def _rewrap(scratch: Scratch, master_keys: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KIANAX_DATABASE_URL": scratch.url,
        "KIANAX_MASTER_KEYS": master_keys,
        "KIANAX_LOG_JSON": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "kianax", "rewrap-keys"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_rewrap_keys_moves_every_data_key_to_the_current_master_key(
    scratch: Scratch,
) -> None:
    old_ring = KeyRing.from_base64(_ring(scratch.dev_keys))
    rows = await _seed(scratch, old_ring)
    rotated = f"new:{NEW_KEY},{scratch.dev_keys}"

    done = _rewrap(scratch, rotated)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "broker_connections: 2 re-wrapped under 'new', 0 already were, 0 failed",
        "totp_secrets: 2 re-wrapped under 'new', 0 already were, 0 failed",
    ]
    assert "s3cret" not in done.stdout + done.stderr
    new_only = KeyRing.from_base64({"new": NEW_KEY})
    for table, user_id, binding_id in rows:
        sealed = await _sealed(scratch, table, user_id)
        assert sealed.key_id == "new"
        # The old master key can now be dropped: the new one alone opens every secret.
        opened = open_sealed(new_only, sealed, user_id=user_id, connection_id=binding_id)
        assert "s3cret-value" in opened or opened == "JBSWY3DPEHPK3PXP"
        with pytest.raises(DecryptionFailed):
            open_sealed(old_ring, sealed, user_id=user_id, connection_id=binding_id)

    again = _rewrap(scratch, rotated)
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == (
        "broker_connections: 0 re-wrapped under 'new', 2 already were, 0 failed"
    )


async def test_rewrap_keys_reports_a_row_no_master_key_opens(scratch: Scratch) -> None:
    rows = await _seed(scratch, KeyRing.from_base64(_ring(scratch.dev_keys)))
    _, user_id, _ = rows[0]
    async with scratch.engine.begin() as connection:
        # Moved onto another user's row: bound to the wrong user, it no longer unwraps.
        await connection.execute(
            text(
                "UPDATE broker_connections SET wrapped_key = "
                "(SELECT wrapped_key FROM broker_connections WHERE user_id <> :u LIMIT 1) "
                "WHERE user_id = :u"
            ),
            {"u": user_id},
        )

    done = _rewrap(scratch, f"new:{NEW_KEY},{scratch.dev_keys}")

    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "broker_connections: 1 re-wrapped under 'new', 0 already were, 1 failed"
    )
    assert (await _sealed(scratch, "broker_connections", user_id)).key_id != "new"


def _ring(master_keys: str) -> dict[str, str]:
    return dict(item.split(":", 1) for item in master_keys.split(","))
