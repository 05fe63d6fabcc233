"""Broker connections: each user's own Alpaca account, with sealed API keys.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from db.rls import APP_ROLE, owner_policy

revision: str = "0004"
# 0005 is another area's branch on 0003; `kianax migrate` applies every head.
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The worker's trade-stream manager and reconciliation cron need to know which connections
# to serve across users: the working ones (one in error waits for its user to reconnect or
# sync it). They learn ids only; every read of a connection (and its sealed keys) then
# happens in a transaction scoped to its owner, under row-level security.
ACTIVE_BROKER_CONNECTIONS = """
CREATE FUNCTION active_broker_connections() RETURNS TABLE (user_id uuid, connection_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT c.user_id, c.id FROM broker_connections c WHERE c.status = 'connected'
$$
"""


def upgrade() -> None:
    op.create_table(
        "broker_connections",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("environment", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("account_number", sa.String(64)),
        sa.Column("key_hint", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("wrapped_key", sa.LargeBinary()),
        sa.Column("ciphertext", sa.LargeBinary()),
        sa.Column("last_synced_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(500)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("disconnected_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("provider IN ('ALPACA')", name="provider_known"),
        sa.CheckConstraint("environment IN ('PAPER', 'LIVE')", name="environment_known"),
        sa.CheckConstraint("status IN ('connected', 'error', 'disconnected')", name="status_known"),
        # A connection that can still be used holds all of its sealed secret; a
        # disconnected one holds none of it.
        sa.CheckConstraint(
            "(status = 'disconnected') = (key_id IS NULL AND wrapped_key IS NULL "
            "AND ciphertext IS NULL) AND (key_id IS NULL) = (wrapped_key IS NULL) "
            "AND (key_id IS NULL) = (ciphertext IS NULL)",
            name="sealed_secret_whole",
        ),
    )
    # One connection per provider at a time: an order names its provider (BrokerKind).
    op.create_index(
        op.f("uq_broker_connections_active"),
        "broker_connections",
        ["user_id", "provider"],
        unique=True,
        postgresql_where=sa.text("status <> 'disconnected'"),
    )
    for statement in owner_policy("broker_connections"):
        op.execute(statement)
    op.execute(ACTIVE_BROKER_CONNECTIONS)
    op.execute("REVOKE ALL ON FUNCTION active_broker_connections() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION active_broker_connections() TO {APP_ROLE}")

    op.create_foreign_key(
        op.f("fk_accounts_broker_connection_id_broker_connections"),
        "accounts",
        "broker_connections",
        ["broker_connection_id"],
        ["id"],
    )
    # A broker's cash is the broker's: a fill it reports has happened, even when it takes
    # cash below what Kianax reserved (or below zero, on margin). The conditional UPDATE in
    # `reserve` still keeps new orders within buying power; the paper broker keeps the
    # stricter rule, under which it refuses such a fill itself.
    op.drop_constraint(op.f("ck_accounts_reserved_within_cash"), "accounts", type_="check")
    op.create_check_constraint(
        "reserved_within_cash", "accounts", "reserved <= cash OR broker <> 'PAPER'"
    )

    op.add_column(
        "orders", sa.Column("broker", sa.String(20), server_default="PAPER", nullable=False)
    )
    op.execute(
        "UPDATE orders o SET broker = a.broker FROM accounts a "
        "WHERE a.id = o.account_id AND o.broker <> a.broker"
    )
    # Trade events and reconciliation find an order by the broker's id for it.
    op.create_index(
        op.f("uq_orders_account_broker_order_id"),
        "orders",
        ["account_id", "broker_order_id"],
        unique=True,
        postgresql_where=sa.text("broker_order_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_orders_account_broker_order_id"), "orders")
    op.drop_column("orders", "broker")
    op.drop_constraint(op.f("ck_accounts_reserved_within_cash"), "accounts", type_="check")
    op.create_check_constraint("reserved_within_cash", "accounts", "reserved <= cash")
    op.drop_constraint(
        op.f("fk_accounts_broker_connection_id_broker_connections"), "accounts", type_="foreignkey"
    )
    op.execute("DROP FUNCTION active_broker_connections()")
    op.drop_table("broker_connections")
