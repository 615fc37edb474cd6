"""Small helpers shared by the repositories: NULL-aware equality, serialising writers, and
scrubbing deleted bytes from SQLite files."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import CursorResult, Result, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from db.session import Database

logger = logging.getLogger(__name__)


def affected(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched. ``AsyncSession.execute`` is typed as giving
    a ``Result``; for such a statement it is a ``CursorResult``, which has the count."""
    assert isinstance(result, CursorResult), "affected() takes an UPDATE or DELETE's result"
    return result.rowcount or 0


def dialect_name(session: AsyncSession) -> str:
    """``"sqlite"`` or ``"postgresql"``: the dialect the session talks to."""
    return session.get_bind().dialect.name


def eq_or_null(column: Any, value: Any) -> ColumnElement[bool]:
    """``column = value``, or ``column IS NULL`` when value is None (SQL's NULL != NULL)."""
    if value is None:
        result: ColumnElement[bool] = column.is_(None)
    else:
        result = column == value
    return result


async def lock_scope(session: AsyncSession, scope: int | None) -> None:
    """Serialise the transactions that check-then-write one scope: a guild (its quotas and
    queue) or a member (their avatar count); Discord snowflakes never repeat across the two.

    PostgreSQL: a transaction-scoped advisory lock on the scope (0 for "no guild"), released at
    commit or rollback; a concurrent request for the same scope waits here, then sees the rows
    the first one committed. SQLite: nothing to do, ``BEGIN IMMEDIATE`` already holds the only
    write lock for the whole transaction (see db/session.py).
    """
    if dialect_name(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(scope or 0)))


async def scrub_deletes(session: AsyncSession) -> None:
    """On SQLite, make this connection overwrite deleted content with zeros.

    Without it, the bytes of deleted rows (photos!) stay in free pages of the file until they
    happen to be reused. Runs inside the caller's transaction; it is a per-connection switch,
    so it stays on for the connection's next transactions as well, which is what we want.
    """
    if dialect_name(session) == "sqlite":
        await session.execute(text("PRAGMA secure_delete = ON"))


# How long a checkpoint waits for readers of older snapshots (instead of the connection's
# 30 s busy timeout): the member who asked for an erasure is waiting for the answer.
CHECKPOINT_WAIT_MS = 2000


async def checkpoint(database: Database) -> bool:
    """On SQLite, copy the WAL into the main file and truncate the WAL to zero bytes; True when
    done (always on PostgreSQL).

    The WAL keeps old versions of pages (e.g. the frames that inserted a photo) until a
    checkpoint; after an erasure we want them gone from disk too. It must run outside a
    transaction, so it goes through the driver connection directly (our ``begin`` hook would
    otherwise open ``BEGIN IMMEDIATE`` first and the checkpoint would fail as locked). A reader
    holding an old snapshot can keep some frames alive: then ``database.checkpoint_pending``
    is set and the job loop's maintenance (``JobService.purge_expired``) tries again until a
    checkpoint gets through.
    """
    if database.dialect != "sqlite":
        return True
    async with database.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        cursor = await driver.execute("PRAGMA busy_timeout")
        (usual,) = await cursor.fetchone()
        await cursor.close()
        await (await driver.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")).close()
        try:
            cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, _log, _done = await cursor.fetchone()
            await cursor.close()
        finally:
            await (await driver.execute(f"PRAGMA busy_timeout={int(usual)}")).close()
    if busy:
        database.checkpoint_pending = True
        logger.warning(
            "WAL checkpoint after erasure was blocked by a reader; the next maintenance retries"
        )
        return False
    if database.checkpoint_pending:
        logger.info("pending WAL checkpoint done")
    database.checkpoint_pending = False
    return True
