"""Migration 0006 on both databases: ``counted_events`` (withheld renders and avatar creations,
kinds checked, its job reference set to NULL when the job goes), ``guild_settings
.withheld_per_day`` and ``departed_guilds`` appear; existing rows stay; the downgrade drops
them and keeps the rest."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

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


async def _schema(database: Database) -> tuple[set[str], list[str]]:
    async with database.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: (
                set(inspect(c).get_table_names()),
                [col["name"] for col in inspect(c).get_columns("guild_settings")],
            )
        )


def _event(row_id: int, kind: str, job_id: int | None = None) -> str:
    job = "NULL" if job_id is None else str(job_id)
    return (
        "INSERT INTO counted_events (id, kind, guild_id, user_id, job_id, created_at) "
        f"VALUES ({row_id}, '{kind}', 5, 2, {job}, '{NOW}')"
    )


async def test_0006_adds_counted_events_and_departed_guilds(db_url: str) -> None:
    database = Database.from_url(db_url)
    try:
        await upgrade(database, "0005")
        await _exec(
            database,
            "INSERT INTO usage_ledger (id, guild_id, user_id, entry, amount, created_at) "
            f"VALUES (1, 5, 2, 'reserve', 1, '{NOW}')",
            f"INSERT INTO guild_settings (guild_id, renders_per_day, created_at, updated_at) "
            f"VALUES (5, 3, '{NOW}', '{NOW}')",
            "INSERT INTO render_jobs (id, user_id, prompt, settings, seed, created_at) "
            f"VALUES (3, 2, 'p', '{{}}', 1, '{NOW}')",
        )
        tables, columns = await _schema(database)
        assert "counted_events" not in tables and "withheld_per_day" not in columns

        await upgrade(database, "0006")
        assert await current_revision(database) == "0006"
        tables, columns = await _schema(database)
        assert {"counted_events", "departed_guilds"} <= tables and "withheld_per_day" in columns
        assert await _rows(database, "SELECT withheld_per_day FROM guild_settings") == [(None,)]
        await _exec(
            database,
            _event(1, "withheld", job_id=3),
            _event(2, "create"),
            f"INSERT INTO departed_guilds (guild_id, removed_at) VALUES (5, '{NOW}')",
        )
        with pytest.raises(IntegrityError):  # the kinds are checked
            await _exec(database, _event(9, "free"))
        with pytest.raises(IntegrityError):  # one row per departed guild
            await _exec(
                database, f"INSERT INTO departed_guilds (guild_id, removed_at) VALUES (5, '{NOW}')"
            )
        # Deleting the job keeps the count, without the reference.
        await _exec(database, "DELETE FROM render_jobs WHERE id = 3")
        assert await _rows(database, "SELECT id, kind, job_id FROM counted_events ORDER BY id") == [
            (1, "withheld", None),
            (2, "create", None),
        ]

        await downgrade(database, "0005")
        tables, columns = await _schema(database)
        assert not {"counted_events", "departed_guilds"} & tables
        assert "withheld_per_day" not in columns
        assert await _rows(database, "SELECT id, entry FROM usage_ledger") == [(1, "reserve")]
        assert await _rows(database, "SELECT guild_id, renders_per_day FROM guild_settings") == [
            (5, 3)
        ]
        await upgrade(database)
        await _exec(database, _event(1, "create"))
    finally:
        await database.dispose()
