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
from db.models.trading import Account, Fill, Order, PortfolioSnapshot, Position, RiskLimitsRow
from db.models.user import User

__all__ = [
    "Account",
    "ApiToken",
    "AuditEvent",
    "AuthSession",
    "EmailOutbox",
    "Fill",
    "OneTimeToken",
    "Order",
    "PortfolioSnapshot",
    "Position",
    "RecoveryCode",
    "RefreshToken",
    "RiskLimitsRow",
    "TotpSecret",
    "User",
]
