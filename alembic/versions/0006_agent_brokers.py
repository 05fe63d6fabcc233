"""Agents trade the paper account or the user's connected broker account.

Revision ID: 0006
Revises: 0004, 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
# Joins the brokers branch (0004) and the agents branch (0005): an agent now names the
# broker connection it trades through.
down_revision: str | tuple[str, ...] | None = ("0004", "0005")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "agents", sa.Column("broker", sa.String(20), server_default="PAPER", nullable=False)
    )
    # The connection the user approved the agent for, not merely "Alpaca": a connection
    # replaced by another (say a LIVE one) must not inherit the agents of the old one.
    op.add_column("agents", sa.Column("broker_connection_id", sa.Uuid()))
    op.create_check_constraint("broker_known", "agents", "broker IN ('PAPER', 'ALPACA')")
    op.create_check_constraint(
        "broker_connection",
        "agents",
        "(broker = 'PAPER') = (broker_connection_id IS NULL)",
    )
    # With the owner in the key, not even a write that forgot its owner filter can point
    # an agent at another user's connection (foreign-key checks do not see RLS).
    op.create_unique_constraint(
        op.f("uq_broker_connections_user_id"), "broker_connections", ["user_id", "id"]
    )
    op.create_foreign_key(
        op.f("fk_agents_user_id_broker_connections"),
        "agents",
        "broker_connections",
        ["user_id", "broker_connection_id"],
        ["user_id", "id"],
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_agents_user_id_broker_connections"), "agents", type_="foreignkey")
    op.drop_constraint(op.f("uq_broker_connections_user_id"), "broker_connections", type_="unique")
    op.drop_constraint(op.f("ck_agents_broker_connection"), "agents", type_="check")
    op.drop_constraint(op.f("ck_agents_broker_known"), "agents", type_="check")
    op.drop_column("agents", "broker_connection_id")
    op.drop_column("agents", "broker")
