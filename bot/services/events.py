"""Job events: the one path by which a change to a job reaches whoever acts on it.

The job row is the truth (status, progress, attempts); an event only says "job 42 changed
this way, look at it". Events are published *inside* the transaction that makes the change and
delivered only if it commits:

- Always: delivered to this process's subscribers right after the commit.
- PostgreSQL (scale-out), also: ``pg_notify`` in the transaction; every other process
  LISTENing (workers, the bot) gets it at commit (this process drops its own, already heard).
  A worker sleeping on an empty queue wakes within milliseconds of an enqueue; the bot hears a
  remote worker's progress.

Subscribers are plain callbacks, run on the event loop; they must not block (they note the
job and wake their own loop). Progress is throttled once, at its source (the dispatcher's
lease keeper writes and publishes it at most every ``progress_seconds``).

After the notification connection is restored, notifications sent meanwhile are lost:
``on_resync`` callbacks run so their owners look at the database afresh.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from db.notify import Listener, notify
from db.session import Database

logger = logging.getLogger(__name__)


class JobEventKind(StrEnum):
    ENQUEUED = "enqueued"  # a new job is queued (workers: claim)
    STARTED = "started"  # a worker claimed it
    PROGRESS = "progress"  # its progress column moved
    REQUEUED = "requeued"  # its worker died; it is queued again
    FINISHED = "finished"  # done, failed or cancelled by the system
    CANCELLED = "cancelled"  # the member cancelled or deleted it (workers: stop rendering it)


@dataclass(frozen=True)
class JobEvent:
    kind: JobEventKind
    job_id: int

    def payload(self, origin: str = "") -> str:
        return f"{self.kind}:{self.job_id}:{origin}"

    @classmethod
    def parse(cls, payload: str) -> tuple[JobEvent, str] | None:
        """The event and the origin (the publishing process's token) of a notification."""
        kind, _, rest = payload.partition(":")
        job_id, _, origin = rest.partition(":")
        try:
            return cls(JobEventKind(kind), int(job_id)), origin
        except ValueError:
            return None


EventListener = Callable[[JobEvent], None]


class JobEvents:
    """Publishes job events with the transaction that makes them true; fans them out."""

    def __init__(self, database: Database) -> None:
        self._database = database
        # Names this process in its notifications: its own come back through LISTEN too, and
        # are dropped there, because they were delivered here right after the commit.
        self._origin = secrets.token_hex(6)
        self._listeners: list[EventListener] = []
        self._resync: list[Callable[[], None]] = []
        self._pg: Listener | None = None

    @property
    def cross_process(self) -> bool:
        """True on PostgreSQL: events reach other processes too."""
        return self._database.dialect == "postgresql"

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def on_resync(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever events may have been missed (a reconnection)."""
        self._resync.append(callback)

        def remove() -> None:
            if callback in self._resync:
                self._resync.remove(callback)

        return remove

    async def start(self) -> None:
        """On PostgreSQL, start listening (idempotent)."""
        if self.cross_process and self._pg is None:
            self._pg = Listener(self._database.url, self._on_payload, self._on_connected)
            await self._pg.start()

    async def aclose(self) -> None:
        listener, self._pg = self._pg, None
        if listener is not None:
            await listener.aclose()

    async def publish(self, session: AsyncSession, kind: JobEventKind, job_id: int) -> None:
        """Announce ``kind`` for ``job_id`` once ``session``'s transaction commits."""
        job_event = JobEvent(kind, job_id)
        if self.cross_process:
            await notify(session, job_event.payload(self._origin))
        # This process hears its own events right after the commit, without the round trip.
        loop = asyncio.get_running_loop()

        def committed(_session: object) -> None:
            loop.call_soon(self._deliver, job_event)

        event.listen(session.sync_session, "after_commit", committed, once=True)

    def deliver_local(self, job_event: JobEvent) -> None:
        """Hand an event to this process's subscribers only (nothing was committed)."""
        self._deliver(job_event)

    def _on_payload(self, payload: str) -> None:
        parsed = JobEvent.parse(payload)
        if parsed is None:
            logger.warning("ignoring a malformed job notification %r", payload)
            return
        job_event, origin = parsed
        if origin != self._origin:
            self._deliver(job_event)

    def _on_connected(self) -> None:
        for callback in list(self._resync):
            try:
                callback()
            except Exception:
                logger.exception("resync callback %r failed", callback)

    def _deliver(self, job_event: JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(job_event)
            except Exception:
                logger.exception("job event listener %r failed on %s", listener, job_event)
