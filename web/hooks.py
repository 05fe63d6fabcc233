"""POST /hooks/{trigger_id}: the URL of a WEBHOOK trigger (see domain.triggers.webhook for
how a caller signs it). Thin: the checks and the queued run are AgentService's."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from domain.agents.service import WEBHOOK_MAX_BODY
from domain.triggers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER
from kianax.wiring import Services


async def receive(request: Request) -> JSONResponse:
    try:
        trigger_id = uuid.UUID(request.path_params["trigger_id"])
    except ValueError:
        return JSONResponse({"error": "no such webhook"}, status_code=404)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > WEBHOOK_MAX_BODY):
        return JSONResponse({"error": "the body is too large"}, status_code=413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > WEBHOOK_MAX_BODY:
            return JSONResponse({"error": "the body is too large"}, status_code=413)
    svc: Services = request.app.state.services
    reply = await svc.agents.receive_webhook(
        trigger_id,
        body=body,
        signature=request.headers.get(SIGNATURE_HEADER),
        timestamp=request.headers.get(TIMESTAMP_HEADER),
    )
    if reply.status >= 400:
        return JSONResponse({"error": reply.message}, status_code=reply.status)
    return JSONResponse({"status": reply.message}, status_code=reply.status)
