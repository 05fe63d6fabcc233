"""All mapped models, imported so Alembic and the mappers see every table."""

from db.models.agents import Agent, AgentExecution, Notification, Trigger
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
from db.models.brokers import BrokerConnection
from db.models.trading import Account, Fill, Order, PortfolioSnapshot, Position, RiskLimitsRow
from db.models.user import User

__all__ = [
    "Account",
    "Agent",
    "AgentExecution",
    "ApiToken",
    "AuditEvent",
    "AuthSession",
    "BrokerConnection",
    "EmailOutbox",
    "Fill",
    "Notification",
    "OneTimeToken",
    "Order",
    "PortfolioSnapshot",
    "Position",
    "RecoveryCode",
    "RefreshToken",
    "RiskLimitsRow",
    "TotpSecret",
    "Trigger",
    "User",
]
