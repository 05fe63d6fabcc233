from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, Timestamps


class User(Timestamps, Base):
    __tablename__ = "users"
    __table_args__ = (Index("uq_users_email_lower", func.lower("email"), unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320))
    password_hash: Mapped[str]
    email_verified_at: Mapped[datetime | None]
    password_changed_at: Mapped[datetime | None]
    two_factor_enabled_at: Mapped[datetime | None]
