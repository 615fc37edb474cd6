"""The queue: fair claims, leases, reaping, and no job ever handed out twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import RenderJob
from db.queue import (
    CLAIM_SQL,
    claim_next,
    expired_running,
    finish_job,
    renew_lease,
    reset_orphans,
)
from db.session import Database
from kinds import JobStatus

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60.0


async def _enqueue(session: AsyncSession, user_id: int, count: int = 1) -> list[int]:
    jobs = [
        RenderJob(user_id=user_id, guild_id=1, prompt=f"p{i}", seed=i, settings={"steps": 2})
        for i in range(count)
    ]
    session.add_all(jobs)
    await session.flush()
    return [job.id for job in jobs]


async def _claim_all(db: Database, worker: str = "w") -> list[RenderJob]:
    claimed: list[RenderJob] = []
    for step in range(1000):
        async with db.begin() as s:
            job = await claim_next(
                s, worker_id=worker, lease_seconds=LEASE, now=T0 + timedelta(seconds=step)
            )
        if job is None:
            return claimed
        claimed.append(job)
    raise AssertionError("queue never ran dry")


async def test_claim_marks_the_job_running(database: Database) -> None:
    async with database.begin() as s:
        assert await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0) is None
        [job_id] = await _enqueue(s, user_id=7)
    async with database.begin() as s:
        job = await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0)
    assert job is not None and job.id == job_id
    assert job.status == JobStatus.RUNNING
    assert job.attempts == 1
    assert job.worker_id == "w1"
    assert job.started_at == T0
    assert job.lease_expires_at == T0 + timedelta(seconds=LEASE)
    async with database.begin() as s:  # committed, and nothing else left
        stored = await s.get(RenderJob, job_id)
        assert stored is not None and stored.status == JobStatus.RUNNING
        assert await claim_next(s, worker_id="w2", lease_seconds=LEASE, now=T0) is None


async def test_one_users_backlog_does_not_block_another(database: Database) -> None:
    async with database.begin() as s:
        a_jobs = await _enqueue(s, user_id=1, count=20)
        [b_job] = await _enqueue(s, user_id=2)
    order = [job.id for job in await _claim_all(database)]
    assert order[:2] == [a_jobs[0], b_job]
    assert order[2:] == a_jobs[1:]


async def test_round_robin_across_users(database: Database) -> None:
    async with database.begin() as s:
        a = await _enqueue(s, user_id=1, count=3)
        b = await _enqueue(s, user_id=2, count=3)
        c = await _enqueue(s, user_id=3, count=3)
    order = [job.id for job in await _claim_all(database)]
    assert order == [a[0], b[0], c[0], a[1], b[1], c[1], a[2], b[2], c[2]]


async def test_recently_served_user_waits_for_a_new_one(database: Database) -> None:
    async with database.begin() as s:
        [old] = await _enqueue(s, user_id=1)
    await _claim_all(database)  # user 1 was served at T0
    async with database.begin() as s:
        [second] = await _enqueue(s, user_id=1)
        [newcomer] = await _enqueue(s, user_id=2)  # queued later, never served
    order = [job.id for job in await _claim_all(database)]
    assert old not in order
    assert order == [newcomer, second]


async def test_renew_lease_only_by_the_holder(database: Database) -> None:
    async with database.begin() as s:
        [job_id] = await _enqueue(s, user_id=1)
        await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0)
    later = T0 + timedelta(seconds=30)
    async with database.begin() as s:
        assert await renew_lease(s, job_id, "w1", LEASE, later, progress=0.5)
        assert not await renew_lease(s, job_id, "w2", LEASE, later)
        assert not await renew_lease(s, job_id + 1000, "w1", LEASE, later)
    async with database.begin() as s:
        job = await s.get(RenderJob, job_id)
        assert job is not None
        assert job.lease_expires_at == later + timedelta(seconds=LEASE)
        assert job.progress == 0.5


async def test_expired_leases_are_requeued_then_abandoned(database: Database) -> None:
    async with database.begin() as s:
        [job_id] = await _enqueue(s, user_id=1)
        [live_id] = await _enqueue(s, user_id=2)
        await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0)
        await claim_next(s, worker_id="w2", lease_seconds=10 * LEASE, now=T0)
    t = T0 + timedelta(seconds=2 * LEASE)
    async with database.begin() as s:
        assert [j.id for j in await expired_running(s, t)] == [job_id]
        report = await reset_orphans(s, now=t, max_attempts=2)
        assert [j.id for j in report.requeued] == [job_id]
        assert report.abandoned == []
    async with database.begin() as s:
        job = await s.get(RenderJob, job_id)
        assert job is not None
        assert (job.status, job.worker_id, job.lease_expires_at) == ("queued", None, None)
        # The dead worker has lost it for good.
        assert not await renew_lease(s, job_id, "w1", LEASE, t)
        assert await finish_job(s, job_id, worker_id="w1", status=JobStatus.DONE, now=t) is None
        # Second attempt, which also dies: attempts are exhausted now.
        again = await claim_next(s, worker_id="w3", lease_seconds=LEASE, now=t)
        assert again is not None and again.id == job_id and again.attempts == 2
    t2 = t + timedelta(seconds=2 * LEASE)
    async with database.begin() as s:
        report = await reset_orphans(s, now=t2, max_attempts=2)
        assert report.requeued == []
        assert [j.id for j in report.abandoned] == [job_id]
        failed = await finish_job(
            s, job_id, worker_id=None, status=JobStatus.FAILED, now=t2, error_code="worker_lost"
        )
        assert failed is not None and failed.status == "failed" and failed.finished_at == t2
    async with database.begin() as s:
        live = await s.get(RenderJob, live_id)
        assert live is not None and live.status == JobStatus.RUNNING


async def test_reset_all_running_at_start(database: Database) -> None:
    async with database.begin() as s:
        ids = await _enqueue(s, user_id=1, count=2)
        for _ in ids:
            await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0)
    async with database.begin() as s:
        # Leases still valid: only the embedded start-up mode takes them.
        assert (await reset_orphans(s, now=T0, max_attempts=3)).requeued == []
        report = await reset_orphans(s, now=T0, max_attempts=3, all_running=True)
        assert sorted(j.id for j in report.requeued) == ids


async def test_cancel_requested_orphan_is_not_requeued(database: Database) -> None:
    async with database.begin() as s:
        [job_id] = await _enqueue(s, user_id=1)
        job = await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0)
        assert job is not None
        job.cancel_requested = True
    async with database.begin() as s:
        report = await reset_orphans(s, now=T0, max_attempts=3, all_running=True)
        assert [j.id for j in report.abandoned] == [job_id]


async def test_finish_job(database: Database) -> None:
    async with database.begin() as s:
        [job_id] = await _enqueue(s, user_id=1)
        await claim_next(s, worker_id="w1", lease_seconds=LEASE, now=T0)
    t = T0 + timedelta(seconds=5)
    async with database.begin() as s:
        with pytest.raises(ValueError):
            await finish_job(s, job_id, worker_id="w1", status=JobStatus.RUNNING, now=t)
        assert await finish_job(s, job_id, worker_id="w2", status=JobStatus.DONE, now=t) is None
        job = await finish_job(
            s, job_id, worker_id="w1", status=JobStatus.DONE, now=t, timings={"total_s": 1.5}
        )
        assert job is not None
        assert (job.status, job.progress, job.finished_at, job.lease_expires_at) == (
            "done",
            1.0,
            t,
            None,
        )
        assert job.timings == {"total_s": 1.5}
        # Final: a second finish (e.g. a late reaper) changes nothing.
        assert await finish_job(s, job_id, worker_id=None, status=JobStatus.FAILED, now=t) is None


async def test_concurrent_claims_never_share_a_job(database: Database) -> None:
    async with database.begin() as s:
        ids = []
        for user in range(8):
            ids += await _enqueue(s, user_id=user, count=5)

    async def claimer(worker: str) -> list[int]:
        got: list[int] = []
        while True:
            async with database.begin() as s:
                job = await claim_next(s, worker_id=worker, lease_seconds=LEASE, now=T0)
                if job is None:
                    return got
                got.append(job.id)
                # Hold the claim open a moment so the others must get past it.
                await asyncio.sleep(0.005)  # poll: holds the claim open; not a wait on a task

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(8)))
    claimed = [job_id for got in results for job_id in got]
    assert sorted(claimed) == sorted(ids)  # each exactly once
    async with database.begin() as s:
        rows = (await s.execute(select(RenderJob.worker_id, RenderJob.attempts))).all()
    assert all(attempts == 1 for _, attempts in rows)
    worker_of = {job_id: f"w{i}" for i, got in enumerate(results) for job_id in got}
    async with database.begin() as s:
        for job_id, worker in worker_of.items():
            job = await s.get(RenderJob, job_id)
            assert job is not None and job.worker_id == worker


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_postgres_claims_skip_locked_rows_without_waiting(database: Database) -> None:
    async with database.begin() as s:
        first, second = await _enqueue(s, user_id=1, count=2)
    async with database.begin() as holder:
        # A row locked by someone else (a cancellation in progress): the claim passes it
        # over at once instead of waiting.
        await holder.execute(select(RenderJob.id).where(RenderJob.id == first).with_for_update())
        async with database.begin() as other:
            nxt = await asyncio.wait_for(
                claim_next(other, worker_id="w2", lease_seconds=LEASE, now=T0), timeout=5
            )
            assert nxt is not None and nxt.id == second


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_postgres_claims_are_serialised(database: Database) -> None:
    """A claim waits for a claim in progress (the fair order must see it), then goes on."""
    async with database.begin() as s:
        (first,) = await _enqueue(s, user_id=1, count=1)
        (second,) = await _enqueue(s, user_id=2, count=1)
    async with database.begin() as holder:
        held = await claim_next(holder, worker_id="w1", lease_seconds=LEASE, now=T0)
        assert held is not None and held.id == first
        async with database.begin() as other:
            waiting = asyncio.ensure_future(
                claim_next(other, worker_id="w2", lease_seconds=LEASE, now=T0)
            )
            done, _ = await asyncio.wait({waiting}, timeout=0.5)
            assert not done  # blocked behind the first claim's lock
            await holder.commit()
            nxt = await asyncio.wait_for(waiting, timeout=30)
            assert nxt is not None and nxt.id == second


def test_claim_sql_locks_on_postgres_only() -> None:
    pg = str(CLAIM_SQL.compile(dialect=postgresql.dialect()))
    lite = str(CLAIM_SQL.compile(dialect=sqlite.dialect()))
    assert pg.rstrip().endswith("FOR UPDATE SKIP LOCKED")
    assert "NULLS FIRST" in pg and "NULLS FIRST" in lite
    assert "FOR UPDATE" not in lite


async def test_claim_sql_uses_the_indexes(database: Database) -> None:
    # A realistic table: a long history of finished jobs, a few queued ones.
    async with database.begin() as s:
        for user in range(50):
            await _enqueue(s, user_id=user, count=20)
        await s.execute(text("UPDATE render_jobs SET status = 'done', started_at = created_at"))
        for user in range(5):
            await _enqueue(s, user_id=user, count=2)
    async with database.engine.connect() as conn:
        compiled = CLAIM_SQL.compile(conn.engine, compile_kwargs={"literal_binds": True})
        if database.dialect == "sqlite":
            # Without statistics, as SQLite runs unless someone runs ANALYZE.
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            plan = "\n".join(str(row[-1]) for row in rows)
            # A search by status, never a walk over the whole history of jobs.
            assert "SEARCH render_jobs USING INDEX ix_render_jobs_status_" in plan, plan
            assert "SCAN render_jobs" not in plan, plan
            assert "SEARCH served USING COVERING INDEX ix_render_jobs_user_started" in plan, plan
        else:
            await conn.exec_driver_sql("ANALYZE render_jobs")
            rows = await conn.exec_driver_sql(f"EXPLAIN {compiled}")
            plan = "\n".join(row[0] for row in rows)
            assert "Seq Scan" not in plan, plan
            assert "ix_render_jobs_user_started on render_jobs served" in plan, plan
            assert "LockRows" in plan, plan
