"""`kianax run`: one foreground command for a whole Kianax on one machine.

Starts embedded PostgreSQL and Redis when no URLs are configured, migrates, then runs the API,
one arq worker and the market feed as child processes sharing those servers. Ctrl-C (or
SIGTERM) stops the children first, then the embedded servers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from kianax.bootstrap import ensure_demo_account
from kianax.migrate import migrate
from kianax.settings import Settings

log = logging.getLogger("kianax.run")
CHILDREN = ("api", "worker", "feed")
STOP_TIMEOUT = 15.0


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[dict[str, str]]:
    """Yields the KIANAX_* URLs to use, starting embedded servers for whatever is unset."""
    from kianax import embedded

    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if not settings.database_url:
            log.info("starting embedded PostgreSQL", extra={"dir": str(settings.home / "postgres")})
            pg = embedded.start_postgres(settings.home / "postgres")
            stack.callback(pg.stop)
            env["KIANAX_DATABASE_URL"] = pg.url
        if not settings.redis_url:
            log.info("starting embedded Redis", extra={"dir": str(settings.home / "redis")})
            redis = embedded.start_redis(settings.home / "redis")
            stack.callback(redis.stop)
            env["KIANAX_REDIS_URL"] = redis.url
        yield env


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_all(settings: Settings) -> int:
    settings.home.mkdir(parents=True, exist_ok=True)
    # SIGTERM behaves like Ctrl-C so that the `finally` blocks below always run.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    children: list[subprocess.Popen[bytes]] = []
    try:
        with embedded_servers(settings) as urls:
            env = {**os.environ, **urls}
            if settings.simulated_time_start and not settings.simulated_time_anchor:
                env["KIANAX_SIMULATED_TIME_ANCHOR"] = datetime.now(UTC).isoformat()
            configured = settings.model_copy(
                update={
                    "database_url": env.get("KIANAX_DATABASE_URL"),
                    "redis_url": env.get("KIANAX_REDIS_URL"),
                }
            )
            try:
                migrate(configured)
                ensure_demo_account(configured)
                for name in CHILDREN:
                    children.append(
                        subprocess.Popen([sys.executable, "-m", "kianax", name], env=env)  # noqa: S603
                    )
                print(
                    f"\n  Kianax is starting at {configured.url}\n"
                    f"  Playground: {configured.url}/graphql   (Ctrl-C stops everything)\n",
                    flush=True,
                )
                while all(child.poll() is None for child in children):
                    time.sleep(0.5)
                exited = [
                    n for n, c in zip(CHILDREN, children, strict=True) if c.poll() is not None
                ]
                log.error("a process exited; stopping the rest", extra={"exited": exited})
                return 1
            finally:
                # Children first: the embedded servers they use stop when this block exits.
                _stop(children)
    except KeyboardInterrupt:
        log.info("stopped")
        return 0
