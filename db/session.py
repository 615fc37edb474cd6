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

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from db.errors import DatabaseConfigError, DatabaseUnavailable

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


DATABASE_URL_HELP = (
    "set AVATARBOT_DATABASE_URL to sqlite+aiosqlite:///PATH or "
    "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/NAME (unset: a SQLite file in the data dir)"
)


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The first line of an error's message, without SQLAlchemy's trailing help links."""
    origin = getattr(exc, "orig", None) or exc
    text = str(origin).strip().splitlines()[0] if str(origin).strip() else type(origin).__name__
    return text.split(" (Background on this error")[0]


# The wait for the database at start: first retry soon, then at most this far apart, so a
# process is up within about this long after the database is back (issue 23).
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0


def _may_come_back(cause: BaseException | None) -> bool:
    """Whether a failed first connection to PostgreSQL may succeed later: the server is down,
    starting, stopping or full; not a wrong role or password (SQLSTATE class 28) nor a missing
    database (3D000), which waiting does not fix. Broader than db/faults.py ``is_transient``
    (what a statement may retry) on purpose: at start anything else, a host name that does
    not resolve yet included, is waited out, its reason logged."""
    sqlstate = getattr(getattr(cause, "orig", None), "sqlstate", None)
    return sqlstate is None or not (sqlstate.startswith("28") or sqlstate == "3D000")


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
        try:
            parsed = make_url(url)
        except (sa_exc.ArgumentError, ValueError):
            # Never echo the string: it may hold a password.
            raise DatabaseConfigError(f"not a database URL; {DATABASE_URL_HELP}") from None
        kwargs: dict[str, Any] = {"echo": echo}
        if parsed.get_backend_name() == "sqlite":
            try:
                _prepare_sqlite_file(parsed)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"cannot create the folder of the SQLite database {_safe(parsed)}: "
                    f"{exc.strerror or exc}; check the path and its permissions"
                ) from exc
        elif parsed.get_backend_name() == "postgresql":
            # The bot, its dispatcher and a few concurrent interactions; bursts overflow.
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True, pool_recycle=1800)
        else:
            raise DatabaseConfigError(
                f"unsupported database URL {_safe(parsed)} (sqlite or postgresql); "
                + DATABASE_URL_HELP
            )
        try:
            engine = create_async_engine(parsed, **kwargs)
        except sa_exc.InvalidRequestError as exc:  # a sync driver (sqlite://, psycopg2)
            raise DatabaseConfigError(
                f"{_safe(parsed)} names a synchronous driver ({parsed.get_driver_name()}); "
                + DATABASE_URL_HELP
            ) from exc
        except (sa_exc.NoSuchModuleError, ImportError) as exc:
            raise DatabaseConfigError(
                f"the driver of {_safe(parsed)} is not available ({_reason(exc)}); "
                + DATABASE_URL_HELP
            ) from exc
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

    async def connect(self) -> AsyncConnection:
        """A started connection; failing to reach or open the database is one
        ``DatabaseUnavailable`` that names the URL (password hidden) and the cause."""
        try:
            return await self.engine.connect()
        except (OSError, sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database {_safe(self.url)}: {_reason(exc)}; check that it "
                "is running and reachable, and AVATARBOT_DATABASE_URL"
            ) from exc

    async def wait_until_reachable(self) -> None:
        """Return once the database accepts a connection, waiting as long as that takes.

        ``avatarbot worker`` and ``avatarbot run`` call it before anything else touches the
        database. They wait rather than exit because they are supervised (systemd, compose):
        an exit only becomes a restart loop, a failure logged every few seconds and the
        process's start (torch imports) paid again each time, while the database (often on
        another host, started in any order) comes back by itself. Retries
        back off to ``RETRY_MAX_SECONDS``; the log has one line when the database is found
        unreachable and one when it is reachable again, not one per try. A mistake waiting
        does not fix (a wrong password or database name, any SQLite problem) raises
        ``DatabaseUnavailable`` at once.
        """
        delay = RETRY_FIRST_SECONDS
        unreachable = False
        while True:
            try:
                connection = await self.connect()
            except DatabaseUnavailable as exc:
                if self.dialect != "postgresql" or not _may_come_back(exc.__cause__):
                    raise
                if not unreachable:
                    logger.warning("database unreachable, retrying: %s", exc)
                    unreachable = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            await connection.close()
            if unreachable:
                logger.info("database reachable")
            return

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
