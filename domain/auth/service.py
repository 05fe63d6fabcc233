"""Accounts and authentication: the rules, in one place, for GraphQL and anything else."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
from redis.asyncio import Redis

from db.engine import UnitOfWork
from db.models import (
    ApiToken,
    AuthSession,
    EmailOutbox,
    OneTimeToken,
    RecoveryCode,
    RefreshToken,
    TotpSecret,
    User,
)
from db.repositories import users as repo
from domain import audit
from domain.auth import ratelimit as limits
from domain.auth.actor import ALL_SCOPES, Actor, AuthMethod, Scope
from domain.auth.passwords import hash_password, password_problem, verify_password
from domain.auth.tokens import issue_access_token
from domain.brokers.crypto import KeyRing, SealedSecret, open_sealed, seal
from kianax.settings import Settings

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")
VERIFY_TTL = timedelta(days=2)
RESET_TTL = timedelta(minutes=30)
CHALLENGE_TTL_SECONDS = 300
RECOVERY_CODES = 10
TOTP_ISSUER = "Kianax"
REVOKED_SESSION_KEY = "auth:revoked-session:{}"

EnqueueEmail = Callable[[uuid.UUID, uuid.UUID], Awaitable[None]]


class AuthError(Exception):
    """An expected failure; the resolver turns each subclass into a typed result."""

    code = "AUTH_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AuthError):
    code = "VALIDATION_ERROR"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class EmailTaken(AuthError):
    code = "EMAIL_TAKEN"


class InvalidCredentials(AuthError):
    code = "INVALID_CREDENTIALS"


class InvalidToken(AuthError):
    code = "INVALID_TOKEN"


class InvalidCode(AuthError):
    code = "INVALID_CODE"


class TwoFactorRequired(AuthError):
    code = "TWO_FACTOR_REQUIRED"


class RateLimited(AuthError):
    code = "RATE_LIMITED"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many attempts; try again in {retry_after} seconds")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: datetime
    user: User
    session_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge_id: str


@dataclass(frozen=True, slots=True)
class Client:
    ip: str | None
    user_agent: str | None


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(prefix: str, user_id: uuid.UUID) -> str:
    # The owner's id travels in the token so it can be looked up under row-level security.
    return f"{prefix}_{user_id.hex}_{secrets.token_urlsafe(32)}"


def _owner_of(token: str, prefix: str) -> uuid.UUID | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or len(token) > 200:
        return None
    try:
        return uuid.UUID(hex=parts[1])
    except ValueError:
        return None


def _utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates smuggled in through JSON escapes
        return False
    return value.isprintable()


def normalize_email(raw: str) -> str:
    email = raw.strip()
    if len(email) > 320 or not EMAIL_RE.match(email) or not _utf8(email):
        raise InvalidInput("email", "enter a valid email address")
    local, _, domain = email.partition("@")
    return f"{local}@{domain.lower()}"


class AuthService:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        enqueue_email: EnqueueEmail | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.limiter = limits.RateLimiter(redis)
        self.enqueue_email = enqueue_email
        self.keys = KeyRing.from_base64(settings.master_key_ring)

    # ------------------------------------------------------------------ sessions and tokens

    async def _start_session(self, uow: UnitOfWork, user: User, client: Client) -> Tokens:
        now = _now()
        auth_session = AuthSession(
            id=uuid.uuid4(),
            user_id=user.id,
            expires_at=now + timedelta(seconds=self.settings.refresh_token_ttl_seconds),
            user_agent=(client.user_agent or "")[:256] or None,
            ip=client.ip,
        )
        uow.session.add(auth_session)
        await uow.session.flush()
        return await self._issue(uow, user, auth_session, now)

    async def _issue(
        self, uow: UnitOfWork, user: User, auth_session: AuthSession, now: datetime
    ) -> Tokens:
        refresh = _new_token("rt", user.id)
        uow.session.add(
            RefreshToken(
                id=uuid.uuid4(),
                user_id=user.id,
                session_id=auth_session.id,
                token_hash=_digest(refresh),
                expires_at=auth_session.expires_at,
            )
        )
        access, expires = issue_access_token(
            user.id,
            auth_session.id,
            keys=self.settings.jwt_key_ring,
            signing_kid=self.settings.jwt_signing_kid,
            ttl=timedelta(seconds=self.settings.access_token_ttl_seconds),
            now=now,
        )
        await uow.session.flush()
        return Tokens(access, refresh, expires, user, auth_session.id)

    async def _mark_revoked(self, session_ids: list[uuid.UUID]) -> None:
        # Access tokens live at most this long; after that the session check is moot.
        for session_id in session_ids:
            await self.redis.set(
                REVOKED_SESSION_KEY.format(session_id),
                "1",
                ex=self.settings.access_token_ttl_seconds + 60,
            )

    async def session_revoked(self, session_id: uuid.UUID) -> bool:
        return bool(await self.redis.exists(REVOKED_SESSION_KEY.format(session_id)))

    # ------------------------------------------------------------------ register and login

    async def register(self, uow: UnitOfWork, email: str, password: str, client: Client) -> Tokens:
        if client.ip and (wait := await self.limiter.hit(limits.REGISTER_PER_IP, client.ip)):
            raise RateLimited(wait)
        email = normalize_email(email)
        if problem := password_problem(password, email=email):
            raise InvalidInput("password", problem)
        if await repo.user_id_by_email(uow.session, email) is not None:
            raise EmailTaken("an account with this email already exists")
        user = User(id=uuid.uuid4(), email=email, password_hash=await hash_password(password))
        await uow.act_as(user.id)
        uow.session.add(user)
        await uow.session.flush()
        await self._send_link(uow, user, "verify_email", VERIFY_TTL)
        await audit.record(
            uow.session, "auth.registered", user_id=user.id, entity="user", entity_id=user.id
        )
        return await self._start_session(uow, user, client)

    async def login(
        self, uow: UnitOfWork, email: str, password: str, client: Client
    ) -> Tokens | Challenge:
        subject = email.strip().lower()[:320]
        if client.ip and (wait := await self.limiter.hit(limits.LOGIN_PER_IP, client.ip)):
            raise RateLimited(wait)
        if wait := await self.limiter.blocked(limits.LOGIN_FAILURES_PER_ACCOUNT, subject):
            raise RateLimited(wait)
        user_id = (
            await repo.user_id_by_email(uow.session, subject) if EMAIL_RE.match(subject) else None
        )
        user = None
        if user_id is not None:
            await uow.act_as(user_id)
            user = await repo.get_user(uow.session, user_id)
        ok, upgraded = await verify_password(user.password_hash if user else None, password)
        if user is None or not ok:
            await self.limiter.hit(limits.LOGIN_FAILURES_PER_ACCOUNT, subject)
            await audit.record(
                uow.session,
                "auth.login_failed",
                user_id=user.id if user else None,
                entity="user",
                entity_id=user.id if user else None,
                payload={"ip": client.ip, "known_account": user is not None},
            )
            # One message for a wrong password and an unknown email: no account probing.
            raise InvalidCredentials("email or password is incorrect")
        await self.limiter.reset(limits.LOGIN_FAILURES_PER_ACCOUNT, subject)
        if upgraded:
            user.password_hash = upgraded
        if user.two_factor_enabled_at is not None:
            challenge = secrets.token_urlsafe(24)
            await self.redis.set(f"auth:2fa:{challenge}", str(user.id), ex=CHALLENGE_TTL_SECONDS)
            await audit.record(
                uow.session,
                "auth.login_2fa_challenged",
                user_id=user.id,
                entity="user",
                entity_id=user.id,
            )
            return Challenge(challenge)
        await audit.record(
            uow.session,
            "auth.login",
            user_id=user.id,
            entity="user",
            entity_id=user.id,
            payload={"ip": client.ip},
        )
        return await self._start_session(uow, user, client)

    async def complete_two_factor(
        self, uow: UnitOfWork, challenge_id: str, code: str, client: Client
    ) -> Tokens:
        key = f"auth:2fa:{challenge_id[:64]}"
        raw = await self.redis.get(key)
        if raw is None:
            raise InvalidToken("this sign-in attempt has expired; sign in again")
        if wait := await self.limiter.hit(limits.TWO_FACTOR_PER_CHALLENGE, challenge_id[:64]):
            await self.redis.delete(key)
            raise RateLimited(wait)
        user_id = uuid.UUID(raw.decode() if isinstance(raw, bytes) else raw)
        await uow.act_as(user_id)
        user = await repo.get_user(uow.session, user_id)
        if user is None or not await self._accept_second_factor(uow, user, code):
            await audit.record(
                uow.session, "auth.2fa_failed", user_id=user_id, entity="user", entity_id=user_id
            )
            raise InvalidCode("the code is not valid")
        await self.redis.delete(key)
        await audit.record(
            uow.session,
            "auth.login",
            user_id=user.id,
            entity="user",
            entity_id=user.id,
            payload={"ip": client.ip, "two_factor": True},
        )
        return await self._start_session(uow, user, client)

    async def refresh(self, uow: UnitOfWork, token: str, client: Client) -> Tokens:
        owner = _owner_of(token, "rt")
        if owner is None:
            raise InvalidToken("invalid refresh token")
        await uow.act_as(owner)
        stored = await repo.refresh_token_by_hash(uow.session, _digest(token))
        if stored is None:
            raise InvalidToken("invalid refresh token")
        now = _now()
        auth_session = await repo.get_session(uow.session, stored.session_id)
        if auth_session is None or auth_session.revoked_at is not None:
            raise InvalidToken("this session has ended; sign in again")
        if stored.used_at is not None:
            # RFC 9700 §4.14: a rotated token came back, so it leaked: end the whole family.
            revoked = await repo.revoke_sessions(
                uow.session, owner, now, "refresh_token_reuse", only=auth_session.id
            )
            await self._mark_revoked(revoked)
            await audit.record(
                uow.session,
                "auth.refresh_token_reused",
                user_id=owner,
                entity="session",
                entity_id=auth_session.id,
                payload={"ip": client.ip},
            )
            raise InvalidToken("this refresh token was already used; the session has been ended")
        if stored.expires_at <= now or auth_session.expires_at <= now:
            raise InvalidToken("this session has expired; sign in again")
        stored.used_at = now
        auth_session.last_used_at = now
        user = await repo.get_user(uow.session, owner)
        if user is None:
            raise InvalidToken("invalid refresh token")
        return await self._issue(uow, user, auth_session, now)

    async def logout(self, uow: UnitOfWork, actor: Actor) -> bool:
        if actor.session_id is None:
            return False
        return await self.revoke_session(uow, actor, actor.session_id, reason="logout")

    async def revoke_session(
        self, uow: UnitOfWork, actor: Actor, session_id: uuid.UUID, *, reason: str = "revoked"
    ) -> bool:
        revoked = await repo.revoke_sessions(
            uow.session, actor.user_id, _now(), reason, only=session_id
        )
        await self._mark_revoked(revoked)
        if revoked:
            await audit.record(
                uow.session,
                f"auth.session_{reason}",
                user_id=actor.user_id,
                entity="session",
                entity_id=session_id,
            )
        return bool(revoked)

    async def sessions(self, uow: UnitOfWork, actor: Actor) -> list[AuthSession]:
        return list(await repo.active_sessions(uow.session, actor.user_id, _now()))

    # ------------------------------------------------------------------ passwords and email

    async def change_password(self, uow: UnitOfWork, actor: Actor, current: str, new: str) -> None:
        user = await self.user(uow, actor)
        if wait := await self.limiter.blocked(
            limits.LOGIN_FAILURES_PER_ACCOUNT, user.email.lower()
        ):
            raise RateLimited(wait)
        ok, _ = await verify_password(user.password_hash, current)
        if not ok:
            await self.limiter.hit(limits.LOGIN_FAILURES_PER_ACCOUNT, user.email.lower())
            raise InvalidCredentials("the current password is incorrect")
        await self._set_password(uow, user, new, keep_session=actor.session_id)

    async def _set_password(
        self, uow: UnitOfWork, user: User, new: str, *, keep_session: uuid.UUID | None
    ) -> None:
        if problem := password_problem(new, email=user.email):
            raise InvalidInput("newPassword", problem)
        now = _now()
        user.password_hash = await hash_password(new)
        user.password_changed_at = now
        # Everyone else signed in with the old password is signed out.
        revoked = await repo.revoke_sessions(
            uow.session, user.id, now, "password_changed", keep=keep_session
        )
        await self._mark_revoked(revoked)
        await audit.record(
            uow.session,
            "auth.password_changed",
            user_id=user.id,
            entity="user",
            entity_id=user.id,
            payload={"sessions_revoked": len(revoked)},
        )

    async def request_password_reset(self, uow: UnitOfWork, email: str, client: Client) -> None:
        if client.ip and await self.limiter.hit(limits.RESET_PER_IP, client.ip):
            return  # silently: the answer is always the same, for probing's sake
        try:
            email = normalize_email(email)
        except InvalidInput:
            return
        if await self.limiter.hit(limits.RESET_PER_ACCOUNT, email):
            return
        user_id = await repo.user_id_by_email(uow.session, email)
        if user_id is None:
            return
        await uow.act_as(user_id)
        user = await repo.get_user(uow.session, user_id)
        if user is not None:
            await self._send_link(uow, user, "reset_password", RESET_TTL)
            await audit.record(
                uow.session,
                "auth.password_reset_requested",
                user_id=user.id,
                entity="user",
                entity_id=user.id,
                payload={"ip": client.ip},
            )

    async def reset_password(self, uow: UnitOfWork, token: str, new: str) -> User:
        user = await self._consume_link(uow, token, "reset_password")
        await self._set_password(uow, user, new, keep_session=None)
        return user

    async def verify_email(self, uow: UnitOfWork, token: str) -> User:
        user = await self._consume_link(uow, token, "verify_email")
        user.email_verified_at = user.email_verified_at or _now()
        await audit.record(
            uow.session, "auth.email_verified", user_id=user.id, entity="user", entity_id=user.id
        )
        return user

    async def _send_link(self, uow: UnitOfWork, user: User, purpose: str, ttl: timedelta) -> None:
        token = f"{user.id.hex}.{secrets.token_urlsafe(32)}"
        uow.session.add(
            OneTimeToken(
                id=uuid.uuid4(),
                user_id=user.id,
                purpose=purpose,
                token_hash=_digest(token),
                expires_at=_now() + ttl,
            )
        )
        path = "verify-email" if purpose == "verify_email" else "reset-password"
        link = f"{self.settings.url}/{path}?token={token}"
        subject, body = (
            ("Confirm your Kianax email", f"Confirm your email address: {link}\n")
            if purpose == "verify_email"
            else (
                "Reset your Kianax password",
                f"Reset your password within {int(ttl.total_seconds() // 60)} minutes: {link}\n"
                "If you did not ask for this, ignore this message.\n",
            )
        )
        message = EmailOutbox(
            id=uuid.uuid4(),
            user_id=user.id,
            to_address=user.email,
            kind=purpose,
            subject=subject,
            body=body,
        )
        uow.session.add(message)
        await uow.session.flush()
        if self.enqueue_email is not None:
            enqueue = self.enqueue_email
            user_id, message_id = user.id, message.id
            uow.after_commit(lambda: enqueue(user_id, message_id))

    async def _consume_link(self, uow: UnitOfWork, token: str, purpose: str) -> User:
        owner_hex, _, _ = token.partition(".")
        try:
            owner = uuid.UUID(hex=owner_hex)
        except ValueError:
            raise InvalidToken("this link is not valid") from None
        await uow.act_as(owner)
        stored = await repo.one_time_token_by_hash(uow.session, _digest(token), purpose)
        if stored is None or stored.used_at is not None:
            raise InvalidToken("this link is not valid or was already used")
        if stored.expires_at <= _now():
            raise InvalidToken("this link has expired")
        stored.used_at = _now()
        user = await repo.get_user(uow.session, owner)
        if user is None:
            raise InvalidToken("this link is not valid")
        return user

    # ------------------------------------------------------------------ two-factor

    async def enroll_totp(self, uow: UnitOfWork, actor: Actor) -> tuple[str, str]:
        user = await self.user(uow, actor)
        if user.two_factor_enabled_at is not None:
            raise InvalidInput("totp", "two-factor authentication is already on; disable it first")
        secret = pyotp.random_base32()
        sealed = seal(self.keys, secret, user_id=user.id, connection_id=user.id)
        existing = await repo.totp_secret(uow.session, user.id)
        if existing is None:
            existing = TotpSecret(user_id=user.id, last_step=0)
            uow.session.add(existing)
        existing.key_id, existing.wrapped_key, existing.ciphertext = (
            sealed.key_id,
            sealed.wrapped_key,
            sealed.ciphertext,
        )
        existing.confirmed_at = None
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)
        return secret, uri

    async def confirm_totp(self, uow: UnitOfWork, actor: Actor, code: str) -> list[str]:
        user = await self.user(uow, actor)
        stored = await repo.totp_secret(uow.session, user.id)
        if stored is None or user.two_factor_enabled_at is not None:
            raise InvalidInput("code", "start with enrollTotp")
        if not self._accept_totp(stored, user, code):
            raise InvalidCode("the code is not valid")
        now = _now()
        stored.confirmed_at = now
        user.two_factor_enabled_at = now
        codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
        await repo.delete_recovery_codes(uow.session, user.id)
        for plain in codes:
            uow.session.add(
                RecoveryCode(id=uuid.uuid4(), user_id=user.id, code_hash=_digest(plain))
            )
        await audit.record(
            uow.session, "auth.2fa_enabled", user_id=user.id, entity="user", entity_id=user.id
        )
        return codes

    async def disable_totp(self, uow: UnitOfWork, actor: Actor, code: str) -> None:
        user = await self.user(uow, actor)
        if user.two_factor_enabled_at is None:
            raise InvalidInput("code", "two-factor authentication is not on")
        if not await self._accept_second_factor(uow, user, code):
            raise InvalidCode("the code is not valid")
        user.two_factor_enabled_at = None
        stored = await repo.totp_secret(uow.session, user.id)
        if stored is not None:
            await uow.session.delete(stored)
        await repo.delete_recovery_codes(uow.session, user.id)
        await audit.record(
            uow.session, "auth.2fa_disabled", user_id=user.id, entity="user", entity_id=user.id
        )

    async def require_fresh_code(self, uow: UnitOfWork, actor: Actor, code: str | None) -> None:
        """For sensitive acts: when 2FA is on, a current code (or recovery code) is due."""
        user = await self.user(uow, actor)
        if user.two_factor_enabled_at is None:
            return
        if not code:
            raise TwoFactorRequired("enter a current two-factor code for this action")
        if not await self._accept_second_factor(uow, user, code):
            await audit.record(
                uow.session, "auth.2fa_failed", user_id=user.id, entity="user", entity_id=user.id
            )
            raise TwoFactorRequired("the two-factor code is not valid")

    async def _accept_second_factor(self, uow: UnitOfWork, user: User, code: str) -> bool:
        code = code.strip().replace(" ", "")
        stored = await repo.totp_secret(uow.session, user.id)
        if stored is not None and self._accept_totp(stored, user, code):
            return True
        digest = _digest(code.lower())
        for recovery in await repo.unused_recovery_codes(uow.session, user.id):
            if hmac.compare_digest(recovery.code_hash, digest):
                recovery.used_at = _now()
                await audit.record(
                    uow.session,
                    "auth.recovery_code_used",
                    user_id=user.id,
                    entity="user",
                    entity_id=user.id,
                )
                return True
        return False

    def _accept_totp(self, stored: TotpSecret, user: User, code: str) -> bool:
        if not (len(code) == 6 and code.isdigit()):
            return False
        secret = open_sealed(
            self.keys,
            SealedSecret(stored.key_id, stored.wrapped_key, stored.ciphertext),
            user_id=user.id,
            connection_id=user.id,
        )
        totp = pyotp.TOTP(secret)
        current = int(time.time()) // totp.interval
        # One step of clock drift either way; each step's code is accepted once at most.
        for step in (current - 1, current, current + 1):
            if step > stored.last_step and hmac.compare_digest(totp.at(step * totp.interval), code):
                stored.last_step = step
                return True
        return False

    # ------------------------------------------------------------------ API tokens

    async def create_api_token(
        self,
        uow: UnitOfWork,
        actor: Actor,
        name: str,
        scopes: list[Scope],
        expires_at: datetime | None,
    ) -> tuple[str, ApiToken]:
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise InvalidInput("name", "name the token (1 to 100 characters)")
        if not scopes:
            raise InvalidInput("scopes", "choose at least one scope")
        if expires_at is not None and (expires_at.tzinfo is None or expires_at <= _now()):
            raise InvalidInput("expiresAt", "the expiry must be a future time with a timezone")
        token = _new_token("kx", actor.user_id)
        row = ApiToken(
            id=uuid.uuid4(),
            user_id=actor.user_id,
            name=name,
            token_hash=_digest(token),
            scopes=sorted({s.value for s in scopes}),
            expires_at=expires_at,
        )
        uow.session.add(row)
        await uow.session.flush()
        await audit.record(
            uow.session,
            "auth.api_token_created",
            user_id=actor.user_id,
            entity="api_token",
            entity_id=row.id,
            payload={"name": name, "scopes": row.scopes},
        )
        return token, row

    async def revoke_api_token(self, uow: UnitOfWork, actor: Actor, token_id: uuid.UUID) -> bool:
        revoked = await repo.revoke_api_token(uow.session, actor.user_id, token_id, _now())
        if revoked:
            await audit.record(
                uow.session,
                "auth.api_token_revoked",
                user_id=actor.user_id,
                entity="api_token",
                entity_id=token_id,
            )
        return revoked

    async def api_tokens(self, uow: UnitOfWork, actor: Actor) -> list[ApiToken]:
        return list(await repo.api_tokens(uow.session, actor.user_id))

    async def actor_for_api_token(self, uow: UnitOfWork, token: str) -> Actor | None:
        owner = _owner_of(token, "kx")
        if owner is None:
            return None
        await uow.act_as(owner)
        row = await repo.api_token_by_hash(uow.session, _digest(token))
        now = _now()
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
            return None
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now  # coarse, so a busy program does not write on every call
        return Actor(
            user_id=owner,
            scopes=frozenset(Scope(s) for s in row.scopes) & ALL_SCOPES,
            method=AuthMethod.API_TOKEN,
            api_token_id=row.id,
        )

    # ------------------------------------------------------------------ helpers

    async def me(self, uow: UnitOfWork, actor: Actor) -> User | None:
        return await repo.get_user(uow.session, actor.user_id)

    async def user(self, uow: UnitOfWork, actor: Actor) -> User:
        user = await repo.get_user(uow.session, actor.user_id)
        if user is None:
            raise InvalidCredentials("this account no longer exists")
        return user
