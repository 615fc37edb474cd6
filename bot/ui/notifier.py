"""What a member sees while their render waits and runs, and when it ends.

The dispatcher calls these hooks (``JobObserver``) as tasks; each job's messages are edited
under a per-job lock and in order of state (queued < running < finished), so a late "queued"
edit never overwrites "rendering", nor "rendering" a result. Progress edits are throttled to
one per ~1.5 s per job.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord

from bot.services.events import JobObserver
from bot.services.results import InteractionRef, JobTicket, JobView
from bot.ui.delivery import Delivery, DeliveryFailed
from bot.ui.progress import ProgressThrottle, progress_bar

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)

QUEUED, RUNNING, FINISHED = 0, 1, 2
REQUEUED_TEXT = (
    "The bot restarted while rendering this; it is back in the queue and will run again."
)


def cancel_view(job_id: int) -> discord.ui.View | None:
    """The Cancel button for a progress message (from the render cog, when loaded)."""
    from bot.cogs.render.views import cancel_view as make

    return make(job_id)


class JobNotifier(JobObserver):
    def __init__(self, bot: AvatarBot, delivery: Delivery) -> None:
        self.bot = bot
        self.delivery = delivery
        self.throttle = ProgressThrottle()
        self._locks: dict[int, asyncio.Lock] = {}
        self._shown: dict[int, int] = {}
        self._jobs: dict[int, JobView] = {}

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _forget(self, job_id: int) -> None:
        self._locks.pop(job_id, None)
        self._shown.pop(job_id, None)
        self._jobs.pop(job_id, None)
        self.throttle.forget(job_id)
        self.delivery.filesize_limits.pop(job_id, None)

    # ------------------------------------------------------------------ from the cog

    async def show_queued(self, ticket: JobTicket, ref: InteractionRef) -> None:
        """Tell the member their render is in line (edits their private progress message)."""
        where = "you're next" if ticket.position <= 1 else f"position {ticket.position} in line"
        async with self._lock(ticket.job_id):
            if self._shown.get(ticket.job_id, -1) > QUEUED:
                return  # the worker was faster than this edit
            self._shown[ticket.job_id] = QUEUED
            await self.delivery.edit_ref(ref, f"Queued — {where}.", cancel_view(ticket.job_id))

    # ------------------------------------------------------------------ dispatcher hooks

    async def job_started(self, job: JobView) -> None:
        self._jobs[job.id] = job
        async with self._lock(job.id):
            if self._shown.get(job.id, -1) > RUNNING:
                return
            self._shown[job.id] = RUNNING
            self.throttle.should_emit(job.id, 0.0)
            await self.delivery.edit_progress(job, _running_text(job, 0.0), cancel_view(job.id))

    async def job_progress(self, job_id: int, fraction: float) -> None:
        if not self.throttle.should_emit(job_id, fraction):
            return
        job = self._jobs.get(job_id)
        if job is None:
            job = self._jobs[job_id] = await self.bot.services.jobs.view(job_id)
        async with self._lock(job_id):
            if self._shown.get(job_id, -1) > RUNNING:
                return
            self._shown[job_id] = RUNNING
            await self.delivery.edit_progress(
                job, _running_text(job, fraction), cancel_view(job_id)
            )

    async def job_requeued(self, job: JobView) -> None:
        async with self._lock(job.id):
            self._shown[job.id] = QUEUED
            try:
                await self.delivery.notify(job, REQUEUED_TEXT)
            except DeliveryFailed as exc:
                logger.warning(
                    "could not tell user %s about requeued job %s: %s", job.user_id, job.id, exc
                )

    async def job_finished(self, job: JobView) -> None:
        await self.deliver(job)

    # ------------------------------------------------------------------ delivery

    async def deliver(self, job: JobView) -> bool:
        """Deliver a finished job exactly once (the hook and the sweeper may both try)."""
        async with self._lock(job.id):
            self._shown[job.id] = FINISHED
            fresh = await self.bot.services.jobs.view(job.id)
            if fresh.delivered_at is not None:
                self._forget(job.id)
                return False
            try:
                await self.delivery.deliver(fresh)
            except DeliveryFailed as exc:
                logger.warning("delivery of job %s postponed: %s", job.id, exc)
                return False
        self._forget(job.id)
        return True


def _running_text(job: JobView, fraction: float) -> str:
    name = discord.utils.escape_markdown(job.avatar_name)
    return f"Rendering **{name}** — {progress_bar(fraction)}"
