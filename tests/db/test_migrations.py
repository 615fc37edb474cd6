"""The migrations build exactly the schema of the models, forwards and backwards, on both."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from db.migrate import (
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    script_location,
    upgrade,
)
from db.models import Avatar, Base, Photo
from db.session import Database

TABLES = {
    "alembic_version",
    "audit_log",
    "avatar_asks",
    "avatar_grants",
    "avatars",
    "bot_state",
    "consents",
    "counted_events",
    "departed_guilds",
    "features",
    "guild_settings",
    "job_attempts",
    "job_outputs",
    "photos",
    "render_jobs",
    "usage_ledger",
    "workers",
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

    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


_EXTRA_REVISION = """
revision = "0999"
down_revision = "{head}"
branch_labels = None
depends_on = None

from alembic import op
import sqlalchemy as sa


def _recreate():
    # SQLite: drop and recreate the parent table, as most of its ALTERs need.
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade():
    op.create_table("extra_table", sa.Column("id", sa.Integer, primary_key=True))
    with op.batch_alter_table("avatars", recreate=_recreate()) as batch:
        batch.add_column(sa.Column("extra", sa.Integer))
    {fail}


def downgrade():
    with op.batch_alter_table("avatars", recreate=_recreate()) as batch:
        batch.drop_column("extra")
    op.drop_table("extra_table")
"""


def _photo(avatar_id: int, digest: str) -> Photo:
    return Photo(
        avatar_id=avatar_id,
        position=0,
        data=b"x",
        sha256=digest * 64,
        width=1,
        height=1,
        format="PNG",
    )


async def _with_extra_revision(database: Database, tmp_path: Path, *, fail: bool) -> None:
    """Run a revision on top of head from a copy of our scripts (env.py included)."""
    scripts = tmp_path / "migrations"
    shutil.copytree(script_location(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0999_extra.py").write_text(
        _EXTRA_REVISION.format(
            head=head_revision(), fail='raise RuntimeError("failed halfway")' if fail else ""
        )
    )

    def run(connection: Connection) -> None:
        config = alembic_config(connection)
        config.set_main_option("script_location", str(scripts))
        command.upgrade(config, "head")

    async with database.engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


async def _avatar_with_a_photo(database: Database) -> None:
    async with database.begin() as s:
        avatar = Avatar(owner_id=1, name="Rex", name_key="rex", kind="pet")
        s.add(avatar)
        await s.flush()
        s.add(_photo(avatar.id, "d"))


async def _count_photos(database: Database) -> int:
    async with database.session() as s:
        return int((await s.execute(select(func.count()).select_from(Photo))).scalar_one())


async def _assert_foreign_keys_enforced(database: Database) -> None:
    with pytest.raises(IntegrityError):
        async with database.begin() as s:
            s.add(_photo(12345, "e"))


async def test_table_rebuild_keeps_children(database: Database, tmp_path: Path) -> None:
    """On SQLite a batch migration drops and recreates a parent table: with foreign keys on,
    the drop would cascade into its children. env.py turns them off for the migration only."""
    await _avatar_with_a_photo(database)
    await _with_extra_revision(database, tmp_path, fail=False)
    assert await current_revision(database) == "0999"
    assert await _count_photos(database) == 1
    await _assert_foreign_keys_enforced(database)


async def test_failed_migration_leaves_no_trace(database: Database, tmp_path: Path) -> None:
    await _avatar_with_a_photo(database)
    with pytest.raises(RuntimeError, match="halfway"):
        await _with_extra_revision(database, tmp_path, fail=True)
    assert await current_revision(database) == head_revision()
    assert "extra_table" not in await _tables(database)
    async with database.engine.connect() as conn:
        columns = await conn.run_sync(
            lambda c: [col["name"] for col in inspect(c).get_columns("avatars")]
        )
    assert "extra" not in columns
    assert await _count_photos(database) == 1
    await _assert_foreign_keys_enforced(database)
