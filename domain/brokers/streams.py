"""The worker's trade-update streams: one per connected broker account.

Every `refresh_interval` seconds the manager lists the active connections (ids only, across
users), starts a consumer for each new one and stops those that went away. A consumer
applies each event in a transaction scoped to the connection's owner. The broker adapter
reconnects a dropped stream itself, with backoff; what happened while it was down is not
replayed by the broker, and the periodic reconciliation brings it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from domain.brokers.base import Broker, BrokerAuthError
from domain.brokers.service import BrokerService

log = logging.getLogger(__name__)

STREAM_REFUSED = "Alpaca refused the stored API keys for the trade stream; reconnect the account"


class BrokerStreams:
    def __init__(self, brokers: BrokerService, *, refresh_interval: float = 5.0) -> None:
        self.brokers = brokers
        self.refresh_interval = refresh_interval
        self.consumers: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def refresh(self) -> None:
        wanted = {cid: uid for uid, cid in await self.brokers.active_connections()}
        for cid, task in list(self.consumers.items()):
            if cid in wanted and not task.done():
                continue
            # Disconnected (or ended: refused keys, a crash); a working one restarts below.
            del self.consumers[cid]
            await _stop(task)
        for cid, uid in wanted.items():
            if cid in self.consumers:
                continue
            broker = await self.brokers.open_broker(uid, cid)
            if broker is not None:
                self.consumers[cid] = asyncio.create_task(
                    self._consume(uid, cid, broker), name=f"broker-stream:{cid}"
                )

    async def _consume(self, user_id: uuid.UUID, connection_id: uuid.UUID, broker: Broker) -> None:
        try:
            async for event in broker.trade_events():
                try:
                    await self.brokers.apply_event(user_id, connection_id, event)
                except Exception:
                    # One event that cannot be applied must not stop the account's stream;
                    # reconciliation settles that order from the broker's own view.
                    log.exception(
                        "applying a trade event failed", extra={"connection_id": str(connection_id)}
                    )
        except BrokerAuthError:
            await self.brokers.connection_failed(user_id, connection_id, STREAM_REFUSED)

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.refresh()
                except Exception:
                    # The database may be briefly away; the streams already running go on.
                    log.exception("refreshing the broker streams failed")
                await asyncio.sleep(self.refresh_interval)
        finally:
            consumers, self.consumers = list(self.consumers.values()), {}
            for task in consumers:
                await _stop(task)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            log.exception("a broker stream ended with an error")
