"""TOTP two-factor, recovery codes, personal API tokens and their scopes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
import websockets
from starlette.applications import Starlette

from domain.auth.tokens import issue_access_token
from kianax.settings import Settings
from tests.auth.test_lifecycle import ME, login
from tests.conftest import GraphQLClient, SignedIn, client_for
from tests.ws import graphql_ws

ENROLL = "mutation { enrollTotp { __typename ... on TotpEnrollment { secret otpauthUri } } }"
CONFIRM = """mutation($c: String!) { confirmTotp(code: $c) {
  __typename ... on TotpEnabled { recoveryCodes } ... on UserError { code message } } }"""
COMPLETE = """mutation($id: ID!, $c: String!) { completeTwoFactorLogin(challengeId: $id, code: $c) {
  __typename ... on AuthPayload { accessToken } ... on UserError { code message } } }"""


def code_for(secret: str, offset_steps: int = 0) -> str:
    totp = pyotp.TOTP(secret)
    return totp.at(int(time.time()) + offset_steps * totp.interval)


async def enable_two_factor(user: SignedIn) -> tuple[str, list[str]]:
    enrollment = (await user.gql(ENROLL))["data"]["enrollTotp"]
    assert enrollment["otpauthUri"].startswith("otpauth://totp/Kianax:")
    secret = enrollment["secret"]
    wrong = (await user.gql(CONFIRM, {"c": "000000"}))["data"]["confirmTotp"]
    assert wrong["__typename"] == "InvalidCode"
    enabled = (await user.gql(CONFIRM, {"c": code_for(secret, -1)}))["data"]["confirmTotp"]
    assert enabled["__typename"] == "TotpEnabled"
    assert len(enabled["recoveryCodes"]) == 10
    return secret, enabled["recoveryCodes"]


async def test_two_factor_login_and_no_code_twice(
    app: Starlette, signup: Any, gql: GraphQLClient
) -> None:
    user: SignedIn = await signup()
    secret, recovery = await enable_two_factor(user)
    assert (await user.gql(ME))["data"]["me"]["twoFactorEnabled"] is True

    challenge = await login(app, user.email, user.password)
    assert challenge["__typename"] == "TwoFactorChallenge"
    bad = (await gql(COMPLETE, {"id": challenge["challengeId"], "c": "123456"}))["data"]
    assert bad["completeTwoFactorLogin"]["__typename"] == "InvalidCode"
    code = code_for(secret)
    done = (await gql(COMPLETE, {"id": challenge["challengeId"], "c": code}))["data"]
    assert done["completeTwoFactorLogin"]["__typename"] == "AuthPayload"

    # The same code, again, on a fresh challenge: refused (a code is good once).
    again = await login(app, user.email, user.password)
    replay = (await gql(COMPLETE, {"id": again["challengeId"], "c": code}))["data"]
    assert replay["completeTwoFactorLogin"]["__typename"] == "InvalidCode"
    # A recovery code works once.
    with_recovery = (await gql(COMPLETE, {"id": again["challengeId"], "c": recovery[0]}))["data"]
    assert with_recovery["completeTwoFactorLogin"]["__typename"] == "AuthPayload"
    third = await login(app, user.email, user.password)
    reused = (await gql(COMPLETE, {"id": third["challengeId"], "c": recovery[0]}))["data"]
    assert reused["completeTwoFactorLogin"]["__typename"] == "InvalidCode"
    # A finished challenge cannot be used again.
    finished = (await gql(COMPLETE, {"id": challenge["challengeId"], "c": recovery[1]}))["data"]
    assert finished["completeTwoFactorLogin"]["__typename"] == "InvalidToken"


async def test_disable_two_factor_needs_a_code(signup: Any) -> None:
    user: SignedIn = await signup()
    secret, _ = await enable_two_factor(user)
    disable = """mutation($c: String!) { disableTotp(code: $c) { __typename
        ... on TotpDisabled { user { twoFactorEnabled } } ... on UserError { code } } }"""
    assert (await user.gql(disable, {"c": "999999"}))["data"]["disableTotp"]["__typename"] == (
        "InvalidCode"
    )
    done = (await user.gql(disable, {"c": code_for(secret, 1)}))["data"]["disableTotp"]
    assert done == {"__typename": "TotpDisabled", "user": {"twoFactorEnabled": False}}


CREATE_TOKEN = """mutation($n: String!, $s: [ApiScope!]!) { createApiToken(name: $n, scopes: $s) {
  __typename
  ... on ApiTokenCreated { token apiToken { id name scopes } }
  ... on UserError { code } } }"""


async def test_api_token_scopes_and_revocation(signup: Any, gql: GraphQLClient) -> None:
    user: SignedIn = await signup()
    created = (await user.gql(CREATE_TOKEN, {"n": "my bot", "s": ["READ"]}))["data"]
    token = created["createApiToken"]["token"]
    assert token.startswith("kx_")
    listed = (await user.gql("{ apiTokens { id name scopes lastUsedAt } }"))["data"]["apiTokens"]
    assert [t["name"] for t in listed] == ["my bot"]
    assert "token" not in listed[0]  # the secret is shown once only

    assert (await gql(ME, token=token))["data"]["me"]["email"] == user.email
    # A program cannot manage credentials, whatever its scopes.
    denied = await gql(CREATE_TOKEN, {"n": "escalate", "s": ["TRADE"]}, token=token)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    token_id = created["createApiToken"]["apiToken"]["id"]
    revoke = "mutation($id: ID!) { revokeApiToken(id: $id) }"
    assert (await user.gql(revoke, {"id": token_id}))["data"]["revokeApiToken"] is True
    after = await gql(ME, token=token)
    assert after["data"]["me"] is None
    invalid = await gql("{ sessions { id } }", token=token)
    assert invalid["errors"][0]["message"] == "invalid API token"


async def test_api_token_validation(signup: Any) -> None:
    user: SignedIn = await signup()
    no_scopes = (await user.gql(CREATE_TOKEN, {"n": "x", "s": []}))["data"]["createApiToken"]
    no_name = (await user.gql(CREATE_TOKEN, {"n": "  ", "s": ["READ"]}))["data"]["createApiToken"]
    assert no_scopes == {"__typename": "ValidationError", "code": "VALIDATION_ERROR"}
    assert no_name == {"__typename": "ValidationError", "code": "VALIDATION_ERROR"}
    assert (await user.gql("{ apiTokens { id } }"))["data"]["apiTokens"] == []


async def test_websocket_refuses_an_expired_token(live_server: str, settings: Settings) -> None:
    token, _ = issue_access_token(
        uuid.uuid4(),
        uuid.uuid4(),
        keys=settings.jwt_key_ring,
        signing_kid=settings.jwt_signing_kid,
        ttl=timedelta(minutes=15),
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with graphql_ws(live_server, token=token):
            pass
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_sessions_list_marks_the_current_one(app: Starlette, signup: Any) -> None:
    user: SignedIn = await signup()
    await login(app, user.email, user.password)
    sessions = (await user.gql("{ sessions { id current userAgent } }"))["data"]["sessions"]
    assert len(sessions) == 2
    assert sum(s["current"] for s in sessions) == 1
    other = next(s for s in sessions if not s["current"])
    revoke = "mutation($id: ID!) { revokeSession(id: $id) }"
    assert (await user.gql(revoke, {"id": other["id"]}))["data"]["revokeSession"] is True
    assert (await user.gql(revoke, {"id": other["id"]}))["data"]["revokeSession"] is False
    assert len((await user.gql("{ sessions { id } }"))["data"]["sessions"]) == 1


async def test_registration_is_rate_limited_per_address(app: Starlette) -> None:
    async with client_for(app, f"198.51.100.{uuid.uuid4().int % 250}") as client:
        gql = GraphQLClient(client)
        query = """mutation($e: String!) { register(input: {email: $e, password: "x"}) {
            __typename } }"""
        kinds = [
            (await gql(query, {"e": f"r{i}-{uuid.uuid4().hex[:6]}@example.com"}))["data"][
                "register"
            ]["__typename"]
            for i in range(11)
        ]
    assert kinds[:10] == ["ValidationError"] * 10
    assert kinds[10] == "RateLimited"
