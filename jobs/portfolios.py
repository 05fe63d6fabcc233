"""Equity snapshots between fills: every quarter hour of a session and once at its close,
for every account that holds positions, so a portfolio's history follows the prices and
not only its trades."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from db.repositories import trading as repo
from domain.market.calendar import is_open

log = logging.getLogger(__name__)

SNAPSHOT_MINUTES = frozenset({0, 15, 30, 45})
_INTERVAL = timedelta(minutes=15)


def snapshot_due(now: datetime) -> bool:
    """During a session, and at the first quarter hour after its close (early ones too)."""
    return is_open(now) or is_open(now - _INTERVAL)


async def snapshot_portfolios(ctx: dict[str, Any]) -> int:
    """The cron: one snapshot per held account when due; how many were taken."""
    svc = ctx["services"]
    now = svc.trading.clock()
    if not snapshot_due(now):
        return 0
    async with svc.db.transaction(None) as uow:
        held = await repo.held_accounts(uow.session)
    taken = 0
    for user_id, account_id in held:
        try:
            async with svc.db.transaction(user_id) as uow:
                taken += await svc.trading.snapshot_account(uow, account_id, now)
        except Exception:
            # One account's failure (a quote missing, a lock timeout) must not cost the
            # others their point; the next quarter hour tries again.
            log.exception("equity snapshot failed", extra={"account_id": str(account_id)})
    return taken
