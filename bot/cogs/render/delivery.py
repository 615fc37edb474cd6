"""Getting a finished render's outcome to its member, whatever happened in between.

Within the interaction token's 15 minutes the result is a follow-up of the member's own
interaction (and the private progress message is closed). Later — a long queue, a restart — it
is a channel message that mentions that member only: ``allowed_mentions`` names one user and
never @everyone or roles, whatever the prompt says. discord.py retries rate limits and server
errors inside each request; when it gives up, ``DeliveryFailed`` leaves the job undelivered
and the next sweep tries again, so nothing is lost and no retries stack.

Output safety (bot/services/safety.py): only images the output check passed are posted, plus,
where the job's record says so (an age-restricted channel of a guild that chose it), flagged
ones as spoilers. When images are withheld the member alone is told: an ephemeral follow-up
while the token lives, else a direct message; never the channel.

A private result (``private_result``: asked for where the bot cannot post, through the
member's own install; bot/cogs/place.py) is an ephemeral follow-up while the token lives, else
a direct message: only the member ever sees it.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.config import ResultLayout
from bot.services.jobs import JobService
from bot.services.metrics_port import MetricsPort
from bot.services.results import JobView
from bot.services.safety import DeliveryPlan, delivery_plan
from bot.ui.images import DEFAULT_FILESIZE_LIMIT, fit_all
from bot.ui.webhooks import edit_ref, is_transient, ref_usable, webhook
from kinds import JobStatus

from .views import PostedImage, result_embed, result_layout, result_view

logger = logging.getLogger(__name__)


def only_member(user_id: int) -> discord.AllowedMentions:
    """Mentions that may ping this one member and nobody else."""
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False
    )


def private_result(job: JobView) -> bool:
    """Whether the job's result is for its member's eyes only: asked for outside the guilds
    the bot is in and outside a DM with it, so the job keeps neither (bot/cogs/place.py)."""
    return job.guild_id is None and job.channel_id is None


class DeliveryFailed(Exception):
    """Every way to reach the member failed for now; the job stays undelivered."""


class Delivery:
    """Sends render results and notices (their embed and buttons: views.py)."""

    def __init__(
        self,
        client: discord.Client,
        jobs: JobService,
        *,
        metrics: MetricsPort | None = None,
        layout: ResultLayout = "gallery",
    ) -> None:
        self._client = client
        self._layout = layout
        self._metrics = metrics
        self._jobs = jobs
        # The upload limit each job's interaction announced (in-memory: after a restart the
        # guild's limit, or Discord's default, applies).
        self._filesize_limits: dict[int, int] = {}

    def remember_filesize_limit(self, job_id: int, limit: int) -> None:
        self._filesize_limits[job_id] = limit

    def _filesize_limit(self, job: JobView) -> int:
        limit = self._filesize_limits.get(job.id)
        if limit is not None:
            return limit
        guild = self._client.get_guild(job.guild_id) if job.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_FILESIZE_LIMIT

    # ------------------------------------------------------------------ public

    async def deliver(self, job: JobView) -> None:
        """Post the job's outcome and mark it delivered; ``DeliveryFailed`` leaves it pending."""
        try:
            await self._deliver(job)
        except DeliveryFailed:
            if self._metrics is not None:
                self._metrics.delivery_failed()
            raise

    async def _deliver(self, job: JobView) -> None:
        if job.status is JobStatus.DONE:
            await self._deliver_result(job)
        elif job.status is JobStatus.FAILED:
            text = f"Your render of “{_quote(job.prompt)}” failed. {job.error or ''}".strip()
            await self._send_private(job, text)
            await self.finish_progress(job, "This render failed; see the message below.")
        else:  # cancelled: the member who cancelled was told when they clicked
            await self.finish_progress(job, "Cancelled. Your render was refunded.")
        self._filesize_limits.pop(job.id, None)
        await self._jobs.mark_delivered(job.id)

    async def notify(self, job: JobView, text: str) -> None:
        """A short private notice about a job (e.g. it was requeued after a worker died)."""
        if not await self.edit_progress(job, text):
            await self._send_private(job, text)

    async def edit_progress(
        self,
        job: JobView,
        content: str,
        view: discord.ui.View | None = None,
        preview: bytes | None = None,
    ) -> bool:
        """Edit the member's private progress message, with ``preview`` (a JPEG) as its one
        attachment when given (else its attachment stays); False when that is not possible."""
        if preview is None:
            return await edit_ref(self._client, job.interaction, content, view=view)
        image = discord.File(io.BytesIO(preview), filename=f"preview-{job.id}.jpg")
        return await edit_ref(
            self._client, job.interaction, content, view=view, attachments=[image]
        )

    async def finish_progress(self, job: JobView, content: str) -> bool:
        """The progress message's last edit: ``content``, and no live preview left on it."""
        return await edit_ref(self._client, job.interaction, content, view=None, attachments=[])

    # ------------------------------------------------------------------ internals

    async def _deliver_result(self, job: JobView) -> None:
        outputs, flagged_as = await self._jobs.checked_outputs(job.id)
        plan = delivery_plan(outputs, flagged_as)
        if not plan.posted:
            await self._tell_withheld(job, plan)
            await self.finish_progress(job, "Finished — nothing was posted; see the message below.")
            return
        images = [png for _, png, _ in plan.posted]
        fitted = await asyncio.to_thread(fit_all, images, self._filesize_limit(job))

        def files() -> list[discord.File]:
            # Fresh File objects per attempt: a failed upload consumed the previous ones.
            return [
                discord.File(
                    io.BytesIO(f.data),
                    filename=f"render-{job.id}-{index + 1}.{f.extension}",
                    spoiler=spoiler,
                )
                for (index, _, spoiler), f in zip(plan.posted, fitted, strict=True)
            ]

        view: discord.ui.View | discord.ui.LayoutView
        if self._layout == "gallery":
            # The gallery names each upload (``SPOILER_`` prefixed where flagged, as uploaded).
            posted = [
                PostedImage(index + 1, file.filename, spoiler)
                for (index, _, spoiler), file in zip(plan.posted, files(), strict=True)
            ]
            view = result_layout(job, posted)
            message = _Message(files, view)
        else:
            view = result_view(job, [index + 1 for index, _, _ in plan.posted])
            message = _Message(files, view, content=f"<@{job.user_id}>", embed=result_embed(job))
        # Its buttons are DynamicItems the bot recognises by custom_id after any restart; a
        # stopped view is not kept in memory per message as well.
        view.stop()
        sent = await self._send(job, message)
        if sent is not None and not private_result(job):
            # Where it is, so erasing a joint render (either member's) deletes the message
            # (a private result is an ephemeral follow-up: nobody else sees it).
            try:  # the images are out: a retry must not post them twice
                await self._jobs.record_posted(job.id, sent.channel.id, sent.id)
            except Exception:
                logger.warning("job %s: could not record its posted message", job.id)
        if plan.withheld:
            try:  # the images are out: a retry must not post them twice
                await self._tell_withheld(job, plan)
            except DeliveryFailed:
                logger.warning("job %s: could not tell the member about withheld images", job.id)
        await self.finish_progress(job, "Done — your images are posted below.")

    async def _tell_withheld(self, job: JobView, plan: DeliveryPlan) -> None:
        """Tell the member, privately, that the output check withheld images."""
        count = len(plan.withheld)
        total = count + len(plan.posted)
        where = (
            "this server does not post them"
            if job.settings.age_restricted
            else "this channel is not age-restricted"
        )
        if plan.posted:
            text = (
                f"{count} of {total} images of your render of “{_quote(job.prompt)}” "
                f"{'was' if count == 1 else 'were'} withheld: the safety check flagged "
                f"{'it' if count == 1 else 'them'} and {where}. The render counts as usual."
            )
        else:
            text = (
                f"Your render of “{_quote(job.prompt)}” was withheld: the safety check flagged "
                f"{'its image' if total == 1 else f'all {total} images'} and {where}, so "
                "nothing was posted. This render was refunded."
            )
        await self._send_private(job, text)

    async def _send_private(self, job: JobView, content: str) -> None:
        """To the member only: an ephemeral follow-up while the token lives, else a direct
        message; never the channel."""
        if job.interaction is not None and ref_usable(job.interaction):
            hook = webhook(self._client, job.interaction)
            try:
                await hook.send(
                    content=content,
                    ephemeral=True,
                    allowed_mentions=only_member(job.user_id),
                    wait=True,
                )
                return
            except discord.HTTPException as exc:
                if is_transient(exc):
                    raise DeliveryFailed(str(exc)) from exc
                logger.info("private follow-up of job %s refused (%s); using a DM", job.id, exc)
        await self._to_channel_or_dm(
            job,
            lambda: {"content": content, "allowed_mentions": only_member(job.user_id)},
            to_channel=False,
        )

    async def _send(self, job: JobView, message: _Message) -> discord.Message | None:
        """The result: a follow-up while the token lives, else the channel (or a DM); a
        private result's follow-up is ephemeral and it has no channel. Returns the message
        posted (None when it could be posted nowhere). Anything meant for the
        member alone goes through ``_send_private`` instead."""
        mentions = only_member(job.user_id)
        if job.interaction is not None and ref_usable(job.interaction):
            hook = webhook(self._client, job.interaction)
            try:
                return await hook.send(
                    wait=True,
                    allowed_mentions=mentions,
                    ephemeral=private_result(job),
                    **message.kwargs(),
                )
            except discord.HTTPException as exc:
                if is_transient(exc):
                    raise DeliveryFailed(str(exc)) from exc
                logger.info("follow-up of job %s refused (%s); using the channel", job.id, exc)
        return await self._to_channel_or_dm(
            job, lambda: {**message.kwargs(), "allowed_mentions": mentions}
        )

    async def _to_channel_or_dm(
        self, job: JobView, kwargs: Callable[[], dict[str, Any]], *, to_channel: bool = True
    ) -> discord.Message | None:
        attempts: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        if to_channel and job.channel_id is not None:
            channel = self._client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            attempts.append(("channel", lambda: channel.send(**kwargs())))

        async def dm() -> Any:
            user = self._client.get_user(job.user_id) or await self._client.fetch_user(job.user_id)
            return await user.send(**kwargs())

        attempts.append(("direct message", dm))
        last: BaseException | None = None
        for where, send in attempts:
            try:
                sent: discord.Message = await send()
                return sent
            except discord.HTTPException as exc:
                last = exc
                if is_transient(exc):
                    break  # Discord is struggling: keep the job for the next sweep
                logger.info("%s delivery of job %s refused: %s", where, job.id, exc)
        if last is not None and not is_transient(last):
            # Nowhere to post (channel gone, DMs closed): give up on this job, loudly.
            logger.warning("job %s could not be delivered anywhere", job.id)
            if self._metrics is not None:
                self._metrics.delivery_failed(abandoned=True)
            return None
        raise DeliveryFailed(str(last))


@dataclass(frozen=True)
class _Message:
    """A result message in either layout; ``kwargs`` gives fresh files per attempt. A gallery
    (components V2) carries its mention and text in the view and may have no content or embed."""

    files: Callable[[], list[discord.File]]
    view: discord.ui.View | discord.ui.LayoutView
    content: str | None = None
    embed: discord.Embed | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": self.files(), "view": self.view}
        if self.content is not None:
            out["content"] = self.content
        if self.embed is not None:
            out["embed"] = self.embed
        return out


def _quote(text: str, limit: int = 80) -> str:
    text = discord.utils.escape_markdown(discord.utils.escape_mentions(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"
