"""WEBHOOK triggers: a signed, fresh, first-seen call runs the agent once; anything else is
refused and runs nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import httpx
from arq.worker import Worker

from domain.triggers.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers
from tests.agents.conftest import create, executions
from tests.conftest import SignedIn

QUIET = "Buy MSFT when RSI < 5. Sell MSFT when RSI > 95"  # holds on an ordinary day


async def webhook_agent(user: SignedIn) -> tuple[str, str, bytes]:
    saved = await create(user, name="Hooked", prompt=QUIET, triggers=[{"webhook": True}])
    assert saved["__typename"] == "AgentSaved", saved
    [secret] = saved["webhookSecrets"]
    return saved["agent"]["id"], urlparse(secret["url"]).path, secret["secret"].encode()


async def post(
    http: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await http.post(path, content=body, headers=headers)


async def wait_for_runs(user: SignedIn, agent_id: str, count: int) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        runs = await executions(user, agent_id)
        done = [r for r in runs if r["status"] != "RUNNING"]
        if len(done) >= count:
            return runs
        assert asyncio.get_running_loop().time() < deadline, runs
        await asyncio.sleep(0.05)


async def test_a_signed_call_runs_the_agent_once(
    signup: Any, http: httpx.AsyncClient, worker: Worker
) -> None:
    user: SignedIn = await signup()
    agent_id, path, secret = await webhook_agent(user)
    body = b'{"alert": "MSFT crossed its 50-day average"}'
    headers = signed_headers(secret, int(time.time()), body)

    accepted = await post(http, path, body, headers)
    assert accepted.status_code == 202, accepted.text
    [run] = await wait_for_runs(user, agent_id, 1)
    assert run["triggerType"] == "WEBHOOK" and run["trigger"]["type"] == "WEBHOOK"
    assert run["status"] == "SUCCEEDED" and run["outcome"] == "held", run
    # The body reaches the model as data, inside the context.
    assert run["context"]["trigger"]["payload"] == body.decode()
    assert run["context"]["trigger"]["description"] == "When the webhook is called"

    replayed = await post(http, path, body, headers)
    assert replayed.status_code == 409
    assert replayed.json() == {"error": "this call was already received"}

    # Another signed call is another event.
    other = b'{"alert": "again"}'
    assert (
        await post(http, path, other, signed_headers(secret, int(time.time()), other))
    ).status_code == 202
    runs = await wait_for_runs(user, agent_id, 2)
    assert len(runs) == 2
    await asyncio.sleep(0.3)
    assert len(await executions(user, agent_id)) == 2  # the replay ran nothing


async def test_forged_stale_and_unknown_calls_are_refused(
    signup: Any, http: httpx.AsyncClient, worker: Worker
) -> None:
    user: SignedIn = await signup()
    agent_id, path, secret = await webhook_agent(user)
    body = b'{"alert": "buy"}'
    now = int(time.time())

    forged = signed_headers(b"whsec_not-the-secret", now, body)
    assert (await post(http, path, body, forged)).status_code == 401
    # The signature covers the body: the same headers on another body do not verify.
    genuine = signed_headers(secret, now, body)
    assert (await post(http, path, b'{"alert": "sell"}', genuine)).status_code == 401
    assert (await post(http, path, body, {})).status_code == 401
    assert (
        await post(http, path, body, {SIGNATURE_HEADER: "sha256=00", TIMESTAMP_HEADER: "x"})
    ).status_code == 401
    stale = signed_headers(secret, now - 3600, body)
    response = await post(http, path, body, stale)
    assert response.status_code == 401
    assert "too old" in response.json()["error"]
    unknown = await post(http, f"/hooks/{uuid.uuid4()}", body, genuine)
    assert unknown.status_code == 404
    assert (await post(http, "/hooks/not-an-id", body, genuine)).status_code == 404
    too_big = b"x" * (64 * 1024 + 1)
    assert (
        await post(http, path, too_big, signed_headers(secret, now, too_big))
    ).status_code == 413

    # Paused, the agent takes no calls, however well signed.
    await user.gql("mutation($id: ID!) { pauseAgent(id: $id) { __typename } }", {"id": agent_id})
    paused = await post(http, path, body, signed_headers(secret, now + 1, body))
    assert paused.status_code == 409

    await asyncio.sleep(0.3)
    assert await executions(user, agent_id) == []


async def test_a_removed_trigger_url_is_gone(
    signup: Any, http: httpx.AsyncClient, worker: Worker
) -> None:
    user: SignedIn = await signup()
    _, path, secret = await webhook_agent(user)
    trigger_id = path.rsplit("/", 1)[-1]
    removed = await user.gql("mutation($id: ID!) { removeTrigger(id: $id) }", {"id": trigger_id})
    assert removed["data"]["removeTrigger"] is True
    body = b"{}"
    response = await post(http, path, body, signed_headers(secret, int(time.time()), body))
    assert response.status_code == 404
