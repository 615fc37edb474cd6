"""Getting a finished job's outcome to its member, whatever happened in between.

Within the interaction token's 15 minutes the result is a follow-up of the member's own
interaction (and the private progress message is closed). Later — a long queue, a restart — it
is a channel message that mentions that member only: ``allowed_mentions`` names one user and
never @everyone or roles, whatever the prompt says. Transient Discord failures are retried; a
job whose delivery still fails stays undelivered, so the next sweep tries again and nothing is
lost.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord

from bot.services.results import InteractionRef, JobView
from bot.ui.errors import NO_MENTIONS
from bot.ui.images import DEFAULT_FILESIZE_LIMIT, fit_all
from bot.ui.retry import is_transient, with_retries

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)

# Do not start a follow-up that may land after the token died mid-upload.
TOKEN_MARGIN = timedelta(seconds=30)

ViewFactory = Callable[[JobView], discord.ui.View]
EmbedFactory = Callable[[JobView], discord.Embed]


def only_member(user_id: int) -> discord.AllowedMentions:
    """Mentions that may ping this one member and nobody else."""
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False
    )


class DeliveryFailed(Exception):
    """Every way to reach the member failed for now; the job stays undelivered."""


class Delivery:
    """Sends results and notices for jobs; the render cog provides the look (embed, view)."""

    def __init__(self, bot: AvatarBot) -> None:
        self.bot = bot
        self.result_embed: EmbedFactory | None = None
        self.result_view: ViewFactory | None = None
        # The upload limit each job's interaction announced (in-memory: after a restart the
        # guild's limit, or Discord's default, applies).
        self.filesize_limits: dict[int, int] = {}

    # ------------------------------------------------------------------ decisions

    def token_usable(self, job: JobView) -> bool:
        return job.interaction is not None and self.ref_usable(job.interaction)

    @staticmethod
    def ref_usable(ref: InteractionRef) -> bool:
        # Discord's clock, not the database's: the token lives 15 minutes on Discord's side.
        return discord.utils.utcnow() < ref.expires_at - TOKEN_MARGIN

    def _webhook(self, ref: InteractionRef) -> discord.Webhook:
        webhook = discord.Webhook.partial(ref.application_id, ref.token, client=self.bot)
        # An interaction's webhook: ephemeral follow-ups are allowed on it.
        webhook.type = discord.WebhookType.application
        return webhook

    def _filesize_limit(self, job: JobView) -> int:
        limit = self.filesize_limits.get(job.id)
        if limit is not None:
            return limit
        guild = self.bot.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_FILESIZE_LIMIT

    # ------------------------------------------------------------------ public

    async def deliver(self, job: JobView) -> None:
        """Post the job's outcome and mark it delivered; ``DeliveryFailed`` leaves it pending."""
        if job.status == "done":
            await self._deliver_result(job)
        elif job.status == "failed":
            text = f"Your render of “{_quote(job.prompt)}” failed. {job.error or ''}".strip()
            await self._send(job, public=False, content=text)
            await self.edit_progress(job, "This render failed; see the message below.")
        else:  # cancelled: the member who cancelled was told when they clicked
            await self.edit_progress(job, "Cancelled. Your render was refunded.")
        self.filesize_limits.pop(job.id, None)
        await self.bot.services.jobs.mark_delivered(job.id)

    async def notify(self, job: JobView, text: str) -> None:
        """A short private notice about a job (e.g. it was requeued after a restart)."""
        if not await self.edit_progress(job, text):
            await self._send(job, public=False, content=text)

    async def edit_progress(
        self, job: JobView, content: str, view: discord.ui.View | None = None
    ) -> bool:
        """Edit the member's private progress message; False when that is not possible."""
        if job.interaction is None:
            return False
        return await self.edit_ref(job.interaction, content, view)

    async def edit_ref(
        self, ref: InteractionRef, content: str, view: discord.ui.View | None = None
    ) -> bool:
        """Edit the progress message of the interaction ``ref`` while its token lives."""
        if ref.message_id is None or not self.ref_usable(ref):
            return False
        webhook = self._webhook(ref)
        try:
            await webhook.edit_message(
                ref.message_id, content=content, view=view, allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as exc:
            logger.info("progress edit of message %s failed: %s", ref.message_id, exc)
            return False
        return True

    # ------------------------------------------------------------------ internals

    async def _deliver_result(self, job: JobView) -> None:
        outputs = await self.bot.services.jobs.outputs(job.id)
        fitted = await asyncio.to_thread(fit_all, outputs, self._filesize_limit(job))
        embed = self.result_embed(job) if self.result_embed else None

        def files() -> list[discord.File]:
            # Fresh File objects per attempt: a failed upload consumed the previous ones.
            return [
                discord.File(io.BytesIO(f.data), filename=f"render-{job.id}-{i + 1}.{f.extension}")
                for i, f in enumerate(fitted)
            ]

        await self._send(
            job,
            public=True,
            content=f"<@{job.user_id}>",
            embed=embed,
            files=files,
            view=self._stopped_view(job),
        )
        await self.edit_progress(job, "Done — your images are posted below.")

    def _stopped_view(self, job: JobView) -> discord.ui.View | None:
        if self.result_view is None:
            return None
        view = self.result_view(job)
        # Its buttons are DynamicItems the bot recognises by custom_id after any restart;
        # a stopped view is not kept in memory per message as well.
        view.stop()
        return view

    async def _send(
        self,
        job: JobView,
        *,
        public: bool,
        content: str,
        embed: discord.Embed | None = None,
        files: Callable[[], list[discord.File]] | None = None,
        view: discord.ui.View | None = None,
    ) -> None:
        def kwargs() -> dict[str, Any]:
            out: dict[str, Any] = {"content": content, "allowed_mentions": only_member(job.user_id)}
            if embed is not None:
                out["embed"] = embed
            if files is not None:
                out["files"] = files()
            if view is not None:
                out["view"] = view
            return out

        if self.token_usable(job):
            assert job.interaction is not None
            webhook = self._webhook(job.interaction)
            try:
                await with_retries(
                    lambda: webhook.send(wait=True, ephemeral=not public, **kwargs()),
                    what=f"follow-up of job {job.id}",
                )
                return
            except discord.HTTPException as exc:
                if is_transient(exc):
                    raise DeliveryFailed(str(exc)) from exc
                logger.info("follow-up of job %s refused (%s); using the channel", job.id, exc)
        mention = f"<@{job.user_id}>"
        text = content if content.startswith(mention) else f"{mention} {content}"
        await self._to_channel_or_dm(job, lambda: {**kwargs(), "content": text[:2000]})

    async def _to_channel_or_dm(self, job: JobView, kwargs: Callable[[], dict[str, Any]]) -> None:
        attempts: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        if job.channel_id is not None:
            channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            attempts.append(("channel", lambda: channel.send(**kwargs())))

        async def dm() -> Any:
            user = self.bot.get_user(job.user_id) or await self.bot.fetch_user(job.user_id)
            return await user.send(**kwargs())

        attempts.append(("direct message", dm))
        last: BaseException | None = None
        for where, send in attempts:
            try:
                await with_retries(send, what=f"{where} delivery of job {job.id}")
                return
            except discord.HTTPException as exc:
                last = exc
                if is_transient(exc):
                    break  # Discord is struggling: keep the job for the next sweep
                logger.info("%s delivery of job %s refused: %s", where, job.id, exc)
        if last is not None and not is_transient(last):
            # Nowhere to post (channel gone, DMs closed): give up on this job, loudly.
            logger.warning("job %s of user %s could not be delivered anywhere", job.id, job.user_id)
            return
        raise DeliveryFailed(str(last))


def _quote(text: str, limit: int = 80) -> str:
    text = discord.utils.escape_markdown(discord.utils.escape_mentions(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"
