"""Agents, their triggers, their executions, and notifications.

Revision ID: 0005
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from db.rls import APP_ROLE, owner_policy

revision: str = "0005"
# 0004 is another area's branch on 0003; `kianax migrate` applies every head.
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(20, 4)
OWNED = ("agents", "triggers", "agent_executions", "notifications")

# An execution is the record of what an agent saw, decided and did. While it runs it is
# filled in; once finished it is history, and nobody -- the app, a worker, a bug -- may
# rewrite or remove it. Fires on every path, row-level security or not.
EXECUTIONS_IMMUTABLE = """
CREATE FUNCTION agent_executions_immutable() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'agent executions cannot be deleted'
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  IF OLD.status <> 'RUNNING' THEN
    RAISE EXCEPTION 'agent execution % is finished and cannot change', OLD.id
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END $$
"""

# The worker's cross-user reads. Each returns ids only; the worker then reads a user's
# triggers in a transaction scoped to that user, under row-level security like any request.
ENABLED_TRIGGERS = """
CREATE FUNCTION enabled_triggers() RETURNS TABLE (user_id uuid, agent_id uuid, trigger_id uuid,
  type text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT t.user_id, t.agent_id, t.id, t.type FROM triggers t JOIN agents a ON a.id = t.agent_id
  WHERE t.enabled AND a.status = 'ACTIVE' AND a.deleted_at IS NULL
$$
"""
TRIGGER_FOR_WEBHOOK = """
CREATE FUNCTION trigger_for_webhook(webhook_trigger_id uuid) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT t.user_id FROM triggers t WHERE t.id = webhook_trigger_id AND t.type = 'WEBHOOK'
$$
"""
FUNCTIONS = ("enabled_triggers()", "trigger_for_webhook(uuid)")


def _user() -> sa.Column[object]:
    return sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id"), nullable=False, index=True)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("kind", sa.String(20), nullable=False, server_default="PROMPT"),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.String(1000)),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("symbols", postgresql.ARRAY(sa.String(16)), nullable=False, server_default="{}"),
        sa.Column("llm_provider", sa.String(20), nullable=False),
        sa.Column("llm_model", sa.String(100), nullable=False),
        sa.Column("llm_temperature", sa.Numeric(4, 2), nullable=False),
        sa.Column("max_position_value", MONEY),
        sa.Column("max_daily_trades", sa.Integer()),
        sa.Column("allocation_percent", sa.Numeric(7, 4), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        # Agents are never deleted: their executions and orders stay attributed to them.
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('ACTIVE', 'PAUSED')", name="status"),
        sa.CheckConstraint(
            "allocation_percent >= 0 AND allocation_percent <= 100", name="allocation_percent"
        ),
        sa.CheckConstraint("max_position_value IS NULL OR max_position_value > 0", name="max_pos"),
        sa.CheckConstraint("max_daily_trades IS NULL OR max_daily_trades >= 0", name="max_trades"),
    )
    op.create_index(
        "uq_agents_user_name",
        "agents",
        ["user_id", sa.text("lower(name)")],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "triggers",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("agent_id", sa.Uuid(), sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("config", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default="true"),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_fired_at", sa.DateTime(timezone=True)),
        # The webhook signing secret, sealed (domain.brokers.crypto) with the user id and
        # the trigger id as associated data.
        sa.Column("secret_key_id", sa.String(64)),
        sa.Column("secret_wrapped_key", sa.LargeBinary()),
        sa.Column("secret_ciphertext", sa.LargeBinary()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.CheckConstraint("cooldown_seconds >= 0", name="cooldown"),
        sa.CheckConstraint(
            "(type = 'WEBHOOK') = (secret_ciphertext IS NOT NULL)", name="webhook_secret"
        ),
    )
    op.create_table(
        "agent_executions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("agent_id", sa.Uuid(), sa.ForeignKey("agents.id"), nullable=False),
        # No foreign key: a removed trigger is deleted, while the runs it caused stay.
        sa.Column("trigger_id", sa.Uuid()),
        sa.Column("trigger_type", sa.String(20), nullable=False),
        sa.Column("event_key", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("context", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("prompt", sa.Text()),
        sa.Column("model", sa.String(100)),
        sa.Column("input_tokens", sa.Integer()),
        sa.Column("output_tokens", sa.Integer()),
        sa.Column("cost_usd", sa.Numeric(14, 6)),
        sa.Column("latency_ms", sa.Integer()),
        sa.Column("reasoning", sa.Text()),
        sa.Column("decisions", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("risk_check", postgresql.JSONB()),
        sa.Column("order_ids", postgresql.ARRAY(sa.Uuid()), nullable=False, server_default="{}"),
        sa.Column("outcome", sa.String(40)),
        sa.Column("summary", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED')", name="status"
        ),
        sa.CheckConstraint("(status = 'RUNNING') = (finished_at IS NULL)", name="finished"),
        # One run per (agent, event): a duplicate event or a retried job finds this row.
        sa.UniqueConstraint("agent_id", "event_key"),
    )
    op.create_index(
        "ix_agent_executions_agent_started", "agent_executions", ["agent_id", "started_at"]
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _user(),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Uuid()),
        sa.Column("execution_id", sa.Uuid()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_notifications_user_created", "notifications", ["user_id", "created_at"])
    for table in OWNED:
        for statement in owner_policy(table):
            op.execute(statement)
    op.execute(EXECUTIONS_IMMUTABLE)
    op.execute(
        "CREATE TRIGGER agent_executions_immutable BEFORE UPDATE OR DELETE ON agent_executions "
        "FOR EACH ROW EXECUTE FUNCTION agent_executions_immutable()"
    )
    op.execute(ENABLED_TRIGGERS)
    op.execute(TRIGGER_FOR_WEBHOOK)
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {APP_ROLE}")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP TRIGGER agent_executions_immutable ON agent_executions")
    op.execute("DROP FUNCTION agent_executions_immutable()")
    for table in reversed(OWNED):
        op.drop_table(table)
