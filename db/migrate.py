"""Schema migrations through Alembic's API, with no alembic.ini.

The scripts live in the installed ``migrations`` package, so ``avatarbot db upgrade`` and the
app's upgrade at start work from a wheel as well as from a checkout. The migration runs on a
connection of our own engine (pragmas and BEGIN handling included) handed to ``env.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection

from db.session import Database

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key serialising upgrades (one-key form; no Discord id is this small).
MIGRATION_LOCK = 0x6D696772  # "migr"


def script_location() -> Path:
    """The folder holding ``env.py`` and ``versions/`` (inside the installed package)."""
    return Path(str(files("migrations")))


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at our scripts; ``connection`` is handed to env.py."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the installed scripts know (no database needed)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migration scripts found")
    return head


@asynccontextmanager
async def _database(target: Database | str | URL) -> AsyncIterator[Database]:
    if isinstance(target, Database):
        yield target
        return
    database = Database.from_url(target)
    try:
        yield database
    finally:
        await database.dispose()


async def _run(target: Database | str | URL, fn: Callable[[Connection], Any]) -> Any:
    async with _database(target) as database:
        # ``connect`` turns an unreachable database into one ``DatabaseUnavailable``.
        connection = await database.connect()
        try:
            # Not begun here: env.py sets SQLite pragmas outside a transaction, then begins.
            result = await connection.run_sync(fn)
            await connection.commit()
            return result
        finally:
            await connection.close()


async def upgrade(target: Database | str | URL, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest)."""

    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Processes starting together (the bot and its workers) upgrade one at a time;
            # the later ones find the schema at head. Held until this transaction commits.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        command.upgrade(alembic_config(connection), revision)

    await _run(target, run)
    logger.info("database upgraded to %s", revision)


async def downgrade(target: Database | str | URL, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``"base"`` drops every table)."""

    def run(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    await _run(target, run)
    logger.info("database downgraded to %s", revision)


async def current_revision(target: Database | str | URL) -> str | None:
    """The revision the database is at, or None when it has never been migrated."""

    def run(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    result: str | None = await _run(target, run)
    return result
