"""The migrations build exactly the schema of the models, forwards and backwards, on both."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import Base
from db.session import Database

TABLES = {
    "alembic_version",
    "avatars",
    "bot_state",
    "consents",
    "features",
    "guild_settings",
    "job_outputs",
    "photos",
    "render_jobs",
    "usage_ledger",
}


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    db = Database.from_url(db_url)
    try:
        assert await current_revision(db) is None
        await upgrade(db)
        assert await current_revision(db) == head_revision()
        assert await _tables(db) == TABLES

        await downgrade(db, "base")
        assert await current_revision(db) is None
        assert await _tables(db) <= {"alembic_version"}

        await upgrade(db)
        assert await current_revision(db) == head_revision()
        assert await _tables(db) == TABLES
    finally:
        await db.dispose()


async def test_upgrade_accepts_a_url(db_url: str) -> None:
    await upgrade(db_url)
    assert await current_revision(db_url) == head_revision()


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, Base.metadata)


async def test_models_and_migrations_agree(database: Database) -> None:
    async with database.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []


async def test_migrations_have_one_head() -> None:
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1
