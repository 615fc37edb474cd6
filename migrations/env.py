"""Alembic environment: async engines, shared connections, SQLite batch mode.

Normally run through ``db.migrate`` (the app at start, ``avatarbot db ...``), which hands over
an open connection in ``config.attributes["connection"]``. Run by the plain ``alembic`` tool,
it connects to ``sqlalchemy.url`` from the config or ``$AVATARBOT_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from db.models import Base
from db.session import Database

config = context.config
target_metadata = Base.metadata

# Only the plain `alembic` tool passes an ini file (migrations/alembic.ini); in the app, logging
# is already configured and must not be reset.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("AVATARBOT_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or AVATARBOT_DATABASE_URL")
    return url


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=sqlite,
        # Alembic assumes SQLite DDL is not transactional because the sqlite3 driver commits
        # around it; db.session takes BEGIN over from the driver, so it is, and all pending
        # revisions run in one transaction that a failure rolls back entirely.
        transactional_ddl=True if sqlite else None,
        compare_type=True,
    )


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name != "sqlite":
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # A batch migration drops and recreates tables; with foreign keys on, dropping a parent
    # would run ON DELETE CASCADE into its children. SQLite only honours this pragma outside a
    # transaction, so it is set on the raw connection before alembic begins, and the
    # references are checked before it is turned back on.
    raw = connection.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")
    finally:
        if connection.in_transaction():  # nothing may stay open, or the pragma is a no-op
            connection.rollback()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA foreign_keys")
        restored = cursor.fetchone()
        cursor.close()
        if restored is None or restored[0] != 1:
            # Never hand a connection without foreign keys back to the pool.
            connection.invalidate()


async def _run_async() -> None:
    database = Database.from_url(_url())
    try:
        async with database.engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await database.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(_run_async())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
