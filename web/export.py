"""CSV downloads of the signed-in user's orders and fills (their own rows only)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from domain.auth.actor import Scope
from domain.trading.service import order_snapshot
from kianax.wiring import Services
from web.auth import authenticate, bearer

PAGE = 500
ORDER_COLUMNS = [
    "id", "clientOrderId", "submittedAt", "updatedAt", "symbol", "side", "type", "timeInForce",
    "quantity", "notional", "limitPrice", "stopPrice", "trailPercent", "status",
    "filledQuantity", "averageFillPrice", "rejectReason", "agentId",
]  # fmt: skip
FILL_COLUMNS = [
    "id", "orderId", "executedAt", "symbol", "side", "quantity", "price", "commission",
    "realizedPnl", "agentId",
]  # fmt: skip


def _fill_row(f: Any) -> list[Any]:
    return [
        f.id, f.order_id, f.executed_at.isoformat(), f.symbol, f.side.value,
        f.quantity, f.price, f.commission, f.realized_pnl, f.agent_id,
    ]  # fmt: skip


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["" if v is None else str(v) for v in values])
    return buffer.getvalue()


async def _rows(
    svc: Services,
    user_id: Any,
    fetch: Callable[..., Any],
    key: Callable[[Any], tuple[datetime, Any]],
    render: Callable[[Any], list[Any]],
) -> AsyncIterator[str]:
    before = None
    while True:
        async with svc.db.transaction(user_id) as uow:
            page = list(await fetch(uow, before=before, limit=PAGE))
        for row in page:
            yield _csv_line(render(row))
        if len(page) < PAGE:
            return
        before = key(page[-1])


async def _export(request: Request, kind: str) -> Response:
    svc: Services = request.app.state.services
    auth = await authenticate(svc, bearer(request.headers.get("authorization")))
    if auth.actor is None:
        return JSONResponse({"error": auth.error or "sign in first"}, status_code=401)
    if not auth.actor.can(Scope.READ):
        return JSONResponse({"error": "this token lacks the READ scope"}, status_code=403)
    user_id = auth.actor.user_id

    async def body() -> AsyncIterator[str]:
        if kind == "orders":
            yield _csv_line(ORDER_COLUMNS)
            rows = _rows(
                svc,
                user_id,
                lambda uow, **kw: svc.trading.list_orders(uow, statuses=None, symbol=None, **kw),
                lambda o: (o.submitted_at, o.id),
                lambda o: [order_snapshot(o)[c] for c in ORDER_COLUMNS],
            )
        else:
            yield _csv_line(FILL_COLUMNS)
            rows = _rows(
                svc,
                user_id,
                lambda uow, **kw: svc.trading.list_fills(uow, symbol=None, **kw),
                lambda f: (f.executed_at, f.id),
                _fill_row,
            )
        async for line in rows:
            yield line

    return StreamingResponse(
        body(),
        media_type="text/csv",
        headers={"content-disposition": f'attachment; filename="kianax-{kind}.csv"'},
    )


async def export_orders(request: Request) -> Response:
    return await _export(request, "orders")


async def export_fills(request: Request) -> Response:
    return await _export(request, "fills")
