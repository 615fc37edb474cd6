"""The bot's side of the job queue: worker lanes, the delivery sweeper, recovery at start.

Lanes call the dispatcher's ``run_once`` (claim one job fairly, render it, store the outcome)
until the queue is empty, then wait for a wake-up: a job was enqueued (``bot.dispatch``) or
the poll interval passed (jobs queued by other processes). Waiting through
``Client.wait_for`` rather than a bare ``asyncio.Event`` keeps the wait visible to discord.py
tooling (SimCord's settling recognises it, so tests stay deterministic) and costs nothing in
production.

The sweeper delivers finished jobs nobody delivered yet (another worker process finished them,
a delivery failed, the bot was down) and, when this process is a worker, requeues jobs whose
worker died and purges expired outputs.

Both poll with a backoff: every ``poll_seconds`` right after activity (a job enqueued here, a
job run or delivered), doubling while nothing happens, up to ``MAX_POLL``. An idle bot thus
wakes about once a minute, while a busy one notices remote workers' results within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from bot.ui.delivery import Delivery
from bot.ui.notifier import JobNotifier

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)

QUEUED_EVENT = "avatarbot_job_queued"
RESUME_EVENT = "avatarbot_jobs_resumed"
MAX_BACKOFF = 30.0  # after errors
MAX_POLL = 60.0  # when idle


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


class JobRunner:
    def __init__(self, bot: AvatarBot) -> None:
        self.bot = bot
        self.delivery = Delivery(bot)
        self.notifier = JobNotifier(bot, self.delivery)
        self._tasks: list[asyncio.Task[None]] = []
        self._remove_observer: Any = None
        self._wake_pending = False
        self._paused = False
        self._last_maintenance = 0.0

    @property
    def _dispatcher(self) -> Any:
        return self.bot.services.dispatcher

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        services = self.bot.services
        self._remove_observer = self._dispatcher.add_observer(self.notifier)
        services.renders.on_enqueued(self.wake)
        loop = asyncio.get_running_loop()
        if self.bot.settings.run_worker:
            await self._recover(at_start=True)
            for lane in range(max(1, self._dispatcher.config.concurrency)):
                self._tasks.append(loop.create_task(self._lane(), name=f"avatarbot-lane-{lane}"))
        self._tasks.append(loop.create_task(self._sweeper(), name="avatarbot-sweeper"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop starting jobs (those running finish); requests still queue. For maintenance,
        and for the demo, which shows a job waiting in line."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self.bot.dispatch(RESUME_EVENT)
        self.wake()

    def wake(self, job_id: int | None = None) -> None:
        """A job was committed to the queue: idle lanes look now."""
        self._wake_pending = True
        self.bot.dispatch(QUEUED_EVENT, job_id)

    # ------------------------------------------------------------------ loops

    async def _idle(self, seconds: float) -> bool:
        """Wait for a job to be enqueued here, at most ``seconds``; True when one was."""
        try:
            await self.bot.wait_for(QUEUED_EVENT, timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _lane(self) -> None:
        poll = PollBackoff(self._dispatcher.config.poll_seconds)
        error_delay = 0.5
        while True:
            if self._paused:
                await self.bot.wait_for(RESUME_EVENT)
                continue
            try:
                # Its own task: cancelling a job (``dispatcher.job_cancelled``) cancels the task
                # rendering it, which must not be this lane.
                job_id = await asyncio.get_running_loop().create_task(
                    self._dispatcher.run_once(), name="avatarbot-job"
                )
                error_delay = 0.5
            except Exception:
                logger.exception("running a job failed; retrying in %.1f s", error_delay)
                await asyncio.sleep(error_delay)
                error_delay = min(error_delay * 2, MAX_BACKOFF)
                continue
            if job_id is not None:
                poll.reset()
                continue
            if self._wake_pending:  # a job arrived while this lane was claiming
                self._wake_pending = False
                continue
            if await self._idle(poll.next()):
                poll.reset()
            self._wake_pending = False

    async def _sweeper(self) -> None:
        poll = PollBackoff(self._dispatcher.config.poll_seconds)
        await self.sweep()
        while True:
            if await self._idle(poll.next()):
                poll.reset()
            try:
                if await self.sweep():
                    poll.reset()
            except Exception:
                logger.exception("job sweep failed")

    async def sweep(self) -> int:
        """Deliver what is pending; maintenance when due. Returns how many were delivered."""
        delivered = 0
        for job in await self.bot.services.jobs.undelivered():
            if await self.notifier.deliver(job):
                delivered += 1
        if self.bot.settings.run_worker:
            due = time.monotonic() - self._last_maintenance
            if due >= self._dispatcher.config.maintenance_seconds:
                await self._recover(at_start=False)
        return delivered

    async def _recover(self, *, at_start: bool) -> None:
        """Requeue jobs whose worker died, give up (and refund) those out of attempts; tell
        their members. At start, a sole worker adopts every job left running."""
        self._last_maintenance = time.monotonic()
        services = self.bot.services
        exclusive = at_start and self._dispatcher.config.exclusive
        report = await services.jobs.recover(all_running=exclusive)
        for job in report.requeued:
            await self.notifier.job_requeued(job)
        for job in report.given_up:
            await self.notifier.deliver(job)
        await services.jobs.purge_expired()
