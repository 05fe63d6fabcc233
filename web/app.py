"""The Starlette application: /graphql, health, and the playground's static assets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from domain.market.models import MarketDataProvider
from kianax.settings import Settings
from kianax.wiring import services
from schema.root import build_schema
from web.export import export_fills, export_orders
from web.graphql import KianaxGraphQL
from web.health import healthz, readyz
from web.hooks import receive as receive_webhook
from web.middleware import RequestIdMiddleware
from web.playground import STATIC_DIR


def create_app(
    settings: Settings,
    *,
    provider: MarketDataProvider | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Starlette:
    schema = build_schema(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_tokens=settings.graphql_max_tokens,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with services(settings, provider=provider, clock=clock) as svc:
            app.state.services = svc
            graphql.services = svc
            yield

    graphql = KianaxGraphQL(schema)
    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/export/orders.csv", export_orders),
            Route("/export/fills.csv", export_fills),
            Route("/hooks/{trigger_id}", receive_webhook, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(RequestIdMiddleware)],
        lifespan=lifespan,
    )
