"""Embedded PostgreSQL / Valkey: start, persist across restarts, recover from crashes, stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from kianax.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    postgres_bin_dir,
    redis_server_binary,
    start_postgres,
    start_redis,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="embedded servers: Linux only")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (maybe init) has not reaped it


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


def _libpq(url: str) -> str:
    return url.replace("+asyncpg", "")


def _pg(url: str, *statements: str) -> list[Any]:
    """Run statements on one connection; return the first column of the last one's rows."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(_libpq(url))
        try:
            rows: list[Any] = []
            for sql in statements:
                rows = [r[0] for r in await conn.fetch(sql)]
            return rows
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A private temporary directory, deliberately not pytest's own tmp_path.

    As root the embedded postgres runs as another user that must traverse to its data
    directory (o+x is added to the parents). Any other pytest session started as root resets
    /tmp/pytest-of-root to 0700 (and prunes old runs), which would pull the rug out from
    under a running server, so these tests keep out of that tree.
    """
    path = Path(tempfile.mkdtemp(prefix="kianax-embedded-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stopper(tmp_path: Path) -> Iterator[list[EmbeddedPostgres | EmbeddedRedis]]:
    """Servers appended here are stopped even when the test fails (before tmp_path goes)."""
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    yield servers
    for server in reversed(servers):
        server.stop()


# --------------------------------------------------------------------------- postgres


def test_postgres_persists_across_restart_and_app_role_connects(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    pg = start_postgres(tmp_path / "pg")
    stopper.append(pg)
    assert pg.url.startswith("postgresql+asyncpg://postgres@/kianax?host=/")
    assert pg.owned
    assert _pg(pg.url, "select 1") == [1]
    _pg(
        pg.url,
        "create table notes (body text)",
        "insert into notes values ('survives restarts')",
        "create role kianax_app login password 'app-secret' nosuperuser nobypassrls",
        "grant select on notes to kianax_app",
    )
    pid = pg.pid
    pg.stop()
    _wait_dead(pid, timeout=1)
    assert not (pg.pgdata / "postmaster.pid").exists()
    with pytest.raises(OSError):
        _pg(pg.url, "select 1")
    pg.stop()  # second stop is harmless

    again = start_postgres(tmp_path / "pg")
    stopper.append(again)
    assert again.url == pg.url
    assert again.pid != pid
    assert _pg(again.url, "select body from notes") == ["survives restarts"]

    # The runtime role connects through the same URL with user/password swapped (as
    # Settings.runtime_database_url does) - via asyncpg directly and via SQLAlchemy.
    app_url = (
        make_url(again.url)
        .set(username="kianax_app", password="app-secret")
        .render_as_string(hide_password=False)
    )
    assert _pg(app_url, "select current_user") == ["kianax_app"]
    assert _pg(app_url, "select current_setting('is_superuser')") == ["off"]

    async def via_sqlalchemy() -> list[str]:
        engine = create_async_engine(app_url)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text("select body from notes"))).scalars())
        finally:
            await engine.dispose()

    assert asyncio.run(via_sqlalchemy()) == ["survives restarts"]

    wrong = make_url(app_url).set(password="wrong").render_as_string(hide_password=False)
    with pytest.raises(asyncpg.InvalidPasswordError):
        _pg(wrong, "select 1")

    # psql (libpq) understands the URL without "+asyncpg" too.
    out = subprocess.run(  # noqa: S603
        [str(postgres_bin_dir() / "psql"), "-X", "-tA", "-d", _libpq(again.url), "-c", "select 7"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "7"


def test_postgres_recovers_after_crash(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    pg = start_postgres(tmp_path / "pg")
    stopper.append(pg)
    _pg(pg.url, "create table t (x int)", "insert into t values (42)")
    os.kill(pg.pid, signal.SIGKILL)  # the supervisor's machine "crashes"
    _wait_dead(pg.pid)
    assert (pg.pgdata / "postmaster.pid").exists()  # left behind

    again = start_postgres(tmp_path / "pg")
    stopper.append(again)
    assert again.owned
    assert _pg(again.url, "select x from t") == [42]


def test_postgres_ignores_stale_pid_of_unrelated_process(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    pg = start_postgres(tmp_path / "pg")
    pg.stop()
    # After a reboot the pid in a leftover postmaster.pid may belong to another process.
    impostor = subprocess.Popen(["sleep", "60"])  # noqa: S607
    try:
        (pg.pgdata / "postmaster.pid").write_text(f"{impostor.pid}\n{pg.pgdata}\n")
        again = start_postgres(tmp_path / "pg")
        stopper.append(again)
        assert _pg(again.url, "select 1") == [1]
        assert impostor.poll() is None  # untouched
    finally:
        impostor.kill()
        impostor.wait()


def test_postgres_second_start_reuses_running_server(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    first = start_postgres(tmp_path / "pg")
    stopper.append(first)
    second = start_postgres(tmp_path / "pg")
    stopper.append(second)
    assert second.pid == first.pid
    assert second.url == first.url
    assert first.owned and not second.owned
    second.stop()  # not the owner: leaves the server up
    assert _pg(first.url, "select 1") == [1]
    first.stop()
    _wait_dead(first.pid)


# --------------------------------------------------------------------------- redis


def test_redis_persists_across_restart(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    server = start_redis(tmp_path / "redis")
    stopper.append(server)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url)
    client.set("greeting", "hello")
    client.close()
    pid = server.pid
    server.stop()
    _wait_dead(pid, timeout=1)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
    server.stop()  # second stop is harmless

    again = start_redis(tmp_path / "redis")
    stopper.append(again)
    assert again.port == server.port  # stable port
    client = redis.Redis.from_url(again.url)
    assert client.get("greeting") == b"hello"
    client.close()


def test_redis_two_servers_crash_recovery_and_arq(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    one = start_redis(tmp_path / "one")
    stopper.append(one)
    two = start_redis(tmp_path / "two")
    stopper.append(two)
    assert one.port != two.port  # second one falls back to another port

    redis.Redis.from_url(two.url).set("k", "v")
    os.kill(two.pid, signal.SIGKILL)
    _wait_dead(two.pid)
    assert (tmp_path / "two" / "valkey.pid").exists()

    revived = start_redis(tmp_path / "two")
    stopper.append(revived)
    assert revived.owned and revived.pid != two.pid
    assert redis.Redis.from_url(revived.url).get("k") == b"v"

    from arq.connections import RedisSettings, create_pool

    async def arq_ping() -> bool:
        pool = await create_pool(RedisSettings.from_dsn(revived.url))
        try:
            return bool(await pool.ping())
        finally:
            await pool.aclose()

    assert asyncio.run(arq_ping())


def test_redis_second_start_reuses_running_server(
    tmp_path: Path, stopper: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    first = start_redis(tmp_path / "redis")
    stopper.append(first)
    second = start_redis(tmp_path / "redis")
    stopper.append(second)
    assert (second.pid, second.port, second.owned) == (first.pid, first.port, False)
    second.stop()
    assert redis.Redis.from_url(first.url).ping()
    first.stop()
    _wait_dead(first.pid)


def test_redis_server_binary_runs() -> None:
    binary = redis_server_binary()
    out = subprocess.run(  # noqa: S603
        [str(binary), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert "v=" in out
