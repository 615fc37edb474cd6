"""What a member sees while their render waits and runs, and when it ends (the render jobs'
``JobPresenter``, registered with the bot's job feed).

Each job's messages are edited under a per-job lock and in order of state (queued < running <
finished), so a late "queued" edit never overwrites "rendering", nor "rendering" a result.
Progress arrives at most every ``Settings.jobs.progress_seconds`` per job (the worker throttles
it at the source), so every progress event is one edit. Live previews (small blurred JPEGs of
the render, bot/engine_adapter.py) are attached to the same message at most as often, and the
final edit removes the last one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import discord

from bot.services.events import JobEventKind
from bot.services.jobs import JobService
from bot.services.results import InteractionRef, JobTicket, JobView
from bot.ui.webhooks import edit_ref
from kinds import JobStatus

from .delivery import Delivery, DeliveryFailed
from .views import cancel_view

logger = logging.getLogger(__name__)

QUEUED, RUNNING, FINISHED = 0, 1, 2
REQUEUED_TEXT = "The worker rendering this stopped; it is back in the queue and will run again."


def progress_bar(fraction: float, width: int = 12) -> str:
    """A text bar for a message: ``▰▰▰▱▱▱ 50%``."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "▰" * filled + "▱" * (width - filled) + f" {round(fraction * 100)}%"


class RenderMessages:
    def __init__(
        self,
        client: discord.Client,
        jobs: JobService,
        delivery: Delivery,
        preview_seconds: float,
    ) -> None:
        self._client = client
        self._jobs = jobs
        self.delivery = delivery
        self._preview_seconds = preview_seconds
        self._locks: dict[int, asyncio.Lock] = {}
        self._shown: dict[int, int] = {}
        # When each running job's progress message last got a preview (time.monotonic()).
        self._previewed: dict[int, float] = {}

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _forget(self, job_id: int) -> None:
        self._locks.pop(job_id, None)
        self._shown.pop(job_id, None)
        self._previewed.pop(job_id, None)

    async def show_queued(
        self, ticket: JobTicket, ref: InteractionRef, filesize_limit: int
    ) -> None:
        """Tell the member their render is in line (edits their private progress message)."""
        self.delivery.remember_filesize_limit(ticket.job_id, filesize_limit)
        where = "you're next" if ticket.position <= 1 else f"position {ticket.position} in line"
        async with self._lock(ticket.job_id):
            if self._shown.get(ticket.job_id, -1) > QUEUED:
                return  # the worker was faster than this edit
            self._shown[ticket.job_id] = QUEUED
            await edit_ref(self._client, ref, f"Queued — {where}.", view=cancel_view(ticket.job_id))

    # ------------------------------------------------------------------ JobPresenter

    async def show(
        self, job: JobView, event: JobEventKind | None, preview: bytes | None = None
    ) -> None:
        async with self._lock(job.id):
            if self._shown.get(job.id, -1) > RUNNING:
                return
            if event is JobEventKind.REQUEUED:
                self._shown[job.id] = QUEUED
                try:
                    await self.delivery.notify(job, REQUEUED_TEXT)
                except DeliveryFailed as exc:
                    logger.warning(
                        "could not tell the member of job %s it was requeued: %s", job.id, exc
                    )
            if job.status is not JobStatus.RUNNING:
                return
            image = self._due(job, preview)
            if event is JobEventKind.PREVIEW and image is None:
                return  # a preview too soon after the last: not worth an edit of its own
            self._shown[job.id] = RUNNING
            await self.delivery.edit_progress(
                job, _running_text(job, job.progress), cancel_view(job.id), image
            )

    def _due(self, job: JobView, preview: bytes | None) -> bytes | None:
        """``preview`` when the job's message may show a new one now, else None."""
        now = time.monotonic()
        if preview is None or now - self._previewed.get(job.id, -math.inf) < self._preview_seconds:
            return None
        self._previewed[job.id] = now
        return preview

    async def deliver(self, job: JobView) -> bool:
        """Deliver a finished job exactly once (an event and a sweep may both try)."""
        async with self._lock(job.id):
            self._shown[job.id] = FINISHED
            fresh = await self._jobs.view(job.id)
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
    name = "** and **".join(discord.utils.escape_markdown(n) for n in job.avatar_names)
    if fraction <= 0:
        # Progress comes every few seconds: a bare "0%" would look stuck until then.
        return f"Rendering **{name}** — starting…"
    return f"Rendering **{name}** — {progress_bar(fraction)}"
