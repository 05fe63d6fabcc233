"""A local stand-in for Anthropic's Messages endpoint, so tests can drive the real
`anthropic` SDK against it. Scripted like the OpenAI fake (see `openai_server`): queue
replies with `enqueue(tool_use_reply(...), overloaded(), ...)`, read back `requests`.

Like Anthropic, the fake checks the key (a bearer token or x-api-key), the API version
header and the request's shape (max_tokens, messages, tool names, a forced tool that
exists) before answering.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from tests.fakes.openai_server import Json, RecordedRequest, Reply, ScriptedServer

API_KEY = "sk-ant-test"
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class FakeAnthropic(ScriptedServer):
    name = "fake-anthropic"

    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__("/v1/messages")
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check(self, request: RecordedRequest) -> Reply | None:
        # SDK 2.x sends the key as a bearer token; older clients and curl use x-api-key.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (bearer, request.headers.get("x-api-key")):
            return error_reply(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return _invalid_request("anthropic-version: header is required")
        body = request.body
        if not isinstance(body.get("model"), str):
            return _invalid_request("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _invalid_request("max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _invalid_request("messages: at least one message is required")
        if not isinstance(messages[0], dict) or messages[0].get("role") != "user":
            return _invalid_request("messages: first message must use the 'user' role")
        tools = body.get("tools", [])
        names = set()
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not _TOOL_NAME.fullmatch(str(tool.get("name"))):
                return _invalid_request(f"tools.{i}.name: String should match pattern")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return _invalid_request(f"tools.{i}.input_schema.type: must be 'object'")
            names.add(tool["name"])
        choice = body.get("tool_choice")
        forced = choice.get("name") if isinstance(choice, dict) else None
        if forced is not None and forced not in names:
            return _invalid_request(f"tool_choice.name: tool {forced!r} not found in tools")
        return None

    def unscripted(self) -> Reply:
        return _invalid_request("the fake Anthropic server has no scripted reply left")


def message_reply(
    content: list[Json],
    *,
    stop_reason: str,
    stop_details: Json | None = None,
    input_tokens: int = 1500,
    output_tokens: int = 200,
) -> Reply:
    """A 200 with a Message answering with the requested model."""

    def body(request: Json) -> Json:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "claude-haiku-4-5"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "stop_details": stop_details,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "standard",
            },
        }

    return Reply(200, body, headers={"request-id": f"req_{uuid.uuid4().hex}"})


def tool_use_reply(
    tool_input: Any,
    *,
    name: str = "record_decision",
    input_tokens: int = 1500,
    output_tokens: int = 200,
) -> Reply:
    """The model calling tool `name` with `tool_input` (any JSON, valid or not)."""
    block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name}
    return message_reply(
        [{**block, "input": tool_input}],
        stop_reason="tool_use",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def text_reply(text: str, *, stop_reason: str = "end_turn") -> Reply:
    """The model answering in words instead of calling the tool."""
    return message_reply([{"type": "text", "text": text}], stop_reason=stop_reason)


def refusal_reply(explanation: str | None = "This request may enable harm.") -> Reply:
    """A refusal by Anthropic's safety classifiers: stop_reason "refusal", no tool call."""
    return message_reply(
        [],
        stop_reason="refusal",
        stop_details={"type": "refusal", "category": None, "explanation": explanation},
    )


def error_reply(
    status: int, error_type: str, message: str, *, headers: Mapping[str, str] | None = None
) -> Reply:
    request_id = f"req_{uuid.uuid4().hex}"
    error = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    return Reply(
        status, lambda _request: error, headers={"request-id": request_id, **(headers or {})}
    )


def rate_limited(retry_after: str = "0") -> Reply:
    return error_reply(
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization.",
        headers={"retry-after": retry_after},
    )


def server_error(headers: Mapping[str, str] | None = None) -> Reply:
    return error_reply(500, "api_error", "Internal server error", headers=headers)


def overloaded(headers: Mapping[str, str] | None = None) -> Reply:
    return error_reply(529, "overloaded_error", "Overloaded", headers=headers)


def _invalid_request(message: str) -> Reply:
    return error_reply(400, "invalid_request_error", message)


@contextlib.contextmanager
def running_fake_anthropic(api_key: str = API_KEY) -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
