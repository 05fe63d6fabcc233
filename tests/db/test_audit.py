"""The audit log is append-only and hash-chained."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from db.engine import Database
from domain import audit
from kianax.settings import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.runtime_database_url, pool_size=5, max_overflow=20)
    yield database
    await database.dispose()


async def _record(db: Database, user_id: uuid.UUID | None, kind: str = "test.event") -> None:
    async with db.transaction(user_id) as uow:
        await audit.record(uow.session, kind, user_id=user_id, entity="test", payload={"n": 1})


async def test_update_and_delete_are_refused_even_for_the_owner(
    db: Database, owner_engine: AsyncEngine
) -> None:
    await _record(db, None)
    for statement in (
        "UPDATE audit_events SET kind = 'forged'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with owner_engine.begin() as connection:
                await connection.execute(text(statement))


async def test_app_role_has_no_update_privilege(db: Database) -> None:
    user = uuid.uuid4()
    await _record(db, None)
    with pytest.raises(DBAPIError, match="permission denied"):
        async with db.transaction(user) as uow:
            await uow.session.execute(text("UPDATE audit_events SET kind = 'x'"))


async def test_concurrent_inserts_form_one_unbroken_chain(
    db: Database, owner_engine: AsyncEngine
) -> None:
    users = [uuid.uuid4() for _ in range(5)]
    await asyncio.gather(*(_record(db, u) for u in users for _ in range(8)))
    async with AsyncSession(owner_engine) as session:
        report = await audit.verify_chain(session)
        seqs = (
            (await session.execute(text("SELECT seq FROM audit_events ORDER BY seq")))
            .scalars()
            .all()
        )
    assert report.ok, report
    assert report.rows >= 40
    assert list(seqs) == list(range(1, len(seqs) + 1))


async def test_a_tampered_row_is_detected(db: Database, owner_engine: AsyncEngine) -> None:
    await _record(db, None, kind="before.tamper")
    async with owner_engine.connect() as connection:
        transaction = await connection.begin()
        seq = await connection.scalar(text("SELECT max(seq) FROM audit_events"))
        # Only someone able to switch triggers off can even try; the chain still tells.
        await connection.execute(
            text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
        )
        await connection.execute(
            text("UPDATE audit_events SET payload = '{\"n\": 2}' WHERE seq = :seq"), {"seq": seq}
        )
        async with AsyncSession(bind=connection) as session:
            report = await audit.verify_chain(session)
        await transaction.rollback()
    assert report.broken_at == seq
    assert report.reason == "row content does not match its hash"


async def test_users_read_only_their_own_events(db: Database) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await _record(db, alice, "alice.event")
    async with db.transaction(bob) as uow:
        kinds = (await uow.session.execute(text("SELECT kind FROM audit_events"))).scalars().all()
    assert "alice.event" not in kinds
