"""PostgreSQL ``LISTEN/NOTIFY``: how job events cross processes in the scale-out setup.

``notify`` runs ``pg_notify`` inside the caller's transaction, so a notification is delivered
when (and only if) the change it announces commits, to every listening connection, this
process's own included. ``Listener`` holds one dedicated asyncpg connection (outside the
SQLAlchemy pool: a pooled connection would be handed to other work) that LISTENs and hands each
payload to a callback on the event loop.

A notification sent while a listener was disconnected is lost; on every (re)connection the
listener calls ``on_connect``, which is where its owner looks at the database afresh. Reconnects
are driven by asyncpg's termination callback, not by a task that waits forever, so an idle
listener holds no pending task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    import asyncpg

logger = logging.getLogger(__name__)

CHANNEL = "avatarbot_jobs"
# PostgreSQL refuses payloads of 8000 bytes or more; ours are "kind:id".
MAX_PAYLOAD = 7999
# Reconnect tries start soon and stay at most this far apart: after an outage, events flow
# again within about this long of the database being back (issue 23).
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 2.0


async def notify(session: AsyncSession, payload: str) -> None:
    """Queue a notification in the session's transaction (sent at commit)."""
    if len(payload.encode()) > MAX_PAYLOAD:
        raise ValueError("notification payload too long")
    await session.execute(select(func.pg_notify(CHANNEL, payload)))


def asyncpg_dsn(url: URL) -> str:
    """The libpq-style DSN asyncpg takes, from a ``postgresql+asyncpg://`` URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """One LISTENing connection; ``callback(payload)`` runs on the event loop per notification."""

    def __init__(
        self,
        url: URL,
        callback: Callable[[str], None],
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = asyncpg_dsn(url)
        self._callback = callback
        self._on_connect = on_connect
        self._conn: asyncpg.Connection | None = None
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and LISTEN (raises if the database cannot be reached now)."""
        self._closing = False
        await self._connect()

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._on_notification)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        logger.debug("listening on %s", CHANNEL)
        self._on_connect()

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            self._callback(payload)
        except Exception:
            logger.exception("handling notification %r failed", payload)

    def _on_terminated(self, conn: Any) -> None:
        if self._closing or conn is not self._conn:
            return
        self._conn = None
        logger.warning("lost the notification connection; reconnecting")
        self._reconnect = asyncio.get_running_loop().create_task(
            self._reconnect_loop(), name="avatarbot-listen-reconnect"
        )

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_FIRST_DELAY
        while not self._closing:
            try:
                await self._connect()
                logger.info("notification connection restored")
                return
            except Exception as exc:
                # One line for the outage, not one per try (the restore says it ended).
                if delay == RECONNECT_FIRST_DELAY:
                    logger.warning("reconnecting for notifications failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def aclose(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()
