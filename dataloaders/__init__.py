"""Per-request loaders. Each is built with the actor; a loader keyed by id alone is a leak."""

from __future__ import annotations

from dataclasses import dataclass

from dataloaders.agent_by_id import AgentByIdLoader
from dataloaders.agent_stats_by_agent_id import AgentStatsByAgentIdLoader
from dataloaders.allocation_by_agent_id import AllocationByAgentIdLoader
from dataloaders.execution_by_id import ExecutionByIdLoader
from dataloaders.fills_by_order_id import FillsByOrderIdLoader
from dataloaders.order_by_id import OrderByIdLoader
from dataloaders.quote_by_symbol import QuoteBySymbolLoader
from dataloaders.trigger_by_id import TriggerByIdLoader
from dataloaders.triggers_by_agent_id import TriggersByAgentIdLoader
from db.engine import Database
from domain.agents.service import AgentService
from domain.auth.actor import Actor
from domain.market.service import MarketService


@dataclass
class Loaders:
    quote_by_symbol: QuoteBySymbolLoader
    order_by_id: OrderByIdLoader
    fills_by_order_id: FillsByOrderIdLoader
    agent_by_id: AgentByIdLoader
    trigger_by_id: TriggerByIdLoader
    triggers_by_agent_id: TriggersByAgentIdLoader
    agent_stats_by_agent_id: AgentStatsByAgentIdLoader
    allocation_by_agent_id: AllocationByAgentIdLoader
    execution_by_id: ExecutionByIdLoader


def build_loaders(
    db: Database, actor: Actor | None, market: MarketService, agents: AgentService
) -> Loaders:
    return Loaders(
        quote_by_symbol=QuoteBySymbolLoader(market),
        order_by_id=OrderByIdLoader(db, actor),
        fills_by_order_id=FillsByOrderIdLoader(db, actor),
        agent_by_id=AgentByIdLoader(db, actor),
        trigger_by_id=TriggerByIdLoader(db, actor),
        triggers_by_agent_id=TriggersByAgentIdLoader(db, actor),
        agent_stats_by_agent_id=AgentStatsByAgentIdLoader(db, actor, agents),
        allocation_by_agent_id=AllocationByAgentIdLoader(db, actor, agents),
        execution_by_id=ExecutionByIdLoader(db, actor),
    )
