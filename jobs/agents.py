"""Agent jobs: one run per (agent, event), a per-user cap on runs at once, and the minute
cron of TIME triggers. Thin: the work is domain.agents.execution and .schedule."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from arq.worker import Retry
from redis.asyncio import Redis

from domain.agents.execution import RunRequest
from domain.agents.schedule import due_time_runs

log = logging.getLogger(__name__)

# Fairness: one user's hundred agents firing at once take this many worker slots at most;
# the rest wait their turn while other users' runs go ahead.
MAX_RUNS_PER_USER = 2
RUN_TIMEOUT_SECONDS = 150  # a run's deadline for its model is MODEL_DEADLINE_SECONDS (90)
BUSY_RETRY_SECONDS = 3
# How often a run may find its user at the cap before it is given up (recorded as
# SKIPPED): about ten minutes, after which the event it answers is stale.
MAX_TRIES = 200

# Take a slot if fewer than the cap are held; slots are leases, so the slot of a worker
# that died frees itself when its lease (the run's timeout) ends.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


class RunSlots:
    """A counting semaphore per user in Redis, shared by every worker."""

    def __init__(
        self, redis: Redis, *, cap: int = MAX_RUNS_PER_USER, lease: int = RUN_TIMEOUT_SECONDS
    ) -> None:
        self.redis = redis
        self.cap = cap
        self.lease = lease

    @staticmethod
    def key(user_id: uuid.UUID) -> str:
        return f"kianax:agent-runs:{user_id}"

    async def acquire(self, user_id: uuid.UUID, holder: str) -> bool:
        now = await self._now()
        taken = await self.redis.eval(  # type: ignore[misc]
            _ACQUIRE,
            1,
            self.key(user_id),
            str(now),
            str(now + self.lease),
            holder,
            str(self.cap),
            str(self.lease * 2),
        )
        return bool(taken)

    async def release(self, user_id: uuid.UUID, holder: str) -> None:
        await self.redis.zrem(self.key(user_id), holder)

    async def _now(self) -> float:
        # Redis's clock, so every worker measures leases the same way.
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1_000_000


async def run_agent(ctx: dict[str, Any], run: dict[str, Any]) -> str | None:
    """Run one agent for one event; the execution id. A retry of the same job (a crashed
    worker's, or one that waited for a slot) finds the same execution row."""
    svc = ctx["services"]
    request = RunRequest.from_job(run)
    slots = RunSlots(svc.redis)
    if not await slots.acquire(request.user_id, request.job_id):
        if ctx.get("job_try", 1) >= MAX_TRIES:
            skipped = await svc.agents.executor.skip(
                request, "too many of this user's runs were waiting", "busy"
            )
            return None if skipped is None else str(skipped)
        raise Retry(defer=BUSY_RETRY_SECONDS)
    try:
        execution_id = await svc.agents.executor.run(request)
    finally:
        await slots.release(request.user_id, request.job_id)
    return None if execution_id is None else str(execution_id)


async def schedule_time_triggers(ctx: dict[str, Any]) -> int:
    """Every minute: queue the runs of the TIME triggers due in the tick's minute."""
    svc = ctx["services"]
    # The minute the tick was scheduled for (arq's score), not the one it starts in: a tick
    # that starts late behind a burst of runs must still fire its own minute's triggers.
    late = max(time.time() - ctx["score"] / 1000, 0.0) if "score" in ctx else 0.0
    runs = await due_time_runs(svc.db, svc.trading.clock() - timedelta(seconds=late))
    for request in runs:
        await svc.agents.enqueue_run(request)
    if runs:
        log.info("time triggers fired", extra={"runs": len(runs)})
    return len(runs)
