"""A local stand-in for OpenAI's Chat Completions endpoint, so tests can drive the real
`openai` SDK against it, plus the scripted-server machinery `anthropic_server` shares.

Each test queues what the next requests get (`enqueue(decision_reply(...),
rate_limited(), slow(decision_reply(...), 5))`) and reads back every request received,
retries included, in `requests`. The server runs in its own thread and event loop, so it
works from any test event loop.

Like OpenAI, the fake checks the key and the request's shape before answering: a strict
`json_schema` response format whose schema OpenAI would reject gets the 400 OpenAI sends.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Json = dict[str, Any]


# --- provider-neutral: scripted replies and the server thread ----------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer: `body(request_body)` is sent with `status` and `headers`
    after `delay` seconds (longer than the client's timeout makes the client time out)."""

    status: int
    body: Callable[[Json], Json]
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


def slow(reply: Reply, seconds: float) -> Reply:
    return replace(reply, delay=seconds)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: Json

    @property
    def retry_count(self) -> int:
        """The attempt number the Stainless-generated SDKs send (0 for the first)."""
        return int(self.headers.get("x-stainless-retry-count", "0"))


class ScriptedServer(abc.ABC):
    """Answers each POST to `path` with the next queued Reply, after `check` has had its
    say on the request. Subclasses answer an unscripted request with a 400, which the SDKs
    do not retry, so a test that sends more requests than it expected fails on the spot."""

    name = "fake"

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def enqueue(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    @abc.abstractmethod
    def check(self, request: RecordedRequest) -> Reply | None:
        """The error the real API would answer `request` with, or None if it is valid."""

    @abc.abstractmethod
    def unscripted(self) -> Reply:
        """The answer to a request no Reply was queued for."""

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route(self.path, self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(sock),), name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None or self._thread is None or self._loop is None:
            return
        # Cut short any scripted delay still running, or shutdown would wait it out.
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        assert self._server is not None
        await self._server.serve(sockets=[sock])

    async def _handle(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        recorded = RecordedRequest(
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body if isinstance(body, dict) else {},
        )
        self.requests.append(recorded)
        reply = self.check(recorded)
        if reply is None:
            reply = self._replies.popleft() if self._replies else self.unscripted()
        if reply.delay and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), reply.delay)
        return JSONResponse(
            reply.body(recorded.body), status_code=reply.status, headers=dict(reply.headers)
        )


# --- OpenAI -----------------------------------------------------------------------------

API_KEY = "sk-test-openai"
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class FakeOpenAI(ScriptedServer):
    name = "fake-openai"

    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__("/v1/chat/completions")
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def check(self, request: RecordedRequest) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_reply(
                401,
                "Incorrect API key provided.",
                error_type="invalid_request_error",
                code="invalid_api_key",
            )
        body = request.body
        if not isinstance(body.get("model"), str):
            return _invalid_request("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _invalid_request("'messages' must be a non-empty array", "messages")
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                return _invalid_request(f"invalid message: {message!r}", "messages")
        temperature = body.get("temperature", 1)
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            return _invalid_request("temperature must be between 0 and 2", "temperature")
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not _SCHEMA_NAME.fullmatch(str(spec.get("name"))):
                return _invalid_request(
                    "json_schema.name must match ^[a-zA-Z0-9_-]{1,64}$", "response_format"
                )
            problems = (
                _strict_schema_problems(spec.get("schema"), "schema") if spec.get("strict") else []
            )
            if problems:
                return _invalid_request(
                    f"Invalid schema for response_format '{spec['name']}': {problems[0]}",
                    "response_format",
                )
        return None

    def unscripted(self) -> Reply:
        return _invalid_request("the fake OpenAI server has no scripted reply left", None)


_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _strict_schema_problems(schema: object, path: str) -> list[str]:
    """What OpenAI's strict Structured Outputs refuses: objects must list every property
    as required and forbid additional properties."""
    if not isinstance(schema, dict):
        return [f"{path} must be an object"]
    problems: list[str] = []
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is not False:
            problems.append(f"{path}: 'additionalProperties' is required to be false")
        if set(schema.get("required", [])) != set(properties):
            problems.append(f"{path}: 'required' must list every key in 'properties'")
        for name, sub in properties.items():
            problems += _strict_schema_problems(sub, f"{path}.properties.{name}")
    if "items" in schema:
        problems += _strict_schema_problems(schema["items"], f"{path}.items")
    for i, sub in enumerate(schema.get("anyOf", [])):
        problems += _strict_schema_problems(sub, f"{path}.anyOf[{i}]")
    return problems


def completion_reply(
    content: str | None,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    prompt_tokens: int = 1200,
    completion_tokens: int = 150,
) -> Reply:
    """A 200 with a ChatCompletion answering with the requested model."""

    def body(request: Json) -> Json:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "gpt-4o-mini"),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": refusal,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    return Reply(200, body, headers={"x-request-id": f"req_{uuid.uuid4().hex}"})


def decision_reply(
    decision: Json, *, prompt_tokens: int = 1200, completion_tokens: int = 150
) -> Reply:
    return completion_reply(
        json.dumps(decision), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


def malformed_reply() -> Reply:
    """Content that is not JSON at all (cut off mid-object)."""
    return completion_reply('{"reasoning": "RSI is low", "actions": [{"action": "BUY", "sym')


def refusal_reply(text: str = "I'm sorry, but I can't help with that request.") -> Reply:
    return completion_reply(None, refusal=text)


def error_reply(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    error = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return Reply(
        status,
        lambda _request: error,
        headers={"x-request-id": f"req_{uuid.uuid4().hex}", **(headers or {})},
    )


def rate_limited(retry_after: str = "0") -> Reply:
    return error_reply(
        429,
        "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.",
        error_type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": retry_after},
    )


def server_error(headers: Mapping[str, str] | None = None) -> Reply:
    return error_reply(
        500,
        "The server had an error while processing your request. Sorry about that!",
        error_type="server_error",
        headers=headers,
    )


def _invalid_request(message: str, param: str | None) -> Reply:
    return error_reply(400, message, error_type="invalid_request_error", param=param)


@contextlib.contextmanager
def running_fake_openai(api_key: str = API_KEY) -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
