"""The Starlette application: /graphql, health, and the playground's static assets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from domain.market.models import MarketDataProvider
from kianax.settings import Settings
from kianax.wiring import services
from schema.root import build_schema
from web.graphql import KianaxGraphQL
from web.health import healthz, readyz
from web.middleware import RequestIdMiddleware
from web.playground import STATIC_DIR


def create_app(settings: Settings, *, provider: MarketDataProvider | None = None) -> Starlette:
    schema = build_schema(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_tokens=settings.graphql_max_tokens,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with services(settings, provider=provider) as svc:
            app.state.services = svc
            graphql.services = svc
            yield

    graphql = KianaxGraphQL(schema)
    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(RequestIdMiddleware)],
        lifespan=lifespan,
    )
