"""Broker jobs: submitting and canceling orders at a user's broker, and reconciliation.

Each job is idempotent -- it looks at the order or connection as it is now and does only
what is still to do -- so arq's retries and a duplicate enqueue are harmless.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from arq import ArqRedis, Retry
from arq.worker import func

from domain.brokers.service import BrokerService, JobOutcome

log = logging.getLogger(__name__)

SUBMIT = "submit_broker_order"
CANCEL = "cancel_broker_order"
RECONCILE = "reconcile_broker"
# Every reconciliation of one connection in one such slot shares a job id, so a slow
# run is never joined by a second one.
RECONCILE_SLOT_SECONDS = 300
CANCEL_TRIES = 6


def _brokers(ctx: dict[str, Any]) -> BrokerService:
    brokers: BrokerService = ctx["services"].brokers
    return brokers


async def submit_broker_order(ctx: dict[str, Any], user_id: str, order_id: str) -> str:
    brokers = _brokers(ctx)
    job_try: int = ctx["job_try"]
    outcome = await brokers.submit_order(
        uuid.UUID(user_id), uuid.UUID(order_id), final_attempt=job_try >= brokers.submit_tries
    )
    if outcome is JobOutcome.RETRY:
        raise Retry(defer=brokers.retry_delay(job_try))
    return outcome.value


async def cancel_broker_order(ctx: dict[str, Any], user_id: str, order_id: str) -> str:
    brokers = _brokers(ctx)
    job_try: int = ctx["job_try"]
    outcome = await brokers.cancel_order(uuid.UUID(user_id), uuid.UUID(order_id))
    if outcome is JobOutcome.RETRY:
        if job_try < CANCEL_TRIES:
            raise Retry(defer=brokers.retry_delay(job_try))
        # The order stays open: the user sees it so and may cancel again.
        log.error("order %s: the broker could not be reached to cancel it", order_id)
    return outcome.value


async def reconcile_broker(ctx: dict[str, Any], user_id: str, connection_id: str) -> int | None:
    """The number of corrections made; None when the connection is gone."""
    result = await _brokers(ctx).reconcile(uuid.UUID(user_id), uuid.UUID(connection_id))
    return None if result is None else len(result.corrections)


async def reconcile_brokers(ctx: dict[str, Any]) -> int:
    """Cron: one reconciliation job per active connection, so they run in parallel and one
    slow broker account holds up no other."""
    pool: ArqRedis = ctx["redis"]
    slot = int(datetime.now(UTC).timestamp()) // RECONCILE_SLOT_SECONDS
    connections = await _brokers(ctx).active_connections()
    for user_id, connection_id in connections:
        await pool.enqueue_job(
            RECONCILE,
            str(user_id),
            str(connection_id),
            _job_id=f"broker-reconcile:{connection_id}:{slot}",
        )
    return len(connections)


FUNCTIONS = [
    # Tries beyond `submit_tries` never start: the last one resolves the order itself.
    func(submit_broker_order, name=SUBMIT, max_tries=100),
    func(cancel_broker_order, name=CANCEL, max_tries=100),
    func(reconcile_broker, name=RECONCILE, max_tries=1),
]


class BrokerJobs:
    """`BrokerOrderQueue` over arq."""

    def __init__(self, pool: ArqRedis, *, queue_name: str | None = None) -> None:
        self.pool = pool
        self.queue_name = queue_name

    async def submit(self, user_id: uuid.UUID, order_id: uuid.UUID) -> None:
        # The job id is the order's: enqueueing it twice runs it once.
        await self._enqueue(SUBMIT, user_id, order_id, f"broker-submit:{order_id}")

    async def cancel(self, user_id: uuid.UUID, order_id: uuid.UUID) -> None:
        # No fixed id: a user may ask again after a cancel that could not be delivered.
        await self._enqueue(CANCEL, user_id, order_id, None)

    async def _enqueue(
        self, function: str, user_id: uuid.UUID, order_id: uuid.UUID, job_id: str | None
    ) -> None:
        try:
            await self.pool.enqueue_job(
                function, str(user_id), str(order_id), _job_id=job_id, _queue_name=self.queue_name
            )
        except Exception:
            # The order is committed; the request must not fail after the fact. A NEW order
            # never sent is found by reconciliation (and rejected as never received).
            log.exception("could not enqueue %s for order %s", function, order_id)
