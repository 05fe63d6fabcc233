"""TIME triggers: which are due in a given minute. The worker's cron asks every minute."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from db.engine import Database
from db.repositories import agents as repo
from domain.agents.execution import RunRequest
from domain.triggers.spec import TimeConfig, TriggerConfigError, TriggerType, next_fire_time

log = logging.getLogger(__name__)


def scheduled_minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


async def due_time_runs(db: Database, at: datetime) -> list[RunRequest]:
    """The runs of every enabled TIME trigger (of an active agent) whose schedule fires in
    the minute of `at`. The event key is the trigger and that minute, so asking twice for
    the same minute (two workers, a retried cron job) queues each run once."""
    minute = scheduled_minute(at)
    async with db.transaction(None) as uow:
        enabled = await repo.enabled_triggers(uow.session)
    by_user = defaultdict(list)
    for row in enabled:
        if row.type == TriggerType.TIME.value:
            by_user[row.user_id].append(row.trigger_id)
    runs: list[RunRequest] = []
    for user_id, ids in by_user.items():
        # Each user's triggers are read in that user's scope, under row-level security.
        async with db.transaction(user_id) as uow:
            found = await repo.active_triggers(uow.session, user_id, ids)
        for trigger, agent in found:
            try:
                config = TimeConfig.from_json(trigger.config)
                fires = next_fire_time(config, minute - timedelta(seconds=1)) == minute
            except (TriggerConfigError, ValueError):
                log.warning("unreadable time trigger", extra={"trigger_id": str(trigger.id)})
                continue
            cooling = (
                trigger.cooldown_seconds
                and trigger.last_fired_at is not None
                and minute - trigger.last_fired_at < timedelta(seconds=trigger.cooldown_seconds)
            )
            if fires and not cooling:
                runs.append(
                    RunRequest(
                        user_id,
                        agent.id,
                        f"{trigger.id}:{minute:%Y%m%dT%H%MZ}",
                        trigger_id=trigger.id,
                        trigger_type=TriggerType.TIME,
                        detail={"scheduledFor": minute.isoformat()},
                    )
                )
    return runs
