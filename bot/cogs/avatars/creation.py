"""What a member sees while their new avatar's photos are checked and encoded (the encode
jobs' ``JobPresenter``, registered with the bot's job feed).

The creation form is answered at once with "checking your photos"; the worker that claims the
avatar's encode job decides which photos are kept; then the same private message becomes the
summary with the contact sheet. Photos are shown to their owner only: when the interaction's
token has expired, the summary goes to the member's DMs, never to a channel.
"""

from __future__ import annotations

import asyncio
import logging

import discord

from bot.errors import AvatarbotError
from bot.services.avatars import AvatarService
from bot.services.events import JobEventKind
from bot.services.jobs import JobService
from bot.services.results import CreationTicket, InteractionRef, JobView
from bot.ui.errors import NO_MENTIONS
from bot.ui.webhooks import edit_ref, is_transient
from kinds import JobStatus

from .views import avatar_embed, creation_summary, sheet_file

logger = logging.getLogger(__name__)

REQUEUED_TEXT = "The worker checking your photos stopped; they are back in the queue."


def checking_text(ticket: CreationTicket) -> str:
    count = ticket.avatar.photo_count
    lines = [f"Checking your {count} photo{'s' if count != 1 else ''}…"]
    if ticket.refused:
        lines.append("\nNot kept:")
        lines += [f"- {r.message}" for r in ticket.refused]
    return "\n".join(lines)[:2000]


class CreationMessages:
    def __init__(
        self,
        client: discord.Client,
        avatars: AvatarService,
        jobs: JobService,
        filesize_limit: int,
    ) -> None:
        self._client = client
        self._avatars = avatars
        self._jobs = jobs
        self._filesize_limit = filesize_limit
        self._locks: dict[int, asyncio.Lock] = {}
        self._finished: set[int] = set()

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def checking(self, ticket: CreationTicket, ref: InteractionRef) -> None:
        """Answer the form: the photos are being checked (unless the worker already finished)."""
        async with self._lock(ticket.job_id):
            if ticket.job_id in self._finished:
                return
            await edit_ref(self._client, ref, checking_text(ticket))

    # ------------------------------------------------------------------ JobPresenter

    async def show(
        self, job: JobView, event: JobEventKind | None, preview: bytes | None = None
    ) -> None:
        # ``preview``: creation renders nothing to preview.
        if event is JobEventKind.REQUEUED:
            async with self._lock(job.id):
                if job.id not in self._finished:
                    await edit_ref(self._client, job.interaction, REQUEUED_TEXT)

    async def deliver(self, job: JobView) -> bool:
        async with self._lock(job.id):
            self._finished.add(job.id)
            fresh = await self._jobs.view(job.id)
            if fresh.delivered_at is not None:
                self._forget(job.id)
                return False
            try:
                await self._post(fresh)
            except discord.HTTPException as exc:
                if is_transient(exc):
                    logger.warning("creation summary of job %s postponed: %s", job.id, exc)
                    return False
                logger.warning("creation summary of job %s refused: %s", job.id, exc)
            await self._jobs.mark_delivered(job.id)
        self._forget(job.id)
        return True

    def _forget(self, job_id: int) -> None:
        self._locks.pop(job_id, None)
        self._finished.discard(job_id)

    async def _post(self, job: JobView) -> None:
        if job.status is JobStatus.CANCELLED:
            return
        if job.status is JobStatus.FAILED:
            await self._private(job, job.error or "The avatar could not be created.")
            return
        try:
            created = await self._avatars.creation_result(job.id)
            photos = await self._avatars.photos(job.user_id, created.avatar.name)
        except AvatarbotError as exc:  # deleted meanwhile
            await self._private(job, exc.message)
            return
        sheet = await asyncio.to_thread(
            sheet_file, photos, list(created.kept), self._filesize_limit
        )
        embed = avatar_embed(created.avatar, sheet)
        await self._private(job, creation_summary(created), embed=embed, file=sheet)

    async def _private(
        self,
        job: JobView,
        text: str,
        *,
        embed: discord.Embed | None = None,
        file: discord.File | None = None,
    ) -> None:
        """The member's own form message while its token lives, else their DMs."""
        extra: dict[str, object] = {}
        if embed is not None:
            extra["embed"] = embed
        if file is not None:
            extra["attachments"] = [file]
        if await edit_ref(self._client, job.interaction, text, **extra):
            return
        user = self._client.get_user(job.user_id) or await self._client.fetch_user(job.user_id)
        if file is not None:
            file.reset()
        await user.send(
            text,
            embed=embed if embed is not None else discord.utils.MISSING,
            file=file if file is not None else discord.utils.MISSING,
            allowed_mentions=NO_MENTIONS,
        )
