"""Row-level security holds even when the application code is wrong."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from db.engine import Database
from db.models import User
from kianax.settings import Settings


async def _make_user(db: Database) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with db.transaction(user_id) as uow:
        uow.session.add(User(id=user_id, email=f"{user_id}@example.com", password_hash="x"))
    return user_id


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.runtime_database_url, pool_size=2, max_overflow=0)
    yield database
    await database.dispose()


async def test_runtime_role_owns_nothing_and_cannot_bypass_rls(db: Database) -> None:
    async with db.engine.connect() as connection:
        role = (
            await connection.execute(
                text(
                    "SELECT rolsuper, rolbypassrls, "
                    "(SELECT count(*) FROM pg_class WHERE relowner = r.oid) "
                    "FROM pg_roles r WHERE rolname = current_user"
                )
            )
        ).one()
    assert role == (False, False, 0)


async def test_wrong_user_id_sees_nothing_even_with_a_raw_query(db: Database) -> None:
    alice, bob = await _make_user(db), await _make_user(db)
    async with db.transaction(bob) as uow:
        # A "buggy resolver": no owner filter at all, asking for Alice by id.
        unfiltered = text(f"SELECT email FROM users WHERE id = '{alice}'")  # noqa: S608
        rows = (await uow.session.execute(unfiltered)).all()
        visible = await uow.session.scalar(select(func.count()).select_from(User))
    assert rows == []
    assert visible == 1  # only Bob himself


async def test_no_user_set_sees_nothing(db: Database) -> None:
    await _make_user(db)
    async with db.transaction(None) as uow:
        assert await uow.session.scalar(select(func.count()).select_from(User)) == 0


async def test_cannot_write_a_row_for_another_user(db: Database) -> None:
    mallory = await _make_user(db)
    victim = uuid.uuid4()
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.transaction(mallory) as uow:
            uow.session.add(User(id=victim, email=f"{victim}@example.com", password_hash="x"))


async def test_setting_is_local_to_the_transaction(db: Database) -> None:
    alice = await _make_user(db)
    async with db.transaction(alice) as uow:
        assert await uow.session.scalar(text("SELECT current_setting('app.user_id', true)")) == str(
            alice
        )
    async with db.engine.connect() as connection:
        leaked = await connection.scalar(text("SELECT current_setting('app.user_id', true)"))
    assert leaked in (None, "")


async def test_every_user_table_forces_rls(owner_engine) -> None:  # type: ignore[no-untyped-def]
    async with owner_engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
                    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'user_id' "
                    "WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace"
                )
            )
        ).all()
    assert rows, "expected user-owned tables"
    assert [r for r in rows if not (r[1] and r[2])] == []


async def test_a_failed_after_commit_action_neither_undoes_nor_hides_the_commit(
    db: Database,
) -> None:
    user_id = uuid.uuid4()
    ran: list[str] = []

    async def broken() -> None:
        raise ConnectionError("Redis is away")

    async def later() -> None:
        ran.append("later")

    async with db.transaction(user_id) as uow:
        uow.session.add(User(id=user_id, email=f"{user_id}@example.com", password_hash="x"))
        uow.after_commit(broken)
        uow.after_commit(later)
    assert ran == ["later"]
    async with db.transaction(user_id) as uow:
        assert await uow.session.get(User, user_id) is not None
