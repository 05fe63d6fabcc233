from __future__ import annotations

import strawberry

from resolvers import brokers
from schema import brokers as types


@strawberry.type
class BrokerQuery:
    broker_connections: list[types.BrokerConnection] = strawberry.field(
        resolver=brokers.broker_connections
    )


@strawberry.type
class BrokerMutation:
    connect_broker: types.ConnectBrokerResult = strawberry.mutation(
        resolver=brokers.connect_broker,
        description="Verify API keys with the broker, then store them encrypted. A LIVE "
        "connection needs a current two-factor code when 2FA is on.",
    )
    disconnect_broker: bool = strawberry.mutation(
        resolver=brokers.disconnect_broker,
        description="Erase the keys and stop trading through them; the account's history "
        "stays. False when there is no such connected account.",
    )
    sync_broker: types.SyncBrokerResult = strawberry.mutation(
        resolver=brokers.sync_broker,
        description="Reconcile orders, positions and cash with the broker now.",
    )
