"""The async engine and session factory, on SQLite (embedded) or PostgreSQL (scale-out).

SQLite has a single writer. A transaction that reads first and writes later (``BEGIN``
DEFERRED, what the sqlite3 driver does) holds a read snapshot; when it then tries to write
while another connection committed in between, SQLite answers "database is locked" at once
(``SQLITE_BUSY_SNAPSHOT``), and no busy timeout helps. So every transaction here starts with
``BEGIN IMMEDIATE``: it takes the write lock up front and waits (``busy_timeout``) for it,
which serialises writers cleanly. Read-only work can ask for ``readonly=True`` and then starts
a plain deferred ``BEGIN`` that runs beside the writer (WAL), never blocking it.

This follows SQLAlchemy's documented recipe for taking over BEGIN from the sqlite3/aiosqlite
driver (``isolation_level = None`` on connect, our own BEGIN in the ``begin`` event).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

logger = logging.getLogger(__name__)

# Execution option carried by the read-only engine view; read in the ``begin`` hook.
_READONLY_OPTION = "avatarbot_readonly"

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers never block the writer, nor the writer them
    "PRAGMA foreign_keys=ON",  # SQLite ignores FOREIGN KEY clauses without this
    "PRAGMA busy_timeout=30000",  # wait up to 30 s for the write lock instead of failing
    "PRAGMA synchronous=NORMAL",  # safe with WAL; a power cut may lose the last commits only
)


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take BEGIN away from the driver: it would emit a deferred BEGIN before DML only.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_READONLY_OPTION):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


class Database:
    """Owns the engine and the session factories of one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite: a WAL checkpoint after an erasure was blocked by a reader; the job loop's
        # maintenance retries it (db/repositories/common.py: ``checkpoint``).
        self.checkpoint_pending = False
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False
        )
        # Same pool, one extra execution option: sessions that promise not to write.
        self._readonly_sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine.execution_options(**{_READONLY_OPTION: True}), expire_on_commit=False
        )

    @classmethod
    def from_url(cls, url: str | URL, *, echo: bool = False) -> Database:
        """Create the engine for ``url`` (``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://``)."""
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if parsed.get_backend_name() == "sqlite":
            _prepare_sqlite_file(parsed)
        elif parsed.get_backend_name() == "postgresql":
            # The bot, its dispatcher and a few concurrent interactions; bursts overflow.
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True, pool_recycle=1800)
        else:
            raise ValueError(f"unsupported database URL (sqlite or postgresql): {parsed!r}")
        engine = create_async_engine(parsed, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
            event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
        logger.debug("database engine for %s", parsed.render_as_string(hide_password=True))
        return cls(engine)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def url(self) -> URL:
        return self.engine.url

    def session(self, *, readonly: bool = False) -> AsyncSession:
        """A new session: ``async with db.session() as s: ...; await s.commit()``.

        ``readonly=True`` promises that the session will not write: on SQLite it then does not
        take the write lock (a write in it may fail with "database is locked" under load).
        """
        maker = self._readonly_sessionmaker if readonly else self.sessionmaker
        return maker()

    @asynccontextmanager
    async def begin(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside a transaction: committed on success, rolled back on an exception."""
        async with self.session(readonly=readonly) as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"
