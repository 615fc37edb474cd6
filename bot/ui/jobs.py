"""The bot's view of jobs: from job events to the messages members see.

``JobFeed`` subscribes to the services' job events (bot/services/events.py: pushed from any
worker on PostgreSQL, in-process on SQLite), reads each changed job from the database (the row
is the truth) and hands it to the presenter registered for its kind: the render feature shows
queue position, progress and results; the avatars feature shows creation's checks and the
contact sheet. The feed renders nothing and claims nothing: the job loop does that, here in
embedded mode or in ``avatarbot worker`` processes.

Nothing is lost across restarts or missed notifications: at start (and whenever the
notification connection comes back) the feed shows every active job's current state and
delivers every finished, undelivered one; a periodic sweep (every ``poll_seconds`` after
activity, doubling while idle up to ``MAX_POLL``) retries deliveries that Discord refused for
the moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import discord

from bot.errors import AvatarbotError
from bot.services.events import JobEvent, JobEventKind, JobEvents
from bot.services.failure_log import FailureLog
from bot.services.jobs import JobService
from bot.services.results import JobView
from bot.ui.waker import DiscordWaker
from kinds import JobKind, JobStatus

logger = logging.getLogger(__name__)

WAKE_EVENT = "avatarbot_job_feed"
MAX_BACKOFF = 30.0  # after errors
MAX_POLL = 60.0  # when idle


class JobPresenter(Protocol):
    """One feature's messages about its jobs (one presenter per job kind)."""

    async def show(
        self, job: JobView, event: JobEventKind | None, preview: bytes | None = None
    ) -> None:
        """The job is queued or running: show its state (``event`` None: resumed at start),
        with the latest live preview of its render when one came (a JPEG, never stored)."""

    async def deliver(self, job: JobView) -> bool:
        """The job finished: post its outcome and mark it delivered; False to retry later."""


class PollBackoff:
    """The next idle wait: ``base`` after activity, doubling up to ``cap`` while idle."""

    def __init__(self, base: float, cap: float = MAX_POLL) -> None:
        self.base = base
        self.cap = max(cap, base)
        self._next = base

    def reset(self) -> None:
        self._next = self.base

    def next(self) -> float:
        value = self._next
        self._next = min(self.cap, self._next * 2)
        return value


class JobFeed:
    # The client, not the bot (bot/app.py builds the feed: importing it back would be a circle);
    # the services arrive at ``start``, once the bot's setup built them.
    def __init__(self, client: discord.Client, poll_seconds: float) -> None:
        self._poll_seconds = poll_seconds
        self._jobs: JobService | None = None
        self._presenters: dict[JobKind, JobPresenter] = {}
        self._waker = DiscordWaker(client, WAKE_EVENT)
        # Jobs that changed since the feed last looked, with the latest event (or None: look
        # at everything active and undelivered).
        self._pending: dict[int, JobEventKind] = {}
        # The latest live preview of each pending job (held only until it is shown).
        self._previews: dict[int, bytes] = {}
        self._resync = True
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []

    def register(self, kind: JobKind, presenter: JobPresenter) -> None:
        """The presenter of ``kind``'s jobs (each feature registers its own at load)."""
        self._presenters[kind] = presenter

    # ------------------------------------------------------------------ lifecycle

    def start(self, events: JobEvents, jobs: JobService) -> None:
        self._jobs = jobs
        self._unsubscribe = [events.subscribe(self._on_event), events.on_resync(self._on_resync)]
        self._resync = True
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="avatarbot-jobs")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop after the step in progress (a delivery is not cut off mid-transaction; a
        cancelled database call can leave its connection half rolled back), bounded."""
        for remove in self._unsubscribe:
            remove()
        self._unsubscribe = []
        self._stopping = True
        self._waker.wake()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _on_event(self, job_event: JobEvent) -> None:
        if job_event.kind is JobEventKind.ENQUEUED:
            return  # the member was answered when they asked; nothing to show yet
        if job_event.preview is not None:
            self._previews[job_event.job_id] = job_event.preview
        # A requeue is news even if the job runs again by the time the feed looks at it.
        if self._pending.get(job_event.job_id) is not JobEventKind.REQUEUED:
            self._pending[job_event.job_id] = job_event.kind
        self._waker.wake()

    def _on_resync(self) -> None:
        self._resync = True
        self._waker.wake()

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        poll = PollBackoff(self._poll_seconds)
        failures = FailureLog(logger, "the job feed's step")
        error_delay = 0.5
        while not self._stopping:
            try:
                active = await self._step()
                error_delay = 0.5
                failures.worked()
            except Exception as exc:
                # One line when the database goes away and one when it is back, not one per
                # retry. The retry sweeps: what the failed step had taken from ``_pending``
                # is shown from the database's rows instead.
                failures.failed(exc)
                self._resync = True
                await self._waker.wait(error_delay)
                error_delay = min(error_delay * 2, MAX_BACKOFF)
                continue
            if active:
                poll.reset()
            if self._pending or self._resync:
                continue
            if self._stopping:  # set before its wake-up
                break
            if not await self._waker.wait(poll.next()):
                self._resync = True  # the periodic sweep
            else:
                poll.reset()

    async def _step(self) -> bool:
        """Handle what changed; True when something was shown or delivered."""
        did = False
        if self._resync:
            self._resync = False
            did = await self.sweep()
        while self._pending and not self._stopping:
            job_id, kind = self._pending.popitem()
            try:
                job = await self._service().view(job_id)
            except AvatarbotError:
                continue  # deleted meanwhile (forget-me, Delete)
            await self._present(job, kind)
            did = True
        return did

    async def sweep(self) -> bool:
        """Show every active job's state, deliver every finished one not yet delivered."""
        did = False
        jobs = self._service()
        for job in await jobs.active():
            if job.status is JobStatus.RUNNING:
                await self._present(job, None)
                did = True
        for job in await jobs.undelivered():
            did = await self._present(job, JobEventKind.FINISHED) or did
        return did

    def _service(self) -> JobService:
        if self._jobs is None:
            raise RuntimeError("the job feed has not been started")
        return self._jobs

    async def _present(self, job: JobView, kind: JobEventKind | None) -> bool:
        preview = self._previews.pop(job.id, None)
        presenter = self._presenters.get(job.kind)
        if presenter is None:
            return False
        if job.finished:
            return await presenter.deliver(job)
        await presenter.show(job, kind, preview)
        return True
