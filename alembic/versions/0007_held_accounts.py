"""The worker's list of accounts that hold positions, for periodic equity snapshots.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op
from db.rls import APP_ROLE

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Ids only, like the other cross-user reads: each account is then valued in a transaction
# scoped to its owner, under row-level security like any request.
HELD_ACCOUNTS = """
CREATE FUNCTION held_accounts() RETURNS TABLE (user_id uuid, account_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT DISTINCT p.user_id, p.account_id FROM positions p WHERE p.quantity <> 0
$$
"""


def upgrade() -> None:
    op.execute(HELD_ACCOUNTS)
    op.execute("REVOKE ALL ON FUNCTION held_accounts() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION held_accounts() TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP FUNCTION held_accounts()")
