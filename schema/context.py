"""The per-request (per WebSocket connection) context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from strawberry.types import Info as StrawberryInfo

from domain.auth.actor import Actor, Scope
from schema.errors import Forbidden, Unauthenticated

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from dataloaders import Loaders
    from db.engine import Database
    from domain.agents.service import AgentService
    from domain.auth.service import AuthService, Client
    from domain.brokers.service import BrokerService
    from domain.market.feed import QuoteDemand
    from domain.market.service import MarketService
    from domain.trading.service import TradingService
    from kianax.broadcast import Broadcast
    from kianax.settings import Settings


@dataclass
class Context:
    settings: Settings
    db: Database
    redis: Redis
    broadcast: Broadcast
    market: MarketService
    quote_demand: QuoteDemand
    trading: TradingService
    agents: AgentService
    brokers: BrokerService
    loaders: Loaders
    auth: AuthService
    client: Client
    request_id: str
    actor: Actor | None = None
    # Why a presented credential was not accepted, so UNAUTHENTICATED can say so.
    auth_error: str | None = None
    connection_params: dict[str, Any] | None = field(default=None)

    def require_actor(self, scope: Scope | None = None) -> Actor:
        if self.actor is None:
            raise Unauthenticated(self.auth_error or "sign in first")
        if scope is not None and not self.actor.can(scope):
            raise Forbidden(f"this token lacks the {scope.value} scope")
        return self.actor


Info = StrawberryInfo[Context, None]
