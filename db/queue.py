"""The database is the job queue: claim, lease, reap (docs/architecture.md#the-job-runtime).

Every function runs inside a transaction the caller owns (``async with db.begin() as s``), so
the service layer can change a job's state and write the ledger (refunds) atomically.

Fairness: the next job goes to the user served least recently, i.e. the user whose latest
``started_at`` is oldest (users never served come first), and among that user's jobs to the
oldest. One user with 20 queued jobs therefore gets one job, then everyone else waiting gets
one, and so on: round-robin across users, not first-come.

Concurrency: the choice of the next job must see every claim committed before it, or two
workers claiming at the same moment would both serve the member who waited longest (the
"least recently served" order reads committed ``started_at`` values only). So claims are
serialised: on PostgreSQL by a transaction-scoped advisory lock taken first (``CLAIM_LOCK``, a
two-key lock, a key space apart from ``lock_scope``'s one-key locks), held for the few
milliseconds of the claim; SQLite has one writer, and ``Database`` starts every write
transaction with ``BEGIN IMMEDIATE``. The row is also locked ``FOR UPDATE SKIP LOCKED`` (a
cancellation holding it is passed over) and the UPDATE re-checks ``status = 'queued'``, so a
job can never be handed out twice.

Attempts: every claim opens a ``job_attempts`` row (worker, claimed at); the job's final state,
a reaped lease and a graceful hand-back close it with their outcome, in the same transaction.

Lock order: the job row first, its attempts and other rows after; see ``lock_jobs``.

Worker ids must be unique per process *incarnation* (e.g. host, pid and a random suffix): a
lease is renewed and a job finished only by the worker id that claimed it, so a restarted
process with the same id could otherwise adopt the jobs of its previous life.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from db.models import AttemptOutcome, JobAttempt, RenderJob
from db.repositories.common import dialect_name
from kinds import FINAL_STATUSES, JobStatus

logger = logging.getLogger(__name__)

_served = aliased(RenderJob, name="served")

# When this job's user was last served: the latest start of any of their jobs (NULL = never).
# An index-only lookup on ix_render_jobs_user_started.
LAST_SERVED = (
    select(func.max(_served.started_at))
    .where(_served.user_id == RenderJob.user_id)
    .correlate(RenderJob)
    .scalar_subquery()
)

# The claim: the queued job of the least recently served user, oldest first. SKIP LOCKED makes
# concurrent PostgreSQL workers pass over rows another claim holds; SQLite renders no locking
# clause (its single writer serialises claims instead).
CLAIM_SQL: Select[int] = (
    select(RenderJob.id)
    .where(RenderJob.status == JobStatus.QUEUED)
    .order_by(LAST_SERVED.asc().nulls_first(), RenderJob.id.asc())
    .limit(1)
    .with_for_update(skip_locked=True)
)


# pg_advisory_xact_lock(CLAIM_LOCK): the two-int form, a key space of its own.
CLAIM_LOCK = (0x61766174, 1)  # "avat", 1


# THE LOCK ORDER of every transaction that touches a job and what hangs off it (finish, reap,
# cancel, hand-back, delete, forget-me, purges): first the job row(s), several of them in
# ascending id order; only then the rows that hang off them (attempts, outputs, ledger and
# counted rows: among these the order is free, the job's lock already serialises them), and
# anything else (avatars, audit). A path that writes a job row takes its lock with that write
# (finish, cancel: the UPDATE comes first) or with ``lock_jobs`` (erasures, which delete the
# attempts before the job). Two transactions that follow it wait for each other at the job
# row and never cross: with opposite orders (erasure: attempts then job; finish: job then
# attempt) PostgreSQL aborted one side as a deadlock (issue 23). SQLite has one writer.
async def lock_jobs(session: AsyncSession, condition: ColumnElement[bool]) -> list[RenderJob]:
    """Lock the jobs matching ``condition`` in id order (see THE LOCK ORDER above), fresh."""
    rows = await session.scalars(
        select(RenderJob)
        .where(condition)
        .order_by(RenderJob.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(rows)


def _lease_end(now: datetime, lease_seconds: float) -> datetime:
    return now + timedelta(seconds=lease_seconds)


async def claim_next(
    session: AsyncSession, *, worker_id: str, lease_seconds: float, now: datetime
) -> RenderJob | None:
    """Claim the next job fairly for ``worker_id``, or None when nothing is queued.

    The job becomes ``running`` with ``attempts + 1``, ``started_at = now`` and a lease until
    ``now + lease_seconds``, and an attempt row is opened; the caller commits.
    """
    if dialect_name(session) == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(*CLAIM_LOCK)))
    job_id = (await session.execute(CLAIM_SQL)).scalar_one_or_none()
    if job_id is None:
        return None
    claimed = await session.scalars(
        update(RenderJob)
        .where(RenderJob.id == job_id, RenderJob.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempts=RenderJob.attempts + 1,
            started_at=now,
            lease_expires_at=_lease_end(now, lease_seconds),
            worker_id=worker_id,
            progress=0.0,
        )
        .returning(RenderJob)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    job = claimed.one_or_none()
    if job is None:  # only under an isolation level weaker than we set up; never hand it out
        logger.warning("job %s changed between selection and claim; not claimed", job_id)
        return None
    number = (
        await session.execute(
            select(func.coalesce(func.max(JobAttempt.number), 0)).where(JobAttempt.job_id == job.id)
        )
    ).scalar_one()
    session.add(JobAttempt(job_id=job.id, number=number + 1, worker_id=worker_id, claimed_at=now))
    await session.flush()
    logger.debug("worker %s claimed job %s (attempt %s)", worker_id, job.id, job.attempts)
    return job


async def renew_lease(
    session: AsyncSession,
    job_id: int,
    worker_id: str,
    lease_seconds: float,
    now: datetime,
    *,
    progress: float | None = None,
) -> bool:
    """Extend the lease of a job this worker runs (and record its progress).

    False means the job is no longer this worker's (reaped and requeued, or claimed by
    another): the worker must stop working on it and write nothing more.
    """
    values: dict[str, Any] = {"lease_expires_at": _lease_end(now, lease_seconds)}
    if progress is not None:
        values["progress"] = min(max(progress, 0.0), 1.0)
    renewed = await session.scalars(
        update(RenderJob)
        .where(
            RenderJob.id == job_id,
            RenderJob.status == JobStatus.RUNNING,
            RenderJob.worker_id == worker_id,
        )
        .values(**values)
        .returning(RenderJob.id)
        .execution_options(synchronize_session=False)
    )
    return renewed.one_or_none() is not None


async def close_attempt(
    session: AsyncSession,
    job_id: int,
    outcome: AttemptOutcome,
    now: datetime,
    *,
    error: str | None = None,
) -> None:
    """End the job's open attempt (if any) with ``outcome``; same transaction as the job."""
    await session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.ended_at.is_(None))
        .values(ended_at=now, outcome=outcome, error=error)
        .execution_options(synchronize_session=False)
    )


async def expired_running(session: AsyncSession, now: datetime) -> list[RenderJob]:
    """Running jobs whose lease ran out (their worker died or hung), locked for the caller.

    On PostgreSQL the rows are locked (SKIP LOCKED), so two reapers never handle the same job;
    in id order, before their attempts (``lock_jobs``: the lock order).
    """
    rows = await session.scalars(
        select(RenderJob)
        .where(
            RenderJob.status == JobStatus.RUNNING,
            or_(RenderJob.lease_expires_at.is_(None), RenderJob.lease_expires_at < now),
        )
        .order_by(RenderJob.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list(rows)


@dataclass
class OrphanReport:
    """What ``reset_orphans`` did: jobs put back in the queue, and jobs left for the caller."""

    requeued: list[RenderJob] = field(default_factory=list)
    # Still ``running`` and locked: out of attempts or cancel requested. The caller marks them
    # failed/cancelled (``finish_job`` with ``worker_id=None``) and refunds, same transaction.
    abandoned: list[RenderJob] = field(default_factory=list)


async def reset_orphans(
    session: AsyncSession, *, now: datetime, max_attempts: int, all_running: bool = False
) -> OrphanReport:
    """Requeue jobs whose worker is gone; hand back those that must not run again.

    ``all_running=True`` treats every running job as orphaned, whatever its lease: right for
    the embedded single-process mode at start, where nothing else can be running them.
    Otherwise only jobs with an expired lease are touched (several workers share the queue).
    The jobs are locked first, their attempts after (``lock_jobs``: the lock order).
    """
    if all_running:
        candidates = list(
            await session.scalars(
                select(RenderJob)
                .where(RenderJob.status == JobStatus.RUNNING)
                .order_by(RenderJob.id)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)
            )
        )
    else:
        candidates = await expired_running(session, now)
    report = OrphanReport()
    for job in candidates:
        await close_attempt(session, job.id, AttemptOutcome.LOST, now, error="lease expired")
        if job.attempts < max_attempts and not job.cancel_requested:
            job.status = JobStatus.QUEUED
            job.worker_id = None
            job.lease_expires_at = None
            # Forget the start: the user lost this turn, so they come first again.
            job.started_at = None
            job.progress = 0.0
            report.requeued.append(job)
        else:
            report.abandoned.append(job)
    await session.flush()
    if candidates:
        logger.info(
            "orphaned jobs: requeued %s, abandoned %s",
            [j.id for j in report.requeued],
            [j.id for j in report.abandoned],
        )
    return report


async def finish_job(
    session: AsyncSession,
    job_id: int,
    *,
    worker_id: str | None,
    status: JobStatus,
    now: datetime,
    error_code: str | None = None,
    error: str | None = None,
    timings: dict[str, Any] | None = None,
) -> RenderJob | None:
    """Move a running job to a final status, if ``worker_id`` still holds it.

    ``worker_id=None`` finishes it whoever held it (the reaper, for abandoned jobs). Returns
    the job, or None when it was not running under that worker (lost lease): then nothing was
    written and the caller must not refund or store outputs. The UPDATE locks the job before
    its attempt is closed, and what the caller writes next comes after (``lock_jobs``: the
    lock order).
    """
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    conditions = [RenderJob.id == job_id, RenderJob.status == JobStatus.RUNNING]
    if worker_id is not None:
        conditions.append(RenderJob.worker_id == worker_id)
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "lease_expires_at": None,
        "error_code": error_code,
        "error": error,
    }
    if status == JobStatus.DONE:
        values["progress"] = 1.0
    if timings is not None:
        values["timings"] = timings
    finished = (
        await session.scalars(
            update(RenderJob)
            .where(*conditions)
            .values(**values)
            .returning(RenderJob)
            .execution_options(populate_existing=True, synchronize_session=False)
        )
    ).one_or_none()
    if finished is not None and worker_id is not None:
        # The reaper (worker_id None) already closed the attempt as lost.
        await close_attempt(session, job_id, AttemptOutcome(status.value), now, error=error)
    return finished
