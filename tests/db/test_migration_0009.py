"""Migration 0009 on both databases: existing avatars may not be asked for (``others_may_ask``
false), ``avatar_grants`` and ``avatar_asks`` appear with their checks and cascades (an avatar's
deletion takes its grants and requests; a job's leaves the request without it), the guild
setting and the posted message's columns are NULL; the downgrade drops them and keeps the
rest."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db.migrate import current_revision, downgrade, upgrade
from db.session import Database

NOW = "2026-12-01 10:00:00+00:00"
LATER = "2026-12-01 10:15:00+00:00"


async def _exec(database: Database, *statements: str) -> None:
    async with database.begin() as session:
        for statement in statements:
            await session.execute(text(statement))


async def _rows(database: Database, sql: str) -> list[tuple[object, ...]]:
    async with database.session() as session:
        return [tuple(row) for row in (await session.execute(text(sql))).all()]


async def _tables(database: Database) -> set[str]:
    async with database.engine.connect() as conn:
        return await conn.run_sync(lambda c: set(inspect(c).get_table_names()))


def _avatar(row_id: int, owner: int) -> str:
    return (
        "INSERT INTO avatars (id, owner_id, name, name_key, kind, status, created_at, "
        f"updated_at) VALUES ({row_id}, {owner}, 'A{row_id}', 'a{row_id}', 'object', 'ready', "
        f"'{NOW}', '{NOW}')"
    )


def _ask(row_id: int, status: str = "pending", job: str = "NULL") -> str:
    return (
        "INSERT INTO avatar_asks (id, requester_id, owner_id, avatar_id, requester_avatar_id, "
        "prompt, settings, seed, status, job_id, created_at, expires_at) VALUES "
        f"({row_id}, 1, 2, 20, 10, 'sealed', '{{}}', 7, '{status}', {job}, '{NOW}', '{LATER}')"
    )


async def test_0009_adds_sharing_grants_and_asks(db_url: str) -> None:
    database = Database.from_url(db_url)
    try:
        await upgrade(database, "0008")
        await _exec(
            database,
            _avatar(10, 1),
            _avatar(20, 2),
            f"INSERT INTO guild_settings (guild_id, created_at, updated_at) "
            f"VALUES (5, '{NOW}', '{NOW}')",
            "INSERT INTO render_jobs (id, user_id, prompt, settings, seed, created_at) "
            f"VALUES (3, 1, 'p', '{{}}', 1, '{NOW}')",
        )
        await upgrade(database, "0009")
        assert await current_revision(database) == "0009"
        assert {"avatar_grants", "avatar_asks"} <= await _tables(database)
        # Existing avatars stay private; the rest starts empty.
        assert await _rows(database, "SELECT others_may_ask FROM avatars ORDER BY id") == [
            (False,),
            (False,),
        ]
        assert await _rows(database, "SELECT cross_member_renders FROM guild_settings") == [(None,)]
        assert await _rows(
            database, "SELECT posted_channel_id, posted_message_id FROM render_jobs"
        ) == [(None, None)]

        await _exec(
            database,
            "INSERT INTO avatar_grants (id, avatar_id, owner_id, grantee_id, created_at) "
            f"VALUES (1, 20, 2, 1, '{NOW}')",
            _ask(1, job="3"),
            _ask(2),
        )
        with pytest.raises(IntegrityError):  # one grant per avatar and member
            await _exec(
                database,
                "INSERT INTO avatar_grants (id, avatar_id, owner_id, grantee_id, created_at) "
                f"VALUES (2, 20, 2, 1, '{NOW}')",
            )
        with pytest.raises(IntegrityError):  # the statuses are checked
            await _exec(database, _ask(9, status="maybe"))
        # A job's deletion leaves the request without it.
        await _exec(database, "DELETE FROM render_jobs WHERE id = 3")
        assert await _rows(database, "SELECT id, job_id FROM avatar_asks ORDER BY id") == [
            (1, None),
            (2, None),
        ]
        # The avatar's deletion takes its grants and requests.
        await _exec(database, "DELETE FROM avatars WHERE id = 20")
        assert await _rows(database, "SELECT count(*) FROM avatar_grants") == [(0,)]
        assert await _rows(database, "SELECT count(*) FROM avatar_asks") == [(0,)]

        await downgrade(database, "0008")
        assert not {"avatar_grants", "avatar_asks"} & await _tables(database)
        assert await _rows(database, "SELECT id FROM avatars") == [(10,)]
    finally:
        await database.dispose()
