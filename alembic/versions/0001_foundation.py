"""Foundation: the app role, users, and the append-only, hash-chained audit log.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from db.rls import APP_ROLE, CURRENT_USER, create_app_role_sql, owner_policy

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One canonical text per row, used both by the insert trigger and by verification, so the
# two can never disagree. jsonb's text form is deterministic for a given value.
AUDIT_CANONICAL = """
CREATE FUNCTION audit_canonical(e audit_events) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_array(
    e.seq, e.prev_hash, e.id::text, e.user_id::text, e.kind, e.entity, e.entity_id, e.payload,
    to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
  )::text
$$;
"""

# SECURITY DEFINER: the chain head is invisible to the app role, and the previous row may
# belong to another user. The row lock on the head serializes inserts until commit, so two
# transactions can never chain to the same predecessor.
AUDIT_CHAIN_TRIGGER = [
    """
    CREATE FUNCTION audit_events_chain() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    DECLARE
      head audit_chain_head%ROWTYPE;
    BEGIN
      SELECT * INTO head FROM audit_chain_head WHERE id FOR UPDATE;
      NEW.seq := head.seq + 1;
      NEW.prev_hash := head.hash;
      NEW.hash := encode(sha256(convert_to(audit_canonical(NEW), 'UTF8')), 'hex');
      UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE id;
      RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_chain()",
    """
    CREATE FUNCTION audit_events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_reject_change()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_reject_change()",
]


def upgrade() -> None:
    op.execute(create_app_role_sql())
    op.execute(f"REVOKE ALL ON SCHEMA public FROM {APP_ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("email_verified_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    for statement in owner_policy("users", column="id"):
        op.execute(statement)

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("user_id", sa.Uuid()),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(128)),
        sa.Column("payload", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("prev_hash", sa.String(64), server_default="", nullable=False),
        sa.Column("hash", sa.String(64), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.UniqueConstraint("seq", name="uq_audit_events_seq"),
    )
    op.create_index("ix_audit_events_user_seq", "audit_events", ["user_id", "seq"])
    op.execute(
        "CREATE TABLE audit_chain_head (id boolean PRIMARY KEY DEFAULT true CHECK (id), "
        "seq bigint NOT NULL, hash text NOT NULL)"
    )
    op.execute("INSERT INTO audit_chain_head VALUES (true, 0, repeat('0', 64))")
    op.execute(AUDIT_CANONICAL)
    for statement in AUDIT_CHAIN_TRIGGER:
        op.execute(statement)
    # Users read their own events; anyone may append events about themselves or about
    # nobody (a failed login for an unknown email); nobody may change one.
    op.execute("ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_events FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY audit_events_read ON audit_events FOR SELECT "
        f"USING (user_id = {CURRENT_USER})"
    )
    op.execute(
        "CREATE POLICY audit_events_append ON audit_events FOR INSERT "
        f"WITH CHECK (user_id IS NULL OR user_id = {CURRENT_USER})"
    )
    op.execute(f"GRANT SELECT, INSERT ON audit_events TO {APP_ROLE}")


def downgrade() -> None:
    # CASCADE takes the triggers and audit_canonical, which depends on the row type.
    op.execute("DROP TABLE audit_events CASCADE")
    op.execute("DROP TABLE audit_chain_head")
    op.execute("DROP FUNCTION audit_events_chain()")
    op.execute("DROP FUNCTION audit_events_reject_change()")
    op.drop_table("users")
