"""Forget-me against workers finishing the member's jobs (issue 23): one lock order, so
PostgreSQL never has to abort either side as a deadlock; and forget-me refunds the member's
queued jobs that never started, while what they used today keeps counting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

import db.queue as queue
from bot.config import QuotaDefaults
from bot.services.crypto import DataCipher
from bot.services.ledger import reserve
from bot.services.privacy import PrivacyService
from bot.services.quotas import QuotaService
from bot.services.usage_keys import UsageKeys
from db.models import AttemptOutcome, JobAttempt, JobOutput, LedgerEntry, RenderJob, UsageLedger
from db.repositories import jobs as jobs_repo
from db.repositories.jobs import NewOutput
from db.session import Database
from db.types import utcnow
from kinds import JobStatus

GUILD = 1000
MEMBER = 7
OTHER = 8
ROUNDS = 30
MEMBER_JOBS = 4
OTHER_JOBS = 2


async def _enqueue(database: Database, user_id: int, count: int) -> list[int]:
    """``count`` render jobs of one unit each, with their reservations."""
    now = utcnow()
    async with database.begin() as session:
        jobs = [
            RenderJob(user_id=user_id, guild_id=GUILD, prompt="p", seed=i, settings={}, reserved=1)
            for i in range(count)
        ]
        for job in jobs:
            await jobs_repo.add(session, job)
            await reserve(session, job, now)
        return [job.id for job in jobs]


async def _claim(database: Database, count: int) -> None:
    for _ in range(count):
        async with database.begin() as session:
            job = await queue.claim_next(session, worker_id="w", lease_seconds=60, now=utcnow())
        assert job is not None


async def _finish(database: Database, job_id: int) -> bool:
    """What a worker writes when its render is done (dispatcher ``_complete``: the job's final
    state and attempt, then its outputs), in one transaction."""
    now = utcnow()
    async with database.begin() as session:
        finished = await queue.finish_job(
            session, job_id, worker_id="w", status=JobStatus.DONE, now=now
        )
        if finished is None:  # erased first: nothing of it is written
            return False
        await jobs_repo.add_outputs(
            session, job_id, [NewOutput(b"png", 1, 8, 8)], now, seal=lambda _id, data: data
        )
    return True


def _gate_attempt_close(
    database: Database, erased: asyncio.Event
) -> Callable[..., Awaitable[None]]:
    """``close_attempt`` held back until the erasure is waiting for a row lock (or is over):
    the moment a worker has updated its job and not yet its attempt, which is when opposite
    lock orders deadlock. Without it the race is only hit now and then."""
    original = queue.close_attempt

    async def gated(*args: object, **kwargs: object) -> None:
        for _ in range(2000):
            if erased.is_set():
                break
            async with database.begin(readonly=True) as session:
                waiting = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                )
            if waiting:
                break
            await asyncio.sleep(0.005)  # poll: the erasure runs in another backend
        else:
            raise AssertionError("the erasure neither waited for a lock nor ended")
        await original(*args, **kwargs)  # type: ignore[arg-type]

    return gated


async def _erase(privacy: PrivacyService, erased: asyncio.Event) -> None:
    try:
        await privacy.forget_me(MEMBER)
    finally:
        erased.set()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_forget_me_and_finishing_workers_never_deadlock(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    privacy = PrivacyService(database, DataCipher(None))
    for _ in range(ROUNDS):
        mine = await _enqueue(database, MEMBER, MEMBER_JOBS)
        theirs = await _enqueue(database, OTHER, OTHER_JOBS)
        await _claim(database, MEMBER_JOBS + OTHER_JOBS)
        erased = asyncio.Event()
        monkeypatch.setattr(queue, "close_attempt", _gate_attempt_close(database, erased))
        erasure = asyncio.ensure_future(_erase(privacy, erased))
        finishers = [asyncio.ensure_future(_finish(database, i)) for i in mine + theirs]
        results = await asyncio.gather(erasure, *finishers, return_exceptions=True)
        monkeypatch.undo()
        errors = [r for r in results if isinstance(r, BaseException)]
        deadlocks = [e for e in errors if isinstance(e, DBAPIError) and "deadlock" in str(e)]
        assert not deadlocks, deadlocks[0]
        assert not errors, errors[0]
        # The other member's renders finished; the erased member's are gone whoever came first.
        assert results[1 + MEMBER_JOBS :] == [True] * OTHER_JOBS
        async with database.begin(readonly=True) as session:
            left = await session.scalar(
                select(func.count()).select_from(RenderJob).where(RenderJob.id.in_(mine))
            )
            orphans = await session.scalar(
                select(func.count()).select_from(JobAttempt).where(JobAttempt.job_id.in_(mine))
            )
            images = await session.scalar(
                select(func.count()).select_from(JobOutput).where(JobOutput.job_id.in_(mine))
            )
            named = await session.scalar(
                select(func.count()).select_from(UsageLedger).where(UsageLedger.user_id == MEMBER)
            )
            other = (
                await session.execute(
                    select(RenderJob.status, JobAttempt.outcome)
                    .join(JobAttempt, JobAttempt.job_id == RenderJob.id)
                    .where(RenderJob.id.in_(theirs))
                )
            ).all()
        assert (left, orphans, images, named) == (0, 0, 0, 0)
        assert sorted(other) == [(JobStatus.DONE, AttemptOutcome.DONE)] * OTHER_JOBS


async def test_forget_me_refunds_queued_jobs_only(database: Database) -> None:
    keys = UsageKeys(DataCipher(None))
    privacy = PrivacyService(database, DataCipher(None), keys)
    quotas = QuotaService(database, QuotaDefaults(), keys)
    done, _running, _queued = await _enqueue(database, MEMBER, 3)
    await _claim(database, 2)  # one member's jobs are claimed oldest first
    assert await _finish(database, done)
    assert (await quotas.usage(GUILD, MEMBER)).used == 3

    await privacy.forget_me(MEMBER)

    # Only the job that never started gives its unit back; the rest of the day still counts.
    assert (await quotas.usage(GUILD, MEMBER)).used == 2
    async with database.begin(readonly=True) as session:
        refunds = (
            await session.execute(
                select(UsageLedger.user_id, UsageLedger.user_key, UsageLedger.amount).where(
                    UsageLedger.entry == LedgerEntry.REFUND
                )
            )
        ).all()
    assert len(refunds) == 1
    user_id, user_key, amount = refunds[0]
    assert (user_id, amount) == (None, 1) and user_key  # anonymised, keyed to today
