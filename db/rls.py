"""Row-level security, applied by migrations. Every user-owned table calls `owner_policy`."""

from __future__ import annotations

from collections.abc import Sequence

APP_ROLE = "kianax_app"
# Missing or empty setting -> NULL -> no row matches: a transaction that forgot to set the
# user sees nothing rather than everything.
CURRENT_USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"


def create_app_role_sql(role: str = APP_ROLE) -> str:
    """The runtime role: owns nothing, cannot bypass RLS. `kianax migrate` gives it a password."""
    return f"""
    DO $$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT;
      END IF;
    END $$;
    """


def owner_policy(
    table: str,
    *,
    column: str = "user_id",
    privileges: Sequence[str] = ("SELECT", "INSERT", "UPDATE", "DELETE"),
    role: str = APP_ROLE,
) -> list[str]:
    """Statements that confine `role` to the current user's rows of `table`."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        # FORCE so that even a connection as the table owner is filtered.
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_owner ON {table} USING ({column} = {CURRENT_USER}) "
        f"WITH CHECK ({column} = {CURRENT_USER})",
        f"GRANT {', '.join(privileges)} ON {table} TO {role}",
    ]
