"""Who is asking. Built by web/ from a credential and passed explicitly to every service."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass


class Scope(enum.StrEnum):
    READ = "READ"
    TRADE = "TRADE"
    AGENTS = "AGENTS"


ALL_SCOPES = frozenset(Scope)


class AuthMethod(enum.StrEnum):
    SESSION = "session"  # a signed-in person (access token)
    API_TOKEN = "api_token"  # noqa: S105 - a third-party program (personal API token)


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: uuid.UUID
    scopes: frozenset[Scope]
    method: AuthMethod
    session_id: uuid.UUID | None = None
    api_token_id: uuid.UUID | None = None

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes
