"""Trading: accounts, orders, fills, positions, equity snapshots, risk limits.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from db.rls import APP_ROLE, owner_policy

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(20, 4)
QUANTITY = sa.Numeric(24, 9)
OWNED = ("accounts", "orders", "fills", "positions", "portfolio_snapshots", "risk_limits")

# The paper matcher in the worker watches every user's resting orders by symbol. It learns
# only which (user, order, symbol) are open; each order is then handled in a transaction
# scoped to its owner, under row-level security like any request.
OPEN_PAPER_ORDERS = """
CREATE FUNCTION open_paper_orders() RETURNS TABLE (user_id uuid, order_id uuid, symbol text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT o.user_id, o.id, o.symbol FROM orders o JOIN accounts a ON a.id = o.account_id
  WHERE a.broker = 'PAPER' AND o.status IN ('NEW', 'ACCEPTED', 'PARTIALLY_FILLED')
$$
"""


def _user() -> sa.Column[object]:
    return sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id"), nullable=False, index=True)


def _account() -> sa.Column[object]:
    return sa.Column(
        "account_id", sa.Uuid(), sa.ForeignKey("accounts.id"), nullable=False, index=True
    )


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("broker", sa.String(20), nullable=False),
        sa.Column("broker_connection_id", sa.Uuid()),
        sa.Column("starting_cash", MONEY, nullable=False),
        sa.Column("cash", MONEY, nullable=False),
        sa.Column("reserved", MONEY, server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        # Buying power (cash - reserved) can never go below zero, whatever runs at once.
        sa.CheckConstraint("reserved <= cash", name="reserved_within_cash"),
        sa.UniqueConstraint(
            "user_id", "broker", "broker_connection_id", postgresql_nulls_not_distinct=True
        ),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column(
            "account_id", sa.Uuid(), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("side", sa.String(20), nullable=False),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("time_in_force", sa.String(20), nullable=False),
        sa.Column("quantity", QUANTITY),
        sa.Column("notional", MONEY),
        sa.Column("limit_price", MONEY),
        sa.Column("stop_price", MONEY),
        sa.Column("trail_percent", sa.Numeric(8, 4)),
        sa.Column("trail_mark", MONEY),
        sa.Column("triggered", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("take_profit_price", MONEY),
        sa.Column("stop_loss_price", MONEY),
        sa.Column("extended_hours", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("parent_id", sa.Uuid(), sa.ForeignKey("orders.id")),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("filled_quantity", QUANTITY, server_default="0", nullable=False),
        sa.Column("average_fill_price", MONEY),
        sa.Column("reserved", MONEY, server_default="0", nullable=False),
        sa.Column("reject_reason", sa.String(500)),
        sa.Column("broker_order_id", sa.String(64)),
        sa.Column("agent_id", sa.Uuid(), index=True),
        sa.Column("execution_id", sa.Uuid()),
        sa.Column("submitted_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("user_id", "client_order_id"),
        sa.CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        sa.CheckConstraint("filled_quantity >= 0", name="filled_not_negative"),
    )
    op.create_index("ix_orders_user_submitted", "orders", ["user_id", "submitted_at"])
    op.create_index(
        "ix_orders_open_symbol",
        "orders",
        ["symbol"],
        postgresql_where=sa.text("status IN ('NEW', 'ACCEPTED', 'PARTIALLY_FILLED')"),
    )
    op.create_table(
        "fills",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("order_id", sa.Uuid(), sa.ForeignKey("orders.id"), nullable=False, index=True),
        sa.Column("account_id", sa.Uuid(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("side", sa.String(20), nullable=False),
        sa.Column("quantity", QUANTITY, nullable=False),
        sa.Column("price", MONEY, nullable=False),
        sa.Column("commission", MONEY, nullable=False),
        sa.Column("realized_pnl", MONEY, server_default="0", nullable=False),
        sa.Column("closes_position", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("agent_id", sa.Uuid()),
        sa.Column("broker_execution_id", sa.String(64), unique=True),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("quantity > 0 AND price > 0", name="positive"),
    )
    op.create_index("ix_fills_user_executed", "fills", ["user_id", "executed_at"])
    op.create_table(
        "positions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column(
            "account_id", sa.Uuid(), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("agent_id", sa.Uuid()),
        sa.Column("quantity", QUANTITY, nullable=False),
        sa.Column("cost_basis", MONEY, nullable=False),
        sa.Column("realized_pnl", MONEY, server_default="0", nullable=False),
        sa.Column("lots", postgresql.JSONB(), server_default="[]", nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.UniqueConstraint("account_id", "symbol", "agent_id", postgresql_nulls_not_distinct=True),
    )
    op.create_table(
        "portfolio_snapshots",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("account_id", sa.Uuid(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cash", MONEY, nullable=False),
        sa.Column("market_value", MONEY, nullable=False),
        sa.Column("equity", MONEY, nullable=False),
    )
    op.create_index("ix_snapshots_account_taken", "portfolio_snapshots", ["account_id", "taken_at"])
    op.create_table(
        "risk_limits",
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("max_position_value", MONEY),
        sa.Column("max_position_percent", sa.Numeric(8, 4)),
        sa.Column("max_daily_trades", sa.Integer()),
        sa.Column("max_sector_percent", sa.Numeric(8, 4)),
        sa.Column("stop_loss_percent", sa.Numeric(8, 4)),
        sa.Column("allow_short", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("allow_extended_hours", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    for table in OWNED:
        for statement in owner_policy(table):
            op.execute(statement)
    op.execute(OPEN_PAPER_ORDERS)
    op.execute("REVOKE ALL ON FUNCTION open_paper_orders() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION open_paper_orders() TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP FUNCTION open_paper_orders()")
    for table in reversed(OWNED):
        op.drop_table(table)
