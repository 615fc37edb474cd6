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

A live preview of a running render (``preview``) is the one event that carries data: a small
blurred JPEG, in the event itself (base64 after the origin in a notification), never stored.
A preview that would not fit a notification is dropped.

After the notification connection is restored, notifications sent meanwhile are lost:
``on_resync`` callbacks run so their owners look at the database afresh.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from db.notify import MAX_PAYLOAD, Listener, notify
from db.session import Database

logger = logging.getLogger(__name__)


class JobEventKind(StrEnum):
    ENQUEUED = "enqueued"  # a new job is queued (workers: claim)
    STARTED = "started"  # a worker claimed it
    PROGRESS = "progress"  # its progress column moved
    REQUEUED = "requeued"  # its worker died; it is queued again
    FINISHED = "finished"  # done, failed or cancelled by the system
    CANCELLED = "cancelled"  # the member cancelled or deleted it (workers: stop rendering it)
    PREVIEW = "preview"  # a live preview of its render, carried by the event (never stored)


@dataclass(frozen=True)
class JobEvent:
    kind: JobEventKind
    job_id: int
    # A ``preview`` event's image (JPEG bytes); None for every other kind.
    preview: bytes | None = None

    def payload(self, origin: str = "") -> str:
        head = f"{self.kind}:{self.job_id}:{origin}"
        if self.preview is None:
            return head
        return f"{head}:{base64.b64encode(self.preview).decode('ascii')}"

    @classmethod
    def parse(cls, payload: str) -> tuple[JobEvent, str] | None:
        """The event and the origin (the publishing process's token) of a notification."""
        kind, _, rest = payload.partition(":")
        job_id, _, rest = rest.partition(":")
        origin, _, data = rest.partition(":")
        try:
            preview = base64.b64decode(data, validate=True) if data else None
            return cls(JobEventKind(kind), int(job_id), preview), origin
        except (ValueError, binascii.Error):
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
        # Previews' notifications in flight (each its own short transaction).
        self._sending: set[asyncio.Task[None]] = set()

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
        for task in list(self._sending):
            task.cancel()
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

    def show_preview(self, job_id: int, image: bytes) -> bool:
        """Hand a live preview of ``job_id``'s render to every subscriber (on PostgreSQL, to
        other processes too, in a notification of its own); nothing is written. False when
        the preview was dropped: it would not fit a notification."""
        job_event = JobEvent(JobEventKind.PREVIEW, job_id, image)
        payload = job_event.payload(self._origin)
        if len(payload.encode()) > MAX_PAYLOAD:
            return False
        self._deliver(job_event)
        if self.cross_process:
            task = asyncio.get_running_loop().create_task(self._notify(payload))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return True

    async def _notify(self, payload: str) -> None:
        try:
            async with self._database.begin() as session:
                await notify(session, payload)
        except Exception:  # a lost preview is harmless: the next one follows
            logger.warning("a live preview was not sent", exc_info=True)

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
