"""/healthz: the process answers. /readyz: it can reach PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from kianax.wiring import Services

log = logging.getLogger(__name__)
CHECK_TIMEOUT = 2.0


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _database(svc: Services) -> None:
    async with svc.db.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _redis(svc: Services) -> None:
    await svc.redis.ping()


async def readyz(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    checks: dict[str, str] = {}
    for name, check in (("database", _database), ("redis", _redis)):
        try:
            await asyncio.wait_for(check(svc), CHECK_TIMEOUT)
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
            checks[name] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
