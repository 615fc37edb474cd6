"""Render jobs and their outputs, beyond the queue's claim/lease/finish (db/queue.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from db.models import AttemptOutcome, JobAttempt, JobOutput, RenderJob
from db.queue import close_attempt, lock_jobs
from db.repositories.common import affected, eq_or_null
from db.repositories.ledger import utc_day
from kinds import FINAL_STATUSES, JobKind, JobStatus, LikenessKind, LikenessScore

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


async def add(session: AsyncSession, job: RenderJob) -> None:
    """Insert ``job``; its id is set when this returns."""
    session.add(job)
    await session.flush()


async def get(session: AsyncSession, job_id: int, *, fresh: bool = False) -> RenderJob | None:
    return await session.get(RenderJob, job_id, populate_existing=fresh)


async def active_counts(
    session: AsyncSession, *, guild_id: int | None, user_id: int
) -> tuple[int, int]:
    """(the member's active jobs in the guild, the guild's active jobs)."""
    guild_active = eq_or_null(RenderJob.guild_id, guild_id)
    row = (
        await session.execute(
            select(
                func.count().filter(RenderJob.user_id == user_id),
                func.count(),
            ).where(guild_active, RenderJob.status.in_(ACTIVE))
        )
    ).one()
    return int(row[0]), int(row[1])


async def created_times(
    session: AsyncSession, *, user_id: int, kind: str, since: datetime
) -> list[datetime]:
    """When the member's jobs of ``kind`` created since ``since`` (any guild) were created,
    oldest first: the avatar-creation rate limit counts encode jobs, which stay when the
    avatar is deleted."""
    rows = await session.scalars(
        select(RenderJob.created_at)
        .where(RenderJob.user_id == user_id, RenderJob.kind == kind, RenderJob.created_at >= since)
        .order_by(RenderJob.created_at)
    )
    return list(rows)


async def recent_durations(
    session: AsyncSession, *, guild_id: int | None, limit: int
) -> list[float]:
    """Run times (start to finish, seconds) of the guild's last ``limit`` finished render
    jobs, for a queue-full message's "try again" estimate."""
    rows = (
        await session.execute(
            select(RenderJob.started_at, RenderJob.finished_at)
            .where(
                eq_or_null(RenderJob.guild_id, guild_id),
                RenderJob.kind == JobKind.RENDER,
                RenderJob.started_at.is_not(None),
                RenderJob.finished_at.is_not(None),
            )
            .order_by(RenderJob.finished_at.desc())
            .limit(limit)
        )
    ).all()
    return [(end - start).total_seconds() for start, end in rows if start and end]


async def queued_by_user(session: AsyncSession) -> dict[int, list[int]]:
    """Every queued job id, grouped by user, oldest first (for queue positions)."""
    rows = await session.execute(
        select(RenderJob.user_id, RenderJob.id)
        .where(RenderJob.status == JobStatus.QUEUED)
        .order_by(RenderJob.id)
    )
    result: dict[int, list[int]] = {}
    for user_id, job_id in rows.all():
        result.setdefault(int(user_id), []).append(int(job_id))
    return result


async def outputs(session: AsyncSession, job_id: int) -> list[JobOutput]:
    rows = await session.scalars(
        select(JobOutput).where(JobOutput.job_id == job_id).order_by(JobOutput.index)
    )
    return list(rows)


@dataclass(frozen=True)
class OutputFacts:
    """A stored output's seed and likeness, without its image bytes."""

    seed: int
    likeness: LikenessScore | None


async def output_facts(
    session: AsyncSession, job_ids: Sequence[int]
) -> dict[int, list[OutputFacts]]:
    """Each job's stored outputs' seeds and likeness, in order (without the image bytes)."""
    result: dict[int, list[OutputFacts]] = {}
    if not job_ids:
        return result
    rows = await session.execute(
        select(JobOutput.job_id, JobOutput.seed, JobOutput.likeness_kind, JobOutput.likeness)
        .where(JobOutput.job_id.in_(job_ids))
        .order_by(JobOutput.job_id, JobOutput.index)
    )
    for job_id, seed, kind, value in rows.all():
        likeness = None if kind is None else LikenessScore(LikenessKind(kind), value)
        result.setdefault(int(job_id), []).append(OutputFacts(int(seed), likeness))
    return result


@dataclass(frozen=True)
class NewOutput:
    data: bytes
    seed: int
    width: int
    height: int
    # The output check flagged it (bot/services/safety.py).
    flagged: bool = False
    # How much it looks like its avatar (None: not measured).
    likeness: LikenessScore | None = None


async def add_outputs(
    session: AsyncSession,
    job_id: int,
    items: Sequence[NewOutput],
    now: datetime,
    seal: Callable[[int, bytes], bytes],
) -> None:
    """Insert outputs with an empty placeholder, then store ``seal(row_id, data)`` (a sealed
    blob is bound to its row id, known only after the insert)."""
    rows = [
        JobOutput(
            job_id=job_id,
            index=index,
            data=b"",
            seed=item.seed,
            width=item.width,
            height=item.height,
            flagged=item.flagged,
            likeness_kind=None if item.likeness is None else item.likeness.kind.value,
            likeness=None if item.likeness is None else item.likeness.value,
            created_at=now,
        )
        for index, item in enumerate(items)
    ]
    session.add_all(rows)
    await session.flush()
    for row, item in zip(rows, items, strict=True):
        row.data = seal(row.id, item.data)
    await session.flush()


async def in_status(
    session: AsyncSession, statuses: Sequence[str], *, undelivered_only: bool = False
) -> list[RenderJob]:
    query = select(RenderJob).where(RenderJob.status.in_(statuses)).order_by(RenderJob.id)
    if undelivered_only:
        query = query.where(RenderJob.delivered_at.is_(None))
    return list(await session.scalars(query))


async def mark_delivered(session: AsyncSession, job_id: int, now: datetime) -> bool:
    result = await session.execute(
        update(RenderJob)
        .where(RenderJob.id == job_id, RenderJob.delivered_at.is_(None))
        .values(delivered_at=now)
    )
    return bool(affected(result))


async def set_progress_message(session: AsyncSession, job_id: int, message_id: int) -> None:
    await session.execute(
        update(RenderJob).where(RenderJob.id == job_id).values(progress_message_id=message_id)
    )


async def cancel(session: AsyncSession, job_id: int, now: datetime) -> RenderJob | None:
    """Cancel a queued or running job; None when it had already finished (nothing written).

    A running job's worker notices at its next lease renewal (the renewal requires
    ``status = 'running'``) and its ``finish_job`` then matches nothing, so the refund the
    caller writes now is the only one. The UPDATE locks the job before its attempt is closed
    (the lock order: db/queue.py ``lock_jobs``).
    """
    cancelled = await session.scalars(
        update(RenderJob)
        .where(RenderJob.id == job_id, RenderJob.status.in_(ACTIVE))
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=now,
            lease_expires_at=None,
        )
        .returning(RenderJob)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    job = cancelled.one_or_none()
    if job is not None:
        await close_attempt(session, job.id, AttemptOutcome.CANCELLED, now)
    return job


async def requeue_own(session: AsyncSession, job_id: int, worker_id: str, now: datetime) -> bool:
    """Put a job this worker runs back in the queue without counting the attempt (a graceful
    stop interrupted it; it did nothing wrong). Its attempt row stays, as ``handed_back``.
    The job is locked before its attempt (the lock order: db/queue.py ``lock_jobs``)."""
    result = await session.execute(
        update(RenderJob)
        .where(
            RenderJob.id == job_id,
            RenderJob.status == JobStatus.RUNNING,
            RenderJob.worker_id == worker_id,
        )
        .values(
            status=JobStatus.QUEUED,
            worker_id=None,
            lease_expires_at=None,
            started_at=None,
            progress=0.0,
            # >= 1 while running: the claim counted this attempt.
            attempts=RenderJob.attempts - 1,
        )
    )
    handed_back = bool(affected(result))
    if handed_back:
        await close_attempt(session, job_id, AttemptOutcome.HANDED_BACK, now)
    return handed_back


async def attempts_of(session: AsyncSession, job_id: int) -> list[JobAttempt]:
    """The job's attempts, first to last."""
    rows = await session.scalars(
        select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.number)
    )
    return list(rows)


async def set_result(session: AsyncSession, job_id: int, result: dict[str, Any]) -> None:
    await session.execute(update(RenderJob).where(RenderJob.id == job_id).values(result=result))


async def delete_job(session: AsyncSession, job_id: int) -> int:
    """Delete a job and its outputs (ledger rows keep their counts, job_id becomes NULL)."""
    await lock_jobs(session, RenderJob.id == job_id)  # the lock order: db/queue.py lock_jobs
    await session.execute(delete(JobAttempt).where(JobAttempt.job_id == job_id))
    await session.execute(delete(JobOutput).where(JobOutput.job_id == job_id))
    result = await session.execute(delete(RenderJob).where(RenderJob.id == job_id))
    return affected(result)


@dataclass(frozen=True)
class JobErasure:
    jobs: int  # render jobs (encode jobs are deleted too, not counted)
    outputs: int


async def delete_matching(session: AsyncSession, condition: ColumnElement[bool]) -> JobErasure:
    """Delete the jobs matching ``condition`` with their outputs (joint renders an erasure
    takes with it: db/repositories/friends.py)."""
    # The jobs first, then their attempts and outputs (the lock order: db/queue.py lock_jobs).
    job_ids = [job.id for job in await lock_jobs(session, condition)]
    # Attempts cascade in the database; deleted explicitly too, like outputs, so the delete
    # does not depend on the connection's foreign-key switch.
    await session.execute(delete(JobAttempt).where(JobAttempt.job_id.in_(job_ids)))
    outputs_deleted = await session.execute(delete(JobOutput).where(JobOutput.job_id.in_(job_ids)))
    # By the condition again: a job inserted since the lock goes too (its attempts by cascade,
    # after the job: still the lock order).
    kinds = await session.scalars(delete(RenderJob).where(condition).returning(RenderJob.kind))
    return JobErasure(
        # What members call their renders: avatar creations' encode jobs go too, uncounted.
        jobs=sum(1 for kind in kinds if kind == JobKind.RENDER),
        outputs=affected(outputs_deleted),
    )


async def record_posted(
    session: AsyncSession, job_id: int, channel_id: int, message_id: int
) -> None:
    """Remember where a job's result was posted, so an erasure can delete the message."""
    await session.execute(
        update(RenderJob)
        .where(RenderJob.id == job_id)
        .values(posted_channel_id=channel_id, posted_message_id=message_id)
    )


async def lock_user_jobs(
    session: AsyncSession, user_id: int, *, also: ColumnElement[bool] | None = None
) -> list[RenderJob]:
    """Forget-me's first step: lock every job of ``user_id``, and those matching ``also``, in
    one statement (the lock order: db/queue.py ``lock_jobs``), so a worker finishing one either
    committed before (its writes are then erased or anonymised with the rest) or finds it gone
    (it writes nothing)."""
    condition = RenderJob.user_id == user_id
    return await lock_jobs(session, condition if also is None else or_(condition, also))


async def lock_guild_jobs(session: AsyncSession, guild_id: int) -> list[RenderJob]:
    """A guild's removal locks its jobs first, as forget-me does the member's."""
    return await lock_jobs(session, RenderJob.guild_id == guild_id)


async def delete_user_data(session: AsyncSession, user_id: int) -> JobErasure:
    """Delete every job (prompt, settings, interaction token) and output of ``user_id``.

    Jobs running right now lose their row; their worker's lease renewal and final update then
    match nothing, so nothing of theirs is written back.
    """
    return await delete_matching(session, RenderJob.user_id == user_id)


async def delete_member_in_guild(session: AsyncSession, guild_id: int, user_id: int) -> JobErasure:
    return await delete_matching(
        session, and_(RenderJob.guild_id == guild_id, RenderJob.user_id == user_id)
    )


async def delete_guild(session: AsyncSession, guild_id: int) -> JobErasure:
    return await delete_matching(session, RenderJob.guild_id == guild_id)


async def purge_finished(
    session: AsyncSession,
    *,
    finished_before: datetime,
    undelivered_before: datetime,
    created_before: datetime,
) -> JobErasure:
    """Delete finished jobs past their retention, with their outputs.

    A job goes when it finished before ``finished_before`` and was delivered (or finished
    before ``undelivered_before``: an undeliverable job does not stay forever), and was created
    before ``created_before`` (the start of the current UTC day, so today's quota arithmetic
    keeps the job a refund is attributed through).
    """
    condition = and_(
        RenderJob.status.in_(FINAL_STATUSES),
        RenderJob.finished_at < finished_before,
        RenderJob.created_at < created_before,
        or_(RenderJob.delivered_at.is_not(None), RenderJob.finished_at < undelivered_before),
    )
    return await delete_matching(session, condition)


async def outputs_page(
    session: AsyncSession, after_id: int, limit: int
) -> list[tuple[JobOutput, int]]:
    """A page of outputs by id with their owner (re-encryption walks every blob)."""
    rows = await session.execute(
        select(JobOutput, RenderJob.user_id)
        .join(RenderJob, RenderJob.id == JobOutput.job_id)
        .where(JobOutput.id > after_id)
        .order_by(JobOutput.id)
        .limit(limit)
    )
    return [(output, int(owner)) for output, owner in rows.all()]


async def jobs_page(session: AsyncSession, after_id: int, limit: int) -> list[RenderJob]:
    """A page of jobs by id (re-encryption of their prompts and interaction tokens)."""
    rows = await session.scalars(
        select(RenderJob).where(RenderJob.id > after_id).order_by(RenderJob.id).limit(limit)
    )
    return list(rows)


@dataclass(frozen=True)
class DayLikeness:
    """A member's face likeness on one UTC day, over the images still kept (the admin usage
    report): the mean figure of the faces found, and how many renders lost the face."""

    day: date
    user_id: int
    mean: float | None
    faces: int
    lost: int


async def likeness_per_day(
    session: AsyncSession, *, guild_id: int, since: datetime, user_id: int | None = None
) -> list[DayLikeness]:
    """Per UTC day (of the image) and member, the guild's person renders' likeness."""
    day = utc_day(session, JobOutput.created_at).label("day")
    face = JobOutput.likeness_kind == LikenessKind.FACE.value
    query = (
        select(
            day,
            RenderJob.user_id,
            func.avg(case((face, JobOutput.likeness))),
            func.count(case((face, 1))),
            func.count(case((JobOutput.likeness_kind == LikenessKind.NO_FACE.value, 1))),
        )
        .join(RenderJob, RenderJob.id == JobOutput.job_id)
        .where(
            RenderJob.guild_id == guild_id,
            JobOutput.created_at >= since,
            JobOutput.likeness_kind.in_([LikenessKind.FACE.value, LikenessKind.NO_FACE.value]),
        )
        .group_by(day, RenderJob.user_id)
    )
    if user_id is not None:
        query = query.where(RenderJob.user_id == user_id)
    result = []
    for d, uid, mean, faces, lost in (await session.execute(query)).all():
        parsed = d if isinstance(d, date) else date.fromisoformat(str(d))
        value = None if mean is None else float(mean)
        result.append(DayLikeness(parsed, int(uid), value, int(faces), int(lost)))
    return result
