"""The session factory: SQLite pragmas, serialised writers, read-only sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from db.models import UsageLedger
from db.session import Database

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@sqlite_only
async def test_sqlite_pragmas_on_every_connection(database: Database) -> None:
    async def pragmas() -> tuple[str, int, int, int]:
        async with database.session() as s:
            return (
                (await s.execute(text("PRAGMA journal_mode"))).scalar_one(),
                (await s.execute(text("PRAGMA foreign_keys"))).scalar_one(),
                (await s.execute(text("PRAGMA busy_timeout"))).scalar_one(),
                (await s.execute(text("PRAGMA synchronous"))).scalar_one(),
            )

    # Several at once, so the pool opens several connections.
    results = await asyncio.gather(*(pragmas() for _ in range(4)))
    assert set(results) == {("wal", 1, 30000, 1)}  # synchronous NORMAL == 1


async def test_sqlite_creates_the_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "bot.db"
    db = Database.from_url(f"sqlite+aiosqlite:///{path}")
    try:
        async with db.begin() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
        assert path.is_file()
        assert db.dialect == "sqlite"
    finally:
        await db.dispose()


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        Database.from_url("mysql+aiomysql://u@h/db")


async def test_dialect_names(database: Database) -> None:
    assert database.dialect in {"sqlite", "postgresql"}
    assert database.dialect == database.url.get_backend_name()


async def test_concurrent_read_then_write_transactions(database: Database) -> None:
    """Each transaction reads the total, then appends: none may fail with "database is locked".

    On SQLite, BEGIN IMMEDIATE serialises them, so each one also sees all earlier ones.
    """

    async def append(i: int) -> int:
        async with database.begin() as s:
            seen = (await s.execute(select(func.count()).select_from(UsageLedger))).scalar_one()
            await asyncio.sleep(0)  # let the others interleave between read and write
            s.add(UsageLedger(guild_id=1, user_id=i, entry="grant", amount=1))
        return int(seen)

    seen = await asyncio.gather(*(append(i) for i in range(30)))
    async with database.session(readonly=True) as s:
        total = (await s.execute(select(func.count()).select_from(UsageLedger))).scalar_one()
    assert total == 30
    if database.dialect == "sqlite":
        assert sorted(seen) == list(range(30))


@sqlite_only
async def test_readonly_session_does_not_take_the_write_lock(database: Database) -> None:
    async with database.begin() as writer:
        writer.add(UsageLedger(guild_id=1, user_id=1, entry="grant", amount=1))
        await writer.flush()  # the writer holds the lock and has not committed
        async with database.begin(readonly=True) as reader:
            count = await asyncio.wait_for(
                reader.execute(select(func.count()).select_from(UsageLedger)), timeout=5
            )
            assert count.scalar_one() == 0  # its snapshot predates the uncommitted write


async def test_begin_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError):
        async with database.begin() as s:
            s.add(UsageLedger(guild_id=1, user_id=1, entry="grant", amount=1))
            await s.flush()
            raise RuntimeError("boom")
    async with database.session() as s:
        assert (await s.execute(select(func.count()).select_from(UsageLedger))).scalar_one() == 0
