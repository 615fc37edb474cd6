"""Render requests: validate, reserve quota, queue; cancel, reroll, variations, delete.

Everything a request can be refused for is checked here, before any GPU work: the prompt
(length in the text encoder's tokens, the guild's blocklist), the options (within the guild's
bounds), the quota and the queue limits. The reservation and the job row are written in one
transaction, serialised per guild (``lock_scope``), so concurrent requests can never overspend:
of 200 simultaneous requests against a limit of 10, exactly 10 are accepted.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import BestOfCharge, SafetySettings
from bot.errors import Forbidden, InvalidInput, NotFound, NotOwner
from bot.services import limits
from bot.services.admission import admit
from bot.services.events import JobEventKind, JobEvents
from bot.services.job_settings import StoredRender, render_column, two_subjects
from bot.services.jobs import JobService, queue_position
from bot.services.ledger import UNITS_PER_RENDER, refund, reserve
from bot.services.names import name_key
from bot.services.ports import EngineFacts
from bot.services.prompt_policy import PromptPolicy
from bot.services.prompts import clean_prompt, size_for, styled_prompt
from bot.services.quotas import QuotaService
from bot.services.render_subjects import PreparedRender, Subject, check_subjects, require_grant
from bot.services.results import (
    ASPECTS,
    GuildQuotas,
    InteractionRef,
    JobTicket,
    JobView,
    Refine,
    RefineKind,
    RenderOptions,
    RenderSettings,
)
from bot.services.workers import WorkerRegistry
from db.models import Avatar, RenderJob
from db.repositories import avatars as avatars_repo
from db.repositories import jobs as repo
from db.repositories.common import checkpoint, scrub_deletes
from db.session import Database
from db.types import utcnow
from engine.refine import UPSCALE_FACTOR, scaled_size
from engine.types import MAX_SEED
from kinds import AvatarStatus, JobStatus, SubjectKind, UnknownPersonalizer

logger = logging.getLogger(__name__)

MAX_GUIDANCE = 30.0
# The guidance of workers that publish none (their facts predate it; all ran SD1.5 profiles).
FALLBACK_GUIDANCE = 6.0

# Whether a member still belongs to a guild (the bot asks Discord; services cannot).
MembershipCheck = Callable[[int], Awaitable[bool]]


class RenderService:
    def __init__(
        self,
        database: Database,
        registry: WorkerRegistry,
        quotas: QuotaService,
        jobs: JobService,
        events: JobEvents,
        *,
        prompts: PromptPolicy,
        default_steps: int | None,
        default_guidance: float | None,
        fallback_guidance: float = FALLBACK_GUIDANCE,
        safety: SafetySettings | None = None,
        best_of_charge: BestOfCharge = "candidates",
        upscale_units: int = UNITS_PER_RENDER,
    ) -> None:
        """``default_guidance``: the operator's explicit setting, or None for the engine's
        own (``EngineFacts.default_guidance``: FLUX.2 [klein] wants 1.0, SD1.5 6.0), else
        ``fallback_guidance`` (workers that published no guidance)."""
        self._db = database
        self._registry = registry
        self._quotas = quotas
        self._jobs = jobs
        self._events = events
        self._prompts = prompts
        self._default_steps = default_steps
        self._default_guidance = default_guidance
        self._fallback_guidance = fallback_guidance
        # The cool-down after withheld renders (bot/services/withheld.py).
        self._safety = safety or SafetySettings()
        self._best_of_charge = best_of_charge
        self._upscale_units = upscale_units

    async def request(
        self,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        avatar_name: str,
        prompt: str,
        options: RenderOptions = RenderOptions(),
        interaction: InteractionRef | None = None,
        *,
        age_restricted: bool = False,
        with_avatar: str | None = None,
    ) -> JobTicket:
        """Queue a render of the member's avatar; returns the job id and queue position.

        ``with_avatar`` names a second avatar of the same member to put in the same picture
        (the first is "image 1" in the prompt, this one "image 2"); only personalizers that
        show two subjects take it.

        Raises ``NotFound`` (no such avatar of theirs), ``InvalidInput`` (prompt or options out
        of bounds, the same avatar twice, a second avatar the personalizer cannot show),
        ``PromptRefused`` (blocklist), ``QuotaExceeded`` (with ``resets_at``), ``RateLimited``
        (renders per minute, with ``retry_at``) or ``QueueFull`` (with ``retry_at`` for the
        guild's cap). Nothing is reserved when it raises.
        """
        prepared = await self.prepare(
            user_id,
            guild_id,
            avatar_name,
            prompt,
            options,
            age_restricted=age_restricted,
            with_avatar=with_avatar,
        )
        return await self.enqueue(user_id, guild_id, channel_id, prepared, interaction)

    async def prepare(
        self,
        user_id: int,
        guild_id: int | None,
        avatar_name: str,
        prompt: str,
        options: RenderOptions = RenderOptions(),
        *,
        age_restricted: bool = False,
        with_avatar: str | None = None,
        with_owner: int | None = None,
    ) -> PreparedRender:
        """Everything :meth:`request` checks before the quota: the avatars, the prompt (the
        guild's policy with every subject in the picture) and the options, validated into
        the settings a job stores. ``with_owner``: the member whose avatar ``with_avatar``
        names when it is not the requester's (bot/services/friends.py has checked their
        consent first)."""
        second_name = " ".join(str(with_avatar).split()) if with_avatar is not None else ""
        async with self._db.begin(readonly=True) as session:
            quotas = await self._quotas.quotas_in(session, guild_id)
            avatar = await self._subject(
                session, user_id, avatar_name, "You have no avatar by that name. See /avatar list."
            )
            subjects = [avatar]
            if second_name:
                second = await self._subject(
                    session,
                    user_id if with_owner is None else with_owner,
                    second_name,
                    (
                        f"You have no avatar named “{second_name[:40]}” to render with. "
                        "See /avatar list."
                        if with_owner is None
                        else f"That member has no avatar named “{second_name[:40]}”."
                    ),
                )
                if second.id == avatar.id:
                    raise InvalidInput(
                        f"Pick two different avatars: “{avatar.name}” is already the first one."
                    )
                subjects.append(second)
            for subject in subjects:
                await limits.check_avatar_fits(session, quotas, subject, subject.owner_id)
            chosen = [Subject.of(a) for a in subjects]
        text = clean_prompt(prompt)
        negative = clean_prompt(options.negative_prompt, what="negative prompt", allow_empty=True)
        facts = await self._registry.current_facts()
        settings = replace(
            self._settings(
                text,
                negative,
                options,
                quotas,
                facts,
                age_restricted=age_restricted,
                subjects=chosen,
            ),
            age_restricted=age_restricted,
        )
        return PreparedRender(tuple(chosen), text, settings)

    async def enqueue(
        self,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        prepared: PreparedRender,
        interaction: InteractionRef | None = None,
    ) -> JobTicket:
        """Queue a prepared render, charged to ``user_id`` (the quota and queue checks)."""
        return await self._enqueue(
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            subjects=prepared.subjects,
            prompt=prepared.prompt,
            settings=prepared.settings,
            interaction=interaction,
            parent_job_id=None,
        )

    async def check_admission(
        self, user_id: int, guild_id: int | None, prepared: PreparedRender
    ) -> None:
        """Raise what :meth:`enqueue` would for the quota, the limits and the queues, without
        reserving anything (a render that waits for another member's answer)."""
        async with self._db.begin() as session:
            await admit(
                session,
                self._quotas,
                user_id,
                guild_id,
                prepared.settings,
                self._units(prepared.settings),
                utcnow(),
                safety=self._safety,
            )

    async def reroll(
        self,
        user_id: int,
        job_id: int,
        interaction: InteractionRef | None = None,
        *,
        is_member: MembershipCheck | None = None,
    ) -> JobTicket:
        """The same render again with a new seed (owner only; quota applies).

        ``is_member(guild_id)``: whether the member still belongs to the guild whose quota
        the new job spends (the bot asks Discord; a button can be pressed in a DM long after
        the member left or was kicked); ``Forbidden`` when not. None: no check (the CLI)."""
        return await self._again(user_id, job_id, interaction, is_member, variations=False)

    async def variations(
        self,
        user_id: int,
        job_id: int,
        interaction: InteractionRef | None = None,
        *,
        is_member: MembershipCheck | None = None,
    ) -> JobTicket:
        """More takes on a render: same avatar, prompt and settings, new seeds, as many images
        as the guild allows per render (owner only; quota applies; ``is_member`` as for
        :meth:`reroll`). The engine has no image-to-image path, so a variation is a fan-out
        of fresh seeds, not an edit."""
        return await self._again(user_id, job_id, interaction, is_member, variations=True)

    async def upscale(
        self,
        user_id: int,
        job_id: int,
        index: int,
        interaction: InteractionRef | None = None,
        *,
        is_member: MembershipCheck | None = None,
    ) -> JobTicket:
        """An Upscale x2 of image ``index`` (1-based) of a finished render of the member's:
        one image of twice the side, new seed, charged ``upscale_units`` renders
        (``is_member`` as for :meth:`reroll`)."""
        return await self._refine(user_id, job_id, index, "upscale", interaction, is_member)

    async def vary(
        self,
        user_id: int,
        job_id: int,
        index: int,
        variation: Literal["subtle", "strong"],
        interaction: InteractionRef | None = None,
        *,
        is_member: MembershipCheck | None = None,
    ) -> JobTicket:
        """Variations of image ``index`` (1-based) of a finished render of the member's: as
        many images as it had, at its size, new seeds, re-rendered from it at the
        ``variation``'s strength; one render of quota (``is_member`` as for :meth:`reroll`)."""
        kind: RefineKind = "vary_subtle" if variation == "subtle" else "vary_strong"
        return await self._refine(user_id, job_id, index, kind, interaction, is_member)

    async def cancel(self, user_id: int, job_id: int) -> JobView:
        """Cancel a queued or running job of the caller's.

        Refund rule: a job cancelled while still **queued** is refunded in full; once a worker
        has **started** it (``running``: GPU time is being spent) it is not refunded, whatever
        its progress. Otherwise a member could render to 99 %, cancel and start again, for
        ever, without the quota ever counting. Units are whole renders, so there is no
        partial refund. A job handed back to the queue (a worker stopped or died) is queued
        again and refundable again. See :func:`refunds_on_cancel`.
        """
        now = utcnow()
        async with self._db.begin() as session:
            job = await self._owned(session, user_id, job_id)
            cancelled = await repo.cancel(session, job.id, now)
            if cancelled is None:
                raise InvalidInput("This render has already finished.")
            if refunds_on_cancel(cancelled):
                await refund(session, cancelled, now, note="cancelled by user")
            # Its worker, wherever it runs, stops rendering it.
            await self._events.publish(session, JobEventKind.CANCELLED, job.id)
            view = (await self._jobs.views_in(session, [cancelled]))[0]
        logger.info("job %s cancelled by its member", job_id)
        return view

    async def delete(self, user_id: int, job_id: int) -> None:
        """Delete a job of the caller's with its prompt and images (cancelled first if it has
        not finished: refunded only if it was still queued, as for :meth:`cancel`)."""
        now = utcnow()
        async with self._db.begin() as session:
            job = await self._owned(session, user_id, job_id)
            cancelled = await repo.cancel(session, job.id, now)
            if cancelled is not None:
                if refunds_on_cancel(cancelled):  # the same rule as cancel
                    await refund(session, cancelled, now, note="deleted by user")
                await self._events.publish(session, JobEventKind.CANCELLED, job.id)
            await scrub_deletes(session)
            await repo.delete_job(session, job.id)
        await checkpoint(self._db)

    # -- internals -------------------------------------------------------------------------

    def _settings(
        self,
        prompt: str,
        negative: str,
        options: RenderOptions,
        quotas: GuildQuotas,
        facts: EngineFacts,
        personalizer: str | None = None,
        *,
        age_restricted: bool,
        subjects: Sequence[Subject],
    ) -> RenderSettings:
        if options.aspect not in ASPECTS:
            raise InvalidInput(f"The aspect must be one of {', '.join(ASPECTS)}.")
        if not 1 <= options.count <= quotas.images_per_render:
            raise InvalidInput(
                f"You can ask for 1 to {quotas.images_per_render} images per render here."
            )
        steps = options.steps or self._default_steps or facts.default_steps
        if options.steps is None:
            steps = min(steps, quotas.max_steps)
        if not 1 <= steps <= quotas.max_steps:
            raise InvalidInput(f"Steps must be between 1 and {quotas.max_steps} here.")
        guidance = options.guidance
        if guidance is None:
            guidance = self._default_guidance
        if guidance is None:
            guidance = facts.default_guidance
        if guidance is None:
            guidance = self._fallback_guidance
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InvalidInput(f"Guidance must be between 0 and {MAX_GUIDANCE:g}.")
        if not 0.0 <= options.identity_strength <= 1.0:
            raise InvalidInput("Identity strength must be between 0 and 100 %.")
        seed = options.seed if options.seed is not None else secrets.randbelow(2**32)
        if not 0 <= seed <= MAX_SEED:
            raise InvalidInput(f"The seed must be between 0 and {MAX_SEED}.")
        full, full_negative = styled_prompt(prompt, negative, options.style)
        # The guild's prompt policy (bot/services/prompt_policy.py): the channel and whether
        # an avatar in the picture is a person decide what is refused.
        person = any(s.kind == SubjectKind.PERSON.value for s in subjects)
        self._prompts.for_guild(quotas.blocked_terms, quotas.allowed_terms, quotas.guild_id).check(
            prompt, negative, age_restricted=age_restricted, person=person
        )
        self._check_tokens(facts, full, "prompt")
        self._check_tokens(facts, full_negative, "negative prompt")
        width, height = size_for(
            options.aspect, facts.native_size, quotas.max_side, facts.size_multiple
        )
        personalizer = personalizer or quotas.personalizer or facts.default_personalizer
        try:
            facts.encoder_id(personalizer)
        except UnknownPersonalizer as exc:
            raise InvalidInput(
                f"The render workers have no “{personalizer}” personalizer; an admin can pick "
                f"one of {', '.join(exc.known)}."
            ) from exc
        check_subjects(facts, personalizer, len(subjects))
        best_of = self._candidates(options, quotas, facts, subjects)
        return RenderSettings(
            negative_prompt=negative,
            style=options.style,
            aspect=options.aspect,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            count=options.count,
            seed=seed,
            identity_strength=options.identity_strength,
            personalizer=personalizer,
            best_of=best_of,
        )

    def _candidates(
        self,
        options: RenderOptions,
        quotas: GuildQuotas,
        facts: EngineFacts,
        subjects: Sequence[Subject],
    ) -> int:
        """How many images to render for ``options.count`` posted ones (best of k): the
        member's choice, else the guild's default where the workers can measure likeness."""
        asked = options.best_of
        ceiling = self._quotas.ceilings["best_of"]
        if asked is not None and not 1 <= asked <= ceiling:
            raise InvalidInput(f"Best of must be between 1 and {ceiling} here.")
        wanted = asked if asked is not None else quotas.best_of
        if wanted <= options.count:
            return options.count
        if len(subjects) == 1 and facts.likeness_method(subjects[0].kind) is not None:
            return wanted
        if asked is None:  # the guild's default applies where it can
            return options.count
        what = "two avatars in one picture" if len(subjects) > 1 else f"a {subjects[0].kind} avatar"
        raise InvalidInput(
            "Best of picks the images most like your avatar, and the render workers cannot "
            f"measure that for {what}. Ask without best of."
        )

    def _units(self, settings: RenderSettings) -> int:
        """The quota units a render reserves: one, or with best of k and the ``candidates``
        charge one per ``count`` images rendered (the GPU time it takes)."""
        if settings.refine is not None and settings.refine.kind == "upscale":
            return self._upscale_units
        if self._best_of_charge == "posted":
            return UNITS_PER_RENDER
        return UNITS_PER_RENDER * math.ceil(settings.best_of / settings.count)

    def _check_tokens(self, facts: EngineFacts, text: str, what: str) -> None:
        limit = facts.max_prompt_tokens
        used = facts.count_tokens(text)
        if used is not None and used > limit:
            raise InvalidInput(
                f"The {what} is too long: {used} tokens (with the style), the limit is {limit}."
            )

    async def _again(
        self,
        user_id: int,
        job_id: int,
        interaction: InteractionRef | None,
        is_member: MembershipCheck | None,
        *,
        variations: bool,
    ) -> JobTicket:
        old, chosen, quotas, old_view = await self._source(user_id, job_id, is_member)
        previous = old_view.settings
        count = quotas.images_per_render if variations else previous.count
        settings = await self._again_settings(
            old_view, chosen, quotas, count=count, best_of=previous.best_of
        )
        return await self._enqueue_after(user_id, old, chosen, old_view, settings, interaction)

    async def _refine(
        self,
        user_id: int,
        job_id: int,
        index: int,
        kind: RefineKind,
        interaction: InteractionRef | None,
        is_member: MembershipCheck | None,
    ) -> JobTicket:
        old, chosen, quotas, old_view = await self._source(user_id, job_id, is_member)
        if old_view.status != JobStatus.DONE:
            raise InvalidInput("Only a finished render's images can be upscaled or varied.")
        async with self._db.begin(readonly=True) as session:
            rows = await repo.outputs(session, old.id)
        chosen_row = next((r for r in rows if r.index == index - 1), None)
        if chosen_row is None:
            raise InvalidInput(f"This render has no image {index}.")
        if chosen_row.flagged:
            raise InvalidInput(
                f"Image {index} was withheld by the safety check, so it cannot be refined."
            )
        facts = await self._registry.current_facts()
        personalizer = old_view.settings.personalizer
        upscale = kind == "upscale"
        if not facts.refines_with(personalizer, "upscale" if upscale else "vary"):
            raise InvalidInput(_cannot_refine(facts, personalizer, upscale))
        count = 1 if upscale else old_view.settings.count
        settings = await self._again_settings(old_view, chosen, quotas, count=count, best_of=1)
        width, height = scaled_size(
            (chosen_row.width, chosen_row.height),
            UPSCALE_FACTOR if upscale else 1,
            facts.size_multiple,
        )
        settings = replace(
            settings,
            width=width,
            height=height,
            refine=Refine(kind=kind, source_job_id=old.id, source_index=index),
        )
        return await self._enqueue_after(user_id, old, chosen, old_view, settings, interaction)

    async def _enqueue_after(
        self,
        user_id: int,
        old: RenderJob,
        chosen: Sequence[Subject],
        old_view: JobView,
        settings: RenderSettings,
        interaction: InteractionRef | None,
    ) -> JobTicket:
        """Queue a job made from ``old`` (its child), in the same guild and channel."""
        return await self._enqueue(
            user_id=user_id,
            guild_id=old.guild_id,
            channel_id=old.channel_id,
            subjects=chosen,
            prompt=old_view.prompt,
            settings=settings,
            interaction=interaction,
            parent_job_id=old.id,
        )

    async def _source(
        self, user_id: int, job_id: int, is_member: MembershipCheck | None
    ) -> tuple[RenderJob, list[Subject], GuildQuotas, JobView]:
        """A job of the member's to render again, its avatars (each still fitting the guild's
        limits) and the guild's quotas; ``Forbidden`` when they left the guild."""
        async with self._db.begin(readonly=True) as session:
            guild_id = (await self._owned(session, user_id, job_id)).guild_id
        if guild_id is not None and is_member is not None and not await is_member(guild_id):
            raise Forbidden(
                "You are no longer a member of the server this render was made in, so it "
                "cannot be rerolled or varied."
            )
        async with self._db.begin(readonly=True) as session:
            old = await self._owned(session, user_id, job_id)
            if old.avatar_id is None:
                raise NotFound("The avatar of this render was deleted.")
            avatar = await avatars_repo.by_id(session, old.avatar_id)
            if avatar is None:
                raise NotFound("The avatar of this render was deleted.")
            subjects = [avatar]
            # Both subjects again, or none: a render whose second avatar is gone is refused,
            # never redone as a picture of the first alone.
            if old.with_avatar_id is not None or two_subjects(old.settings):
                second = None
                if old.with_avatar_id is not None:
                    second = await avatars_repo.by_id(session, old.with_avatar_id)
                if second is None:
                    raise NotFound("The second avatar of this render was deleted.")
                # Another member's avatar again only while they always allow it.
                await require_grant(session, second, user_id)
                subjects.append(second)
            quotas = await self._quotas.quotas_in(session, old.guild_id)
            for subject in subjects:
                await limits.check_avatar_fits(session, quotas, subject, subject.owner_id)
            chosen = [Subject.of(a) for a in subjects]
            old_view = (await self._jobs.views_in(session, [old]))[0]
        return old, chosen, quotas, old_view

    async def _again_settings(
        self,
        old_view: JobView,
        chosen: Sequence[Subject],
        quotas: GuildQuotas,
        *,
        count: int,
        best_of: int,
    ) -> RenderSettings:
        """The settings of ``old_view`` validated again for a new job: ``count`` images,
        ``best_of`` candidates, a new seed."""
        previous = old_view.settings
        options = RenderOptions(
            negative_prompt=previous.negative_prompt,
            style=previous.style,
            aspect=previous.aspect,
            count=min(count, quotas.images_per_render),
            seed=None,
            identity_strength=previous.identity_strength,
            steps=min(previous.steps, quotas.max_steps),
            guidance=previous.guidance,
            best_of=best_of,
        )
        facts = await self._registry.current_facts()
        return replace(
            self._settings(
                old_view.prompt,
                previous.negative_prompt,
                options,
                quotas,
                facts,
                previous.personalizer,
                age_restricted=previous.age_restricted,
                subjects=chosen,
            ),
            # Same channel as the original: the same policy.
            age_restricted=previous.age_restricted,
        )

    async def _enqueue(
        self,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        subjects: Sequence[Subject],
        prompt: str,
        settings: RenderSettings,
        interaction: InteractionRef | None,
        parent_job_id: int | None,
    ) -> JobTicket:
        first, *others = subjects
        second = others[0] if others else None
        now = utcnow()
        async with self._db.begin() as session:
            units = self._units(settings)
            await admit(
                session, self._quotas, user_id, guild_id, settings, units, now, safety=self._safety
            )
            job = await self._jobs.insert(
                session,
                user_id=user_id,
                guild_id=guild_id,
                channel_id=channel_id,
                avatar_id=first.id,
                with_avatar_id=second.id if second is not None else None,
                parent_job_id=parent_job_id,
                prompt=prompt,
                negative_prompt=settings.negative_prompt,
                settings=render_column(
                    StoredRender(
                        settings,
                        avatar_name=first.name,
                        with_avatar_name=second.name if second is not None else None,
                    )
                ),
                seed=settings.seed,
                reserved=units,
                now=now,
                interaction=interaction,
            )
            await reserve(session, job, now)
            await self._events.publish(session, JobEventKind.ENQUEUED, job.id)
            job_id = job.id
        async with self._db.begin(readonly=True) as session:
            position = await queue_position(session, job_id)
        logger.info("queued job %s (position %s)", job_id, position)
        logger.debug("job %s is user %s's", job_id, user_id)
        return JobTicket(job_id=job_id, position=position if position is not None else 0)

    async def _subject(
        self, session: AsyncSession, user_id: int, name: str, not_found: str
    ) -> Avatar:
        """One of the member's own avatars by name, ready to render (``NotFound`` with
        ``not_found`` when they have none by that name: another member's is never found)."""
        avatar = await avatars_repo.by_name(session, user_id, name_key(" ".join(str(name).split())))
        if avatar is None:
            raise NotFound(not_found)
        if avatar.status == AvatarStatus.PENDING:
            raise InvalidInput(f"“{avatar.name}” is still being checked; try again in a moment.")
        return avatar

    async def _owned(self, session: AsyncSession, user_id: int, job_id: int) -> RenderJob:
        job = await repo.get(session, job_id, fresh=True)
        if job is None:
            raise NotFound("This render no longer exists.")
        if job.user_id != user_id:
            raise NotOwner("Only the member who asked for this render can do that.")
        return job


def _cannot_refine(facts: EngineFacts, personalizer: str, upscale: bool) -> str:
    """Why the workers refuse this refinement of a ``personalizer`` render."""
    if not upscale and facts.refines_with(personalizer, "upscale"):
        # FLUX.2 [klein]: its pipeline reads images only as references, with no strength.
        return (
            f"The render workers' {personalizer} personalizer cannot vary an image: it reads "
            "images only as references, with no image-to-image strength to say how much of "
            "the image to keep. Upscale works on this render."
        )
    return (
        f"The render workers' {personalizer} personalizer cannot re-render an image, so "
        "Upscale and Vary are not available for this render."
    )


def refunds_on_cancel(job: RenderJob) -> bool:
    """Whether a job the member cancels (or deletes) before it finished gets its unit back:
    only when no worker had started it. ``started_at`` is set by the claim and cleared when a
    job goes back to the queue, so on the row the cancel's UPDATE returned it says whether
    the job was running at that instant."""
    return job.started_at is None


__all__ = ["RenderService", "refunds_on_cancel"]
