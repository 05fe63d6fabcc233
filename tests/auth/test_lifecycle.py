"""The whole account lifecycle through the GraphQL endpoint."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from tests.conftest import GraphQLClient, SignedIn, client_for, random_ip

LOGIN = """
mutation($input: LoginInput!) {
  login(input: $input) {
    __typename
    ... on AuthPayload { accessToken refreshToken user { id email emailVerified } }
    ... on TwoFactorChallenge { challengeId }
    ... on UserError { code message }
    ... on RateLimited { retryAfterSeconds }
  }
}
"""
REFRESH = """
mutation($t: String!) {
  refreshToken(refreshToken: $t) {
    __typename
    ... on AuthPayload { accessToken refreshToken }
    ... on UserError { code message }
  }
}
"""
ME = "{ me { id email emailVerified twoFactorEnabled } }"


async def _link_token(owner_engine: AsyncEngine, email: str, kind: str) -> str:
    async with owner_engine.connect() as connection:
        body = await connection.scalar(
            text(
                "SELECT body FROM email_outbox WHERE to_address = :email AND kind = :kind "
                "ORDER BY created_at DESC LIMIT 1"
            ),
            {"email": email, "kind": kind},
        )
    assert body, f"no {kind} email for {email}"
    match = re.search(r"token=([\w.-]+)", body)
    assert match
    return match.group(1)


async def login(app: Starlette, email: str, password: str, ip: str | None = None) -> dict[str, Any]:
    async with client_for(app, ip) as client:
        body = await GraphQLClient(client)(LOGIN, {"input": {"email": email, "password": password}})
    result: dict[str, Any] = body["data"]["login"]
    return result


async def test_register_verify_login_refresh_reuse_revokes_family(
    app: Starlette, signup: Any, gql: GraphQLClient, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    me = (await user.gql(ME))["data"]["me"]
    assert me["email"] == user.email and me["emailVerified"] is False

    token = await _link_token(owner_engine, user.email, "verify_email")
    verified = await gql(
        """mutation($t: String!) { verifyEmail(token: $t) {
            __typename ... on EmailVerified { user { emailVerified } } } }""",
        {"t": token},
    )
    assert verified["data"]["verifyEmail"]["user"]["emailVerified"] is True
    again = await gql(
        "mutation($t: String!) { verifyEmail(token: $t) { __typename ... on UserError { code } } }",
        {"t": token},
    )
    assert again["data"]["verifyEmail"] == {"__typename": "InvalidToken", "code": "INVALID_TOKEN"}

    session = await login(app, user.email, user.password)
    assert session["__typename"] == "AuthPayload"
    first_refresh = session["refreshToken"]

    rotated = (await gql(REFRESH, {"t": first_refresh}))["data"]["refreshToken"]
    assert rotated["__typename"] == "AuthPayload"
    assert rotated["refreshToken"] != first_refresh

    # The old token comes back: theft is assumed, and the whole family ends.
    reused = (await gql(REFRESH, {"t": first_refresh}))["data"]["refreshToken"]
    assert reused["__typename"] == "InvalidToken"
    assert "already used" in reused["message"]
    after = (await gql(REFRESH, {"t": rotated["refreshToken"]}))["data"]["refreshToken"]
    assert after["__typename"] == "InvalidToken"
    # And the access token of that session stops working at once.
    denied = await gql(ME, token=rotated["accessToken"])
    assert denied["data"]["me"] is None

    async with owner_engine.connect() as connection:
        kinds = (
            (
                await connection.execute(
                    text("SELECT kind FROM audit_events WHERE user_id = :u ORDER BY seq"),
                    {"u": uuid.UUID(user.user_id)},
                )
            )
            .scalars()
            .all()
        )
    assert {
        "auth.registered",
        "auth.email_verified",
        "auth.login",
        "auth.refresh_token_reused",
    } <= set(kinds)


async def test_wrong_password_and_unknown_email_look_the_same(app: Starlette, signup: Any) -> None:
    user: SignedIn = await signup()
    wrong = await login(app, user.email, "not the password at all")
    unknown = await login(app, f"nobody-{uuid.uuid4().hex}@example.com", "not the password at all")
    assert (
        wrong
        == unknown
        == {
            "__typename": "InvalidCredentials",
            "code": "INVALID_CREDENTIALS",
            "message": "email or password is incorrect",
        }
    )


async def test_login_is_rate_limited_per_account(app: Starlette, signup: Any) -> None:
    user: SignedIn = await signup()
    for _ in range(5):
        assert (await login(app, user.email, "wrong password guess"))[
            "__typename"
        ] == "InvalidCredentials"
    blocked = await login(app, user.email, user.password)
    assert blocked["__typename"] == "RateLimited"
    assert 0 < blocked["retryAfterSeconds"] <= 900


async def test_login_is_rate_limited_per_address(app: Starlette) -> None:
    ip = random_ip()
    results = [
        (await login(app, f"x{i}-{uuid.uuid4().hex[:6]}@example.com", "whatever pass", ip))[
            "__typename"
        ]
        for i in range(31)
    ]
    assert results[:30] == ["InvalidCredentials"] * 30
    assert results[30] == "RateLimited"


async def test_logout_ends_the_session(signup: Any) -> None:
    user: SignedIn = await signup()
    assert (await user.gql("mutation { logout }"))["data"]["logout"] is True
    body = await user.gql(ME)
    assert body["data"]["me"] is None


async def test_unauthenticated_errors_say_why(gql: GraphQLClient) -> None:
    body = await gql("{ sessions { id } }", token="not-a-jwt")
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert body["errors"][0]["message"] == "invalid access token"


async def test_password_change_and_reset(
    app: Starlette, signup: Any, gql: GraphQLClient, owner_engine: AsyncEngine
) -> None:
    user: SignedIn = await signup()
    other_device = await login(app, user.email, user.password)
    change = """mutation($c: String!, $n: String!) {
        changePassword(currentPassword: $c, newPassword: $n) {
        __typename ... on UserError { code message } } }"""
    wrong = (await user.gql(change, {"c": "not my password", "n": "a brand new secret"}))["data"]
    assert wrong["changePassword"]["__typename"] == "InvalidCredentials"
    weak = (await user.gql(change, {"c": user.password, "n": "password123"}))["data"]
    assert weak["changePassword"]["__typename"] == "ValidationError"
    ok = (await user.gql(change, {"c": user.password, "n": "a brand new secret"}))["data"]
    assert ok["changePassword"]["__typename"] == "PasswordChanged"
    # Other sessions end; this one stays.
    assert (await gql(ME, token=other_device["accessToken"]))["data"]["me"] is None
    assert (await user.gql(ME))["data"]["me"]["email"] == user.email

    async with client_for(app) as client:
        asked = await GraphQLClient(client)(
            "mutation($e: String!) { requestPasswordReset(email: $e) }", {"e": user.email}
        )
    assert asked["data"]["requestPasswordReset"] is True
    token = await _link_token(owner_engine, user.email, "reset_password")
    reset = """mutation($t: String!, $n: String!) { resetPassword(token: $t, newPassword: $n) {
        __typename ... on UserError { code } } }"""
    bad = (await gql(reset, {"t": token, "n": "short"}))["data"]["resetPassword"]
    assert bad["__typename"] == "ValidationError"
    done = (await gql(reset, {"t": token, "n": "the third secret here"}))["data"]["resetPassword"]
    assert done["__typename"] == "PasswordChanged"
    replay = (await gql(reset, {"t": token, "n": "the fourth secret here"}))["data"][
        "resetPassword"
    ]
    assert replay["__typename"] == "InvalidToken"
    assert (await login(app, user.email, "the third secret here"))["__typename"] == "AuthPayload"
    assert (await user.gql(ME))["data"]["me"] is None  # reset signs everyone out


async def test_reset_for_unknown_email_is_indistinguishable(gql: GraphQLClient) -> None:
    body = await gql(
        "mutation($e: String!) { requestPasswordReset(email: $e) }",
        {"e": f"ghost-{uuid.uuid4().hex}@example.com"},
    )
    assert body == {"data": {"requestPasswordReset": True}}


async def test_credential_mutations_cannot_be_batched(gql: GraphQLClient) -> None:
    body = await gql(
        """mutation {
          a: login(input: {email: "a@example.com", password: "x"}) { __typename }
          b: login(input: {email: "a@example.com", password: "y"}) { __typename }
        }"""
    )
    assert "must be the only field" in body["errors"][0]["message"]
