"""Jobs as the bot sees them: views, outputs, history, delivery, recovery, retention.

Lifecycle: ``queued → running → done | failed | cancelled``. The dispatcher
(bot/services/dispatcher.py) moves jobs through it; the renders and avatars services create
them (renders cancel them). Final states are written by conditional updates (db/queue.py
``finish_job``, db/repositories/jobs.py ``cancel``), so a job reaches one final state once
and its refund, in the same transaction, is written at most once.

Retention: a finished job (prompt, settings and output images) is kept until it was delivered
and ``Settings.output_retention_hours`` have passed since it finished; an undelivered one at
most ``UNDELIVERED_GRACE`` longer. Then the row and its outputs are deleted; the ledger keeps
its counts (``job_id`` becomes NULL).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import NotFound
from bot.services import crypto, departed
from bot.services.crypto import DataCipher
from bot.services.events import JobEventKind, JobEvents
from bot.services.job_settings import StoredRender, read_render, two_subjects
from bot.services.ledger import day_bounds, refund
from bot.services.results import (
    AttemptView,
    InteractionRef,
    JobHistory,
    JobView,
)
from bot.services.safety import CheckedOutput, recorded_posting, render_shows_a_person
from db import queue
from db.models import RenderJob
from db.repositories import avatars as avatars_repo
from db.repositories import counted as counted_repo
from db.repositories import friends as friends_repo
from db.repositories import jobs as repo
from db.repositories import ledger as ledger_repo
from db.repositories.common import checkpoint, scrub_deletes
from db.repositories.jobs import OutputFacts
from db.session import Database
from db.types import utcnow
from kinds import AvatarStatus, JobKind, JobStatus

logger = logging.getLogger(__name__)

# What each kind of sealed blob is bound to (bot/services/crypto.py, with table, row, owner).
PHOTO_PURPOSE = crypto.PHOTO_PURPOSE
FEATURES_PURPOSE = crypto.FEATURES_PURPOSE
OUTPUT_PURPOSE = crypto.OUTPUT_PURPOSE
# How long past its retention an undelivered job waits for delivery before it goes anyway.
UNDELIVERED_GRACE = timedelta(days=7)
# A job is tried at most this many times (the first run plus requeues after worker crashes);
# the default of ``Settings.jobs.max_attempts``.
MAX_ATTEMPTS = 3

INTERRUPTED_MESSAGE = (
    "The render was interrupted several times and was given up. Your render was refunded."
)


@dataclass(frozen=True)
class RecoveryReport:
    requeued: list[JobView]
    given_up: list[JobView]


async def release_failed(session: AsyncSession, job: RenderJob, now: datetime, note: str) -> None:
    """What a job that failed (or was given up) gives back, in its final transaction: a
    render's quota reservation; an avatar creation's pending avatar (its name and photos)."""
    await refund(session, job, now, note=note)
    if job.kind == JobKind.ENCODE and job.avatar_id is not None:
        avatar = await avatars_repo.by_id(session, job.avatar_id)
        if avatar is not None and avatar.status == AvatarStatus.PENDING:
            await scrub_deletes(session)
            await avatars_repo.delete_avatar(session, avatar.id)


class JobService:
    def __init__(
        self,
        database: Database,
        cipher: DataCipher,
        retention_hours: int,
        events: JobEvents,
        *,
        audit_retention_days: int | None = None,
    ) -> None:
        self._db = database
        self._cipher = cipher
        self._events = events
        self.retention = timedelta(hours=retention_hours)
        # What a guild that removed the bot keeps (bot/services/departed.py).
        self.audit_retention = (
            timedelta(days=audit_retention_days)
            if audit_retention_days is not None
            else departed.DEFAULT_AUDIT_RETENTION
        )

    async def view(self, job_id: int) -> JobView:
        """A job's current state (for progress and delivery; no ownership check: the bot
        shows jobs in the channel they were requested in)."""
        async with self._db.begin(readonly=True) as session:
            job = await repo.get(session, job_id)
            if job is None:
                raise NotFound("This render no longer exists.")
            return (await self.views_in(session, [job]))[0]

    async def outputs(self, job_id: int) -> list[bytes]:
        """The finished job's PNGs in order (empty for failed or cancelled jobs)."""
        async with self._db.begin(readonly=True) as session:
            job = await repo.get(session, job_id)
            if job is None:
                raise NotFound("This render no longer exists.")
            rows = await repo.outputs(session, job_id)
            return [
                self._cipher.open(r.data, crypto.output_binding(r.id, job.user_id)) for r in rows
            ]

    async def checked_outputs(self, job_id: int) -> tuple[list[CheckedOutput], str]:
        """The finished job's images with the output check's flag on each, and what happens to
        flagged ones (``block`` or ``spoiler``, decided when the job finished; never
        ``spoiler`` for a person: see bot/services/safety.py). Delivery posts only what this
        allows."""
        async with self._db.begin(readonly=True) as session:
            job = await repo.get(session, job_id)
            if job is None:
                raise NotFound("This render no longer exists.")
            rows = await repo.outputs(session, job_id)
            checked = [
                CheckedOutput(
                    r.index,
                    self._cipher.open(r.data, crypto.output_binding(r.id, job.user_id)),
                    r.flagged,
                )
                for r in rows
            ]
            flagged_as = recorded_posting(job.result)
            # Defence in depth: a person's flagged image is never posted, whatever the record
            # says (one written before that rule, or by an older worker).
            subjects = [
                job.avatar_id,
                *([job.with_avatar_id] if two_subjects(job.settings) else []),
            ]
            if flagged_as != "block" and await render_shows_a_person(session, subjects):
                flagged_as = "block"
            return checked, flagged_as

    async def undelivered(self) -> list[JobView]:
        """Finished jobs whose result the bot has not delivered yet (after a restart, too),
        oldest first. The bot delivers each, then calls ``mark_delivered``."""
        async with self._db.begin(readonly=True) as session:
            rows = await repo.in_status(
                session,
                [JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED],
                undelivered_only=True,
            )
            return await self.views_in(session, rows)

    async def active(self) -> list[JobView]:
        """Queued and running jobs, oldest first (the bot resumes their progress messages)."""
        async with self._db.begin(readonly=True) as session:
            rows = await repo.in_status(session, [JobStatus.QUEUED, JobStatus.RUNNING])
            return await self.views_in(session, rows)

    async def history(self, job_id: int) -> JobHistory:
        """A job with every attempt (which worker, when, how it ended): for operators."""
        async with self._db.begin(readonly=True) as session:
            job = await repo.get(session, job_id)
            if job is None:
                raise NotFound(f"There is no job {job_id}.")
            view = (await self.views_in(session, [job]))[0]
            attempts = await repo.attempts_of(session, job_id)
            return JobHistory(
                job=view,
                attempts=tuple(
                    AttemptView(a.number, a.worker_id, a.claimed_at, a.ended_at, a.outcome, a.error)
                    for a in attempts
                ),
                worker_id=job.worker_id,
                lease_expires_at=job.lease_expires_at,
            )

    async def mark_delivered(self, job_id: int) -> bool:
        """Record that the result was delivered; False if it already was (or is gone)."""
        async with self._db.begin() as session:
            return await repo.mark_delivered(session, job_id, utcnow())

    async def record_posted(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Remember the posted result message (an erasure of a joint render deletes it)."""
        async with self._db.begin() as session:
            await repo.record_posted(session, job_id, channel_id, message_id)

    async def set_progress_message(self, job_id: int, message_id: int) -> None:
        """Remember the message that shows the job's progress (edited until it finishes)."""
        async with self._db.begin() as session:
            await repo.set_progress_message(session, job_id, message_id)

    async def position(self, job_id: int) -> int | None:
        """The job's place in the queue (1 = runs next), None unless it is queued."""
        async with self._db.begin(readonly=True) as session:
            return await queue_position(session, job_id)

    # -- maintenance (the dispatcher calls these) -----------------------------------------

    async def recover(
        self, *, all_running: bool = False, max_attempts: int = MAX_ATTEMPTS
    ) -> RecoveryReport:
        """Requeue jobs whose worker died (bounded attempts) and fail, refunding, those out of
        attempts (they stay undelivered, so the bot tells their members). Each change is
        announced (``requeued`` wakes workers and tells the member; ``finished`` delivers).

        ``all_running`` adopts every running job regardless of its lease: only for a process
        that knows it is the queue's only worker.
        """
        now = utcnow()
        async with self._db.begin() as session:
            report = await queue.reset_orphans(
                session, now=now, max_attempts=max_attempts, all_running=all_running
            )
            for job in report.requeued:
                await self._events.publish(session, JobEventKind.REQUEUED, job.id)
            given_up: list[RenderJob] = []
            for job in report.abandoned:
                cancelled = job.cancel_requested
                status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
                finished = await queue.finish_job(
                    session,
                    job.id,
                    worker_id=None,
                    status=status,
                    now=now,
                    error_code=None if cancelled else "interrupted",
                    error=None if cancelled else INTERRUPTED_MESSAGE,
                )
                if finished is not None:
                    await release_failed(session, finished, now, note=f"recovery: {status}")
                    await self._events.publish(session, JobEventKind.FINISHED, finished.id)
                    given_up.append(finished)
            result = RecoveryReport(
                requeued=await self.views_in(session, report.requeued),
                given_up=await self.views_in(session, given_up),
            )
        for view in result.requeued:
            logger.warning("job %s requeued: its worker died", view.id)
        for view in result.given_up:
            logger.warning("job %s given up and refunded", view.id)
        return result

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete finished jobs past their retention (see the module docstring), and clear
        the forget-me keys of earlier days from the usage ledger (bot/services/usage_keys.py),
        and what departed guilds kept past its time (bot/services/departed.py). Retries a WAL
        checkpoint an earlier erasure could not finish (the job loop runs this every
        ``maintenance_seconds``)."""
        now = now or utcnow()
        cutoff = now - self.retention
        async with self._db.begin() as session:
            await scrub_deletes(session)
            await ledger_repo.expire_user_keys(session, day_bounds(now)[0])
            await counted_repo.expire_user_keys(session, day_bounds(now)[0])
            kept = await departed.erase_expired(session, now, self.audit_retention)
            # Requests to render with another member's avatar, once expired (their prompts).
            await friends_repo.delete_expired(session, now)
            erased = await repo.purge_finished(
                session,
                finished_before=cutoff,
                undelivered_before=cutoff - UNDELIVERED_GRACE,
                created_before=day_bounds(now)[0],
            )
        if erased.jobs or kept.ledger_rows or kept.audit_entries or self._db.checkpoint_pending:
            # Also retries a checkpoint that a reader blocked after an earlier erasure.
            await checkpoint(self._db)
        if erased.jobs:
            logger.info("purged %s expired jobs (%s outputs)", erased.jobs, erased.outputs)
        return erased.jobs

    # -- views -----------------------------------------------------------------------------

    async def views_in(self, session: AsyncSession, jobs: Sequence[RenderJob]) -> list[JobView]:
        ids = [j.id for j in jobs]
        outputs = await repo.output_facts(session, ids)
        avatar_names: dict[int, str] = {}
        ids_named = {j.avatar_id for j in jobs} | {j.with_avatar_id for j in jobs}
        for avatar_id in {i for i in ids_named if i is not None}:
            avatar = await avatars_repo.by_id(session, avatar_id)
            if avatar is not None:
                avatar_names[avatar_id] = avatar.name
        return [job_view(j, outputs.get(j.id, []), avatar_names, self._cipher) for j in jobs]

    def texts(self, job: RenderJob) -> JobTexts:
        """The job's prompt, negative prompt and interaction token, opened."""
        return job_texts(self._cipher, job)

    async def insert(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        avatar_id: int,
        settings: dict[str, object],
        seed: int,
        reserved: int,
        now: datetime,
        interaction: InteractionRef | None,
        kind: JobKind = JobKind.RENDER,
        prompt: str = "",
        negative_prompt: str | None = None,
        with_avatar_id: int | None = None,
        parent_job_id: int | None = None,
    ) -> RenderJob:
        """Insert a job row with its prompt, negative prompt and interaction token sealed
        (bound to the row's id and owner): the row is inserted with empty placeholders, then
        sealed once its id is known, in the caller's transaction."""
        job = RenderJob(
            kind=kind,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            avatar_id=avatar_id,
            with_avatar_id=with_avatar_id,
            parent_job_id=parent_job_id,
            prompt="",
            settings=settings,
            seed=seed,
            reserved=reserved,
            created_at=now,
        )
        texts = {"prompt": prompt, "negative_prompt": negative_prompt, "interaction_token": None}
        if interaction is not None:
            job.interaction_app_id = interaction.application_id
            job.interaction_expires_at = interaction.expires_at
            job.progress_message_id = interaction.message_id
            texts["interaction_token"] = interaction.token
        await repo.add(session, job)
        for name, value in texts.items():
            if value is not None:
                binding = crypto.job_binding(SEALED_JOB_TEXTS[name], job.id, job.user_id)
                setattr(job, name, self._cipher.seal_text(value, binding))
        await session.flush()
        return job


# A job's text columns sealed at rest, with their purposes.
SEALED_JOB_TEXTS = {
    "prompt": crypto.PROMPT_PURPOSE,
    "negative_prompt": crypto.NEGATIVE_PROMPT_PURPOSE,
    "interaction_token": crypto.INTERACTION_TOKEN_PURPOSE,
}


@dataclass(frozen=True)
class JobTexts:
    prompt: str
    negative_prompt: str
    interaction_token: str | None


def job_texts(cipher: DataCipher, job: RenderJob) -> JobTexts:
    """A job's prompt, negative prompt and interaction token, opened."""

    def opened(name: str) -> str | None:
        value: str | None = getattr(job, name)
        if value is None:
            return None
        return cipher.open_text(
            value, crypto.job_binding(SEALED_JOB_TEXTS[name], job.id, job.user_id)
        )

    return JobTexts(
        prompt=opened("prompt") or "",
        negative_prompt=opened("negative_prompt") or "",
        interaction_token=opened("interaction_token"),
    )


def job_view(
    job: RenderJob,
    outputs: Sequence[OutputFacts],
    avatar_names: dict[int, str],
    cipher: DataCipher,
) -> JobView:
    texts = job_texts(cipher, job)
    stored = read_render(job.settings, texts.negative_prompt, int(job.seed))
    interaction = None
    if texts.interaction_token and job.interaction_app_id and job.interaction_expires_at:
        interaction = InteractionRef(
            application_id=job.interaction_app_id,
            token=texts.interaction_token,
            expires_at=job.interaction_expires_at,
            message_id=job.progress_message_id,
        )
    return JobView(
        id=job.id,
        kind=JobKind(job.kind),
        user_id=job.user_id,
        guild_id=job.guild_id,
        channel_id=job.channel_id,
        avatar_id=job.avatar_id,
        avatar_name=avatar_names.get(job.avatar_id or 0, stored.avatar_name),
        prompt=texts.prompt,
        settings=stored.settings,
        status=JobStatus(job.status),
        progress=float(job.progress),
        attempts=job.attempts,
        seeds=tuple(o.seed for o in outputs),
        output_count=len(outputs),
        likeness=tuple(o.likeness for o in outputs),
        error=job.error,
        interaction=interaction,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        delivered_at=job.delivered_at,
        parent_job_id=job.parent_job_id,
        timings={k: float(v) for k, v in (job.timings or {}).items()},
        with_avatar_id=job.with_avatar_id,
        with_avatar_name=_with_avatar_name(job.with_avatar_id, stored, avatar_names),
    )


def _with_avatar_name(
    avatar_id: int | None, stored: StoredRender, names: dict[int, str]
) -> str | None:
    if stored.with_avatar_name is None and avatar_id is None:
        return None
    return names.get(avatar_id or 0, stored.with_avatar_name or "")


async def queue_position(session: AsyncSession, job_id: int) -> int | None:
    """Where a queued job stands under round-robin: with k of its user's queued jobs up to and
    including it, each other user with q queued jobs goes min(q, k) times before it (or
    k - 1 times if their turn comes after; we count them before, a safe overestimate)."""
    queued = await repo.queued_by_user(session)
    for ids in queued.values():
        if job_id in ids:
            k = ids.index(job_id) + 1
            others = sum(min(len(v), k) for v in queued.values() if v is not ids)
            return k + others
    return None
