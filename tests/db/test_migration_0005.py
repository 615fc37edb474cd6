"""Migration 0005: ``render_jobs.with_avatar_id``, a render's second avatar, on both databases.

Jobs written before it keep their rows and read as one-subject renders (NULL); the column
references ``avatars`` with ON DELETE SET NULL like ``avatar_id``; the downgrade drops it and
keeps every job.
"""

from __future__ import annotations

from sqlalchemy import inspect, text

from db.migrate import current_revision, downgrade, upgrade
from db.session import Database

NOW = "2026-12-01 10:00:00+00:00"


async def _exec(database: Database, *statements: str) -> None:
    async with database.begin() as session:
        for statement in statements:
            await session.execute(text(statement))


async def _rows(database: Database, sql: str) -> list[tuple[object, ...]]:
    async with database.session() as session:
        return [tuple(row) for row in (await session.execute(text(sql))).all()]


async def _columns(database: Database) -> list[str]:
    async with database.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: [col["name"] for col in inspect(c).get_columns("render_jobs")]
        )


def _avatar(avatar_id: int, name: str) -> str:
    return (
        "INSERT INTO avatars (id, owner_id, name, name_key, kind, created_at, updated_at) "
        f"VALUES ({avatar_id}, 2, '{name}', '{name.lower()}', 'pet', '{NOW}', '{NOW}')"
    )


def _job(job_id: int, avatar_id: int, *, with_avatar_id: int | None = None) -> str:
    columns = "id, user_id, avatar_id, prompt, settings, seed, created_at"
    values = f"{job_id}, 2, {avatar_id}, 'p', '{{}}', 1, '{NOW}'"
    if with_avatar_id is not None:
        columns += ", with_avatar_id"
        values += f", {with_avatar_id}"
    return f"INSERT INTO render_jobs ({columns}) VALUES ({values})"


async def test_0005_adds_the_second_avatar_and_keeps_every_job(db_url: str) -> None:
    database = Database.from_url(db_url)
    try:
        await upgrade(database, "0004")
        png = "x'89'" if database.dialect == "sqlite" else "'\\x89'::bytea"
        await _exec(
            database,
            _avatar(7, "Rex"),
            _avatar(8, "Mia"),
            _job(3, 7),
            'INSERT INTO job_outputs (job_id, "index", data, seed, width, height, created_at) '
            f"VALUES (3, 0, {png}, 1, 8, 8, '{NOW}')",
        )
        assert "with_avatar_id" not in await _columns(database)
        if database.dialect == "sqlite":  # the newest job, deleted: its id stays used
            await _exec(database, _job(9, 7), "DELETE FROM render_jobs WHERE id = 9")

        await upgrade(database, "0005")
        assert await current_revision(database) == "0005"
        # The old job is a one-subject render; its output and references are untouched.
        assert await _rows(database, "SELECT id, avatar_id, with_avatar_id FROM render_jobs") == [
            (3, 7, None)
        ]
        assert await _rows(database, "SELECT job_id FROM job_outputs") == [(3,)]
        if database.dialect == "sqlite":
            # The rebuild kept AUTOINCREMENT and its high-water mark (ids never reused, 0004).
            assert await _rows(
                database, "SELECT seq FROM sqlite_sequence WHERE name = 'render_jobs'"
            ) == [(9,)]

        await _exec(database, _job(4, 8, with_avatar_id=7), _job(5, 7, with_avatar_id=8))
        # Deleting a second avatar sets the reference to NULL, as for the first one.
        await _exec(database, "DELETE FROM avatars WHERE id = 7")
        assert await _rows(
            database, "SELECT id, avatar_id, with_avatar_id FROM render_jobs ORDER BY id"
        ) == [(3, None, None), (4, 8, None), (5, None, 8)]
        if database.dialect == "sqlite":
            assert await _rows(database, "PRAGMA foreign_key_check") == []

        await downgrade(database, "0004")
        assert "with_avatar_id" not in await _columns(database)
        assert await _rows(database, "SELECT id, avatar_id FROM render_jobs ORDER BY id") == [
            (3, None),
            (4, 8),
            (5, None),
        ]
        await upgrade(database)
        assert await _rows(database, "SELECT id, with_avatar_id FROM render_jobs ORDER BY id") == [
            (3, None),
            (4, None),
            (5, None),
        ]
    finally:
        await database.dispose()
