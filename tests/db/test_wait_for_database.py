"""``Database.wait_until_reachable``: a database that is there answers at once; a mistake that
waiting cannot fix is raised at once instead of waited on for ever (the wait for a server
that comes back: tests/cli/test_waits_for_database.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from db.errors import DatabaseUnavailable
from db.session import Database


async def test_a_reachable_database_returns_at_once(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await database.wait_until_reachable()
    assert "database unreachable" not in caplog.text
    assert "database reachable" not in caplog.text  # no outage, nothing to announce


@pytest.mark.postgres
async def test_a_missing_postgres_database_is_not_waited_for(
    postgres_server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(postgres_server_url).set(database="no_such_database")
    database = Database.from_url(url)
    try:
        with pytest.raises(DatabaseUnavailable, match="no_such_database"):
            await database.wait_until_reachable()
    finally:
        await database.dispose()
    assert "retrying" not in caplog.text


async def test_an_unopenable_sqlite_file_is_not_waited_for(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.db"
    folder.mkdir()  # a folder where the database file should be
    database = Database.from_url(f"sqlite+aiosqlite:///{folder}")
    try:
        with pytest.raises(DatabaseUnavailable):
            await database.wait_until_reachable()
    finally:
        await database.dispose()
