"""Ids that reach Discord are never handed out twice (audit finding 3).

A plain SQLite ``INTEGER PRIMARY KEY`` reuses the largest deleted id; job ids travel in the
custom_ids of posted buttons, so a reused id lets an old message's buttons act on another
member's job. Migration 0004 rebuilds ``render_jobs`` and ``avatars`` with AUTOINCREMENT
(PostgreSQL sequences never reuse a value).
"""

from __future__ import annotations

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncConnection

from db.migrate import downgrade, upgrade
from db.models import Avatar, RenderJob
from db.session import Database

NOW = "2026-12-01 10:00:00"


async def _new_job(database: Database, user_id: int) -> int:
    async with database.begin() as session:
        job = RenderJob(user_id=user_id, prompt="a hat", settings={}, seed=1)
        session.add(job)
        await session.flush()
        return job.id


async def _new_avatar(database: Database, owner_id: int, name: str) -> int:
    async with database.begin() as session:
        avatar = Avatar(owner_id=owner_id, name=name, name_key=name.casefold(), kind="pet")
        session.add(avatar)
        await session.flush()
        return avatar.id


async def test_the_newest_deleted_ids_are_not_handed_out_again(database: Database) -> None:
    first = await _new_job(database, user_id=1)
    newest = await _new_job(database, user_id=1)
    pet = await _new_avatar(database, owner_id=1, name="Rex")
    async with database.begin() as session:  # alice's forget-me
        await session.execute(delete(RenderJob).where(RenderJob.id.in_([first, newest])))
        await session.execute(delete(Avatar).where(Avatar.id == pet))

    assert await _new_job(database, user_id=2) > newest
    assert await _new_avatar(database, owner_id=2, name="Dog") > pet


async def _sqlite_schema(conn: AsyncConnection, table: str) -> str:
    result = await conn.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}
    )
    return str(result.scalar_one())


async def test_sqlite_tables_at_head_use_autoincrement(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Also guards later revisions: SQLAlchemy does not reflect AUTOINCREMENT, so a batch
    rebuild of these tables without ``table_kwargs={"sqlite_autoincrement": True}`` drops it."""
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'head.db'}")
    try:
        await upgrade(database)
        async with database.engine.connect() as conn:
            for table in ("render_jobs", "avatars"):
                assert "AUTOINCREMENT" in (await _sqlite_schema(conn, table)).upper(), table
    finally:
        await database.dispose()


async def _exec(database: Database, *statements: str) -> None:
    async with database.begin() as session:
        for statement in statements:
            await session.execute(text(statement))


async def _scalars(database: Database, sql: str) -> list[object]:
    async with database.session() as session:
        return list((await session.execute(text(sql))).scalars())


async def test_upgrade_keeps_rows_and_children_and_starts_above_every_old_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await upgrade(database, "0003")
        job = (
            "INSERT INTO render_jobs (id, user_id, avatar_id, parent_job_id, prompt, settings, "
            "seed, created_at) VALUES ({id}, {user}, {avatar}, {parent}, 'p', '{{}}', 1, "
            f"'{NOW}')"
        )
        await _exec(
            database,
            f"INSERT INTO avatars (id, owner_id, name, name_key, kind, created_at, updated_at) "
            f"VALUES (7, 2, 'Rex', 'rex', 'pet', '{NOW}', '{NOW}')",
            "INSERT INTO photos (avatar_id, position, data, sha256, width, height, format, "
            f"created_at) VALUES (7, 0, x'00', '{'a' * 64}', 1, 1, 'PNG', '{NOW}')",
            job.format(id=3, user=2, avatar=7, parent="NULL"),
            job.format(id=4, user=2, avatar=7, parent=3),
            job.format(id=9, user=1, avatar="NULL", parent="NULL"),  # alice's, deleted below
            'INSERT INTO job_outputs (job_id, "index", data, seed, width, height, created_at) '
            f"VALUES (4, 0, x'89', 1, 8, 8, '{NOW}')",
            "INSERT INTO job_attempts (job_id, number, worker_id, claimed_at) "
            f"VALUES (4, 1, 'w', '{NOW}')",
            "INSERT INTO usage_ledger (guild_id, user_id, entry, amount, job_id, created_at) "
            f"VALUES (5, 2, 'reserve', 1, 4, '{NOW}')",
            "INSERT INTO usage_ledger (guild_id, user_id, entry, amount, job_id, created_at) "
            f"VALUES (5, 1, 'reserve', 1, 9, '{NOW}')",
        )
        # Alice's forget-me before the upgrade: her job's id (9) is above every remaining one.
        await _exec(database, "DELETE FROM render_jobs WHERE id = 9")

        await upgrade(database)

        assert await _scalars(database, "SELECT id FROM render_jobs ORDER BY id") == [3, 4]
        assert await _scalars(database, "SELECT parent_job_id FROM render_jobs WHERE id = 4") == [3]
        assert await _scalars(database, "SELECT job_id FROM job_outputs") == [4]
        assert await _scalars(database, "SELECT job_id FROM job_attempts") == [4]
        assert await _scalars(database, "SELECT count(*) FROM photos WHERE avatar_id = 7") == [1]
        assert await _scalars(database, "PRAGMA foreign_key_check") == []
        assert await _scalars(database, "PRAGMA foreign_keys") == [1]

        new_job = await _new_job(database, user_id=3)
        new_avatar = await _new_avatar(database, owner_id=3, name="Cat")
        assert new_job > 9 and new_avatar > 7

        await downgrade(database, "0003")
        assert await _scalars(database, "SELECT id FROM render_jobs ORDER BY id") == [3, 4, new_job]
        await upgrade(database)
        assert await _new_job(database, user_id=3) > new_job
    finally:
        await database.dispose()


async def test_a_fresh_database_starts_at_one(database: Database) -> None:
    assert await _new_job(database, user_id=1) == 1
