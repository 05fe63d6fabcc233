"""`kianax run | api | worker | feed | migrate | schema | audit-verify | rewrap-keys`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from kianax.logs import configure_logging
from kianax.settings import Settings, load_settings

log = logging.getLogger("kianax")
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema.graphql"


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    return settings


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    settings = _settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=True,
        ws="websockets-sansio",
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from arq import run_worker

    from jobs.worker import WorkerSettings, redis_settings

    settings = _settings()
    if not settings.redis_url:
        raise SystemExit("KIANAX_REDIS_URL is not set")
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=redis_settings(settings.redis_url),
        queue_name=settings.job_queue,
    )
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from domain.market.feed import Feed
    from kianax.wiring import services

    settings = _settings()

    async def main() -> None:
        async with services(settings) as svc:
            await Feed(svc.provider, svc.redis, svc.broadcast).run()

    with _graceful():
        asyncio.run(main())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from kianax.migrate import migrate

    migrate(_settings())
    log.info("database migrated")
    return 0


def schema_sdl() -> str:
    from schema.root import build_schema

    return build_schema().as_str() + "\n"


def cmd_schema(args: argparse.Namespace) -> int:
    sdl = schema_sdl()
    if args.check:
        if not SCHEMA_FILE.exists() or SCHEMA_FILE.read_text() != sdl:
            print("schema.graphql differs from the code: run `kianax schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(sdl)
    print(f"wrote {SCHEMA_FILE}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from domain.audit import verify_chain

    settings = _settings()
    if not settings.database_url:
        raise SystemExit("KIANAX_DATABASE_URL is not set")
    owner_url = settings.database_url

    async def main() -> int:
        engine = create_async_engine(owner_url)
        try:
            async with AsyncSession(engine) as session:
                report = await verify_chain(session)
        finally:
            await engine.dispose()
        if report.ok:
            print(f"audit chain verified: {report.rows} events")
            return 0
        print(f"audit chain BROKEN at seq {report.broken_at}: {report.reason}", file=sys.stderr)
        return 1

    return asyncio.run(main())


def cmd_rewrap_keys(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from domain.brokers.crypto import KeyRing
    from domain.brokers.keys import rewrap_all

    settings = _settings()
    if not settings.database_url:
        raise SystemExit("KIANAX_DATABASE_URL is not set")
    owner_url = settings.database_url
    ring = KeyRing.from_base64(settings.master_key_ring)

    async def main() -> int:
        engine = create_async_engine(owner_url)
        try:
            async with AsyncSession(engine) as session, session.begin():
                report = await rewrap_all(session, ring)
        finally:
            await engine.dispose()
        for table, count in report.items():
            print(
                f"{table}: {count.rewrapped} re-wrapped under {ring.current_id!r}, "
                f"{count.already_current} already were, {count.failed} failed"
            )
        return 1 if any(count.failed for count in report.values()) else 0

    return asyncio.run(main())


class _graceful:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks run on a polite stop."""

    def __enter__(self) -> None:
        signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is KeyboardInterrupt

    @staticmethod
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    from kianax.supervisor import run_all

    return run_all(_settings())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kianax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="everything on this machine: database, redis, api, worker, feed")
    sub.add_parser("api", help="the GraphQL API server")
    sub.add_parser("worker", help="an arq worker")
    sub.add_parser("feed", help="the market-data feed (run exactly one)")
    sub.add_parser("migrate", help="apply database migrations")
    schema = sub.add_parser("schema", help="export schema.graphql from the code")
    schema.add_argument("--check", action="store_true", help="fail if the file is out of date")
    sub.add_parser("audit-verify", help="verify the audit log's hash chain")
    sub.add_parser(
        "rewrap-keys", help="re-wrap every stored secret's data key under the current master key"
    )
    args = parser.parse_args(argv)
    handler = {
        "run": cmd_run,
        "api": cmd_api,
        "worker": cmd_worker,
        "feed": cmd_feed,
        "migrate": cmd_migrate,
        "schema": cmd_schema,
        "audit-verify": cmd_audit_verify,
        "rewrap-keys": cmd_rewrap_keys,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
