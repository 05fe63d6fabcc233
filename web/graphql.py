"""The /graphql endpoint: HTTP (POST and GET) and WebSocket (graphql-transport-ws only)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.websockets import WebSocket
from starlette.websockets import WebSocketDisconnected as SendAfterClose
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema import BaseSchema
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.types.unset import UnsetType

from dataloaders import build_loaders
from domain.auth.service import Client
from kianax.logs import request_id_var
from kianax.wiring import Services
from schema.context import Context
from web.auth import ANONYMOUS, Authentication, authenticate, bearer
from web.playground import render_playground

log = logging.getLogger(__name__)


class _WebSocket(ASGIWebSocketAdapter):
    async def send_json(self, message: Mapping[str, object]) -> None:
        try:
            await super().send_json(message)
        except SendAfterClose as exc:
            # Starlette refuses every send after one failed (or after a close): the
            # client is gone just as when the failed send raised WebSocketDisconnect.
            raise WebSocketDisconnected from exc


class _TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    async def handle_task_exception(self, error: Exception) -> None:
        if isinstance(error, WebSocketDisconnected):
            # A client that goes away while its subscription sends is normal, not an
            # error; strawberry would log each one at ERROR with a traceback (bench F9).
            log.debug("subscriber disconnected while a message was sent to it")
            return
        await super().handle_task_exception(error)


class KianaxGraphQL(GraphQL[Context, None]):
    websocket_adapter_class = _WebSocket
    graphql_transport_ws_handler_class = _TransportWSHandler

    def __init__(self, schema: BaseSchema) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql",  # rendered by render_graphql_ide, from our own assets
            allow_queries_via_get=True,
            keep_alive=True,
            keep_alive_interval=15,
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
            connection_init_wait_timeout=timedelta(seconds=10),
            max_subscriptions_per_connection=100,
        )
        self._services: Services | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the GraphQL endpoint is used before the app started")
        return self._services

    @services.setter
    def services(self, value: Services) -> None:
        self._services = value

    def _context(self, auth: Authentication, client: Client) -> Context:
        svc = self.services
        return Context(
            settings=svc.settings,
            db=svc.db,
            redis=svc.redis,
            broadcast=svc.broadcast,
            market=svc.market,
            quote_demand=svc.quote_demand,
            trading=svc.trading,
            agents=svc.agents,
            brokers=svc.brokers,
            loaders=build_loaders(svc.db, auth.actor, svc.market, svc.agents),
            auth=svc.auth,
            client=client,
            request_id=request_id_var.get() or "",
            actor=auth.actor,
            auth_error=auth.error,
        )

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        client = Client(
            ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
        )
        if isinstance(request, WebSocket):
            # The credential arrives later, in connection_init (see on_ws_connect).
            return self._context(ANONYMOUS, client)
        credential = bearer(request.headers.get("authorization"))
        return self._context(await authenticate(self.services, credential), client)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params: dict[str, Any] = context.connection_params or {}
        raw = params.get("authorization") or params.get("Authorization")
        if raw is None:
            return None  # anonymous: market data only
        auth = await authenticate(self.services, bearer(str(raw)) or str(raw))
        if auth.actor is None:
            raise ConnectionRejectionError({"reason": auth.error})
        context.actor = auth.actor
        context.loaders = build_loaders(
            self.services.db, auth.actor, self.services.market, self.services.agents
        )
        return None

    def decode_json(self, data: str | bytes) -> object:
        if isinstance(data, bytes):
            try:
                data = data.decode()
            except UnicodeDecodeError as exc:
                # Surfaces as "Unable to parse request body as JSON" (400), not a 500.
                raise json.JSONDecodeError("request body is not UTF-8", "", exc.start) from exc
        return json.loads(data)

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        return HTMLResponse(render_playground(graphql_path=request.url.path))
