"""All mapped models, imported so Alembic and the mappers see every table."""

from db.models.audit import AuditEvent
from db.models.auth import (
    ApiToken,
    AuthSession,
    EmailOutbox,
    OneTimeToken,
    RecoveryCode,
    RefreshToken,
    TotpSecret,
)
from db.models.user import User

__all__ = [
    "ApiToken",
    "AuditEvent",
    "AuthSession",
    "EmailOutbox",
    "OneTimeToken",
    "RecoveryCode",
    "RefreshToken",
    "TotpSecret",
    "User",
]
