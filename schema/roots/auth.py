from __future__ import annotations

import strawberry

from resolvers import auth
from schema import auth as types
from schema.audit import AuditEventConnection


@strawberry.type
class AuthQuery:
    me: types.User | None = strawberry.field(resolver=auth.me)
    sessions: list[types.Session] = strawberry.field(resolver=auth.sessions)
    api_tokens: list[types.ApiToken] = strawberry.field(resolver=auth.api_tokens)
    audit_log: AuditEventConnection = strawberry.field(resolver=auth.audit_log)


@strawberry.type
class AuthMutation:
    register: types.RegisterResult = strawberry.mutation(resolver=auth.register)
    login: types.LoginResult = strawberry.mutation(resolver=auth.login)
    complete_two_factor_login: types.LoginResult = strawberry.mutation(
        resolver=auth.complete_two_factor_login
    )
    refresh_token: types.RefreshResult = strawberry.mutation(resolver=auth.refresh_token)
    logout: bool = strawberry.mutation(resolver=auth.logout)
    revoke_session: bool = strawberry.mutation(resolver=auth.revoke_session)
    change_password: types.ChangePasswordResult = strawberry.mutation(resolver=auth.change_password)
    request_password_reset: bool = strawberry.mutation(
        resolver=auth.request_password_reset,
        description="Always true, whether or not the email has an account.",
    )
    reset_password: types.ResetPasswordResult = strawberry.mutation(resolver=auth.reset_password)
    verify_email: types.VerifyEmailResult = strawberry.mutation(resolver=auth.verify_email)
    enroll_totp: types.EnrollTotpResult = strawberry.mutation(resolver=auth.enroll_totp)
    confirm_totp: types.ConfirmTotpResult = strawberry.mutation(resolver=auth.confirm_totp)
    disable_totp: types.DisableTotpResult = strawberry.mutation(resolver=auth.disable_totp)
    create_api_token: types.CreateApiTokenResult = strawberry.mutation(
        resolver=auth.create_api_token
    )
    revoke_api_token: bool = strawberry.mutation(resolver=auth.revoke_api_token)
