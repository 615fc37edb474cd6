"""The dispatcher's observer API: how the bot (or the CLI) hears about job progress.

Subclass ``JobObserver`` and override the hooks you need, then
``services.dispatcher.add_observer(observer)`` (it returns a function that removes it). Hooks
run as their own tasks on the event loop, so a slow hook (a Discord edit, retried) never holds
up rendering; an exception in a hook is logged and otherwise ignored. Progress is coalesced:
a hook sees at most one update per ``PROGRESS_INTERVAL`` per job (plus every state change),
the newest value winning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.services.results import JobView

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5  # seconds; the bot edits messages at most every ~1.5 s anyway


class JobObserver:
    """Hooks for job events; every hook is optional (the defaults do nothing)."""

    async def job_started(self, job: JobView) -> None:
        """A worker picked the job up (``job.status == "running"``)."""

    async def job_progress(self, job_id: int, fraction: float) -> None:
        """Rendering progress in [0, 1]."""

    async def job_requeued(self, job: JobView) -> None:
        """The job's worker died; it is back in the queue and will run again."""

    async def job_finished(self, job: JobView) -> None:
        """The job reached ``done``, ``failed`` or ``cancelled``: deliver it, then call
        ``jobs.mark_delivered(job.id)``."""


class ObserverHub:
    """Fans job events out to observers as tracked background tasks."""

    def __init__(self) -> None:
        self._observers: list[JobObserver] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_progress: dict[int, float] = {}

    def add(self, observer: JobObserver) -> Callable[[], None]:
        self._observers.append(observer)

        def remove() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return remove

    def started(self, job: JobView) -> None:
        self._emit(lambda o: o.job_started(job))

    def requeued(self, job: JobView) -> None:
        self._emit(lambda o: o.job_requeued(job))

    def finished(self, job: JobView) -> None:
        self._last_progress.pop(job.id, None)
        self._emit(lambda o: o.job_finished(job))

    def progress(self, job_id: int, fraction: float) -> None:
        now = time.monotonic()
        last = self._last_progress.get(job_id)
        if last is not None and now - last < PROGRESS_INTERVAL and fraction < 1.0:
            return
        self._last_progress[job_id] = now
        self._emit(lambda o: o.job_progress(job_id, fraction))

    def _emit(self, call: Callable[[JobObserver], Awaitable[None]]) -> None:
        for observer in list(self._observers):
            task = asyncio.get_running_loop().create_task(self._guard(observer, call(observer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(observer: JobObserver, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("job observer %r failed", observer)

    async def drain(self, grace: float = 10.0) -> None:
        """Wait (bounded) for the hooks already started."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
