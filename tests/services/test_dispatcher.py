"""The job loop: rendering through the tiny engine, events, fairness (also under concurrent
claims), failures with refunds, cancellation (in process and from another process), leases
reaped under load, attempt history, graceful stop."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta

from PIL import Image
from sqlalchemy import select, update

from bot.config import QuotaDefaults, Settings
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.events import JobEvent, JobEventKind
from bot.services.jobs import MAX_ATTEMPTS
from bot.services.ports import EnginePort
from bot.services.results import JobView, RenderOptions
from db import queue
from db.models import JobOutput, LedgerEntry, RenderJob, UsageLedger
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, SlowEngine, make_avatar, service_settings

FAST = DispatcherConfig(concurrency=2, lease_seconds=0.6, poll_seconds=0.1, reap_seconds=0.2)


class Recorder:
    """Collects job events; ``wait_for`` waits (bounded) for one to arrive."""

    def __init__(self, services: Services) -> None:
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()
        self.remove = services.events.subscribe(self._on_event)

    @classmethod
    async def listen(cls, services: Services) -> Recorder:
        """A recorder on ``services``' events, listening (on PostgreSQL: LISTEN) from now."""
        recorder = cls(services)
        await services.events.start()
        return recorder

    def _on_event(self, event: JobEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def kinds(self, job_id: int) -> list[JobEventKind]:
        return [e.kind for e in self.events if e.job_id == job_id]

    async def wait_for(self, kind: JobEventKind, job_id: int, within: float = 60.0) -> None:
        async def seen() -> None:
            while JobEvent(kind, job_id) not in self.events:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(seen(), within)


async def _build(
    database: Database,
    settings: Settings,
    engine: EnginePort | None,
    config: DispatcherConfig = FAST,
) -> Services:
    return await build_services(settings, database, engine, dispatcher_config=config)


async def _ledger(services: Services) -> list[tuple[str, int | None]]:
    async with services.database.begin(readonly=True) as session:
        rows = (await session.scalars(select(UsageLedger).order_by(UsageLedger.id))).all()
    return [(LedgerEntry(r.entry).value, r.job_id) for r in rows]


async def _finished(services: Services, recorder: Recorder, job_id: int) -> JobView:
    await recorder.wait_for(JobEventKind.FINISHED, job_id)
    return await services.jobs.view(job_id)


async def test_renders_through_the_engine_and_announces_each_step(services: Services) -> None:
    recorder = await Recorder.listen(services)
    await make_avatar(services, 7, "Mia")
    await services.start()
    ticket = await services.renders.request(
        7, GUILD, CHANNEL, "Mia", "a cat", RenderOptions(count=2, seed=11, aspect="landscape")
    )
    view = await _finished(services, recorder, ticket.job_id)
    assert (view.status, view.seeds, view.output_count, view.progress) == ("done", (11, 12), 2, 1)
    images = [Image.open(io.BytesIO(b)) for b in await services.jobs.outputs(ticket.job_id)]
    assert [(i.format, i.size) for i in images] == [("PNG", (80, 64))] * 2
    kinds = recorder.kinds(ticket.job_id)
    assert kinds[0] is JobEventKind.ENQUEUED and kinds[1] is JobEventKind.STARTED
    assert kinds[-1] is JobEventKind.FINISHED
    assert [j.id for j in await services.jobs.undelivered()] == [ticket.job_id]
    assert await services.jobs.mark_delivered(ticket.job_id)
    assert not await services.jobs.mark_delivered(ticket.job_id)
    assert await services.jobs.undelivered() == []
    assert await _ledger(services) == [("reserve", ticket.job_id)]
    history = await services.jobs.history(ticket.job_id)
    [attempt] = history.attempts
    assert (attempt.worker_id, attempt.outcome) == (services.dispatcher.worker_id, "done")
    assert attempt.ended_at is not None and attempt.ended_at >= attempt.claimed_at
    recorder.remove()


async def test_progress_is_recorded_and_announced_while_rendering(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port, delay=1.0)
    config = DispatcherConfig(concurrency=1, lease_seconds=3, progress_seconds=0.1)
    services = await _build(database, settings, engine, config)
    recorder = await Recorder.listen(services)
    await make_avatar(services, 7, "Mia")
    await services.start()
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    await recorder.wait_for(JobEventKind.PROGRESS, ticket.job_id)
    running = await services.jobs.view(ticket.job_id)
    assert running.status in ("running", "done") and running.progress > 0
    await _finished(services, recorder, ticket.job_id)
    await services.aclose()


async def test_fair_round_robin_across_users(
    database: Database, tmp_path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    quotas = QuotaDefaults(
        renders_per_day=50, queued_per_member=25, queued_per_guild=50, renders_per_minute=60
    )
    services = await _build(database, service_settings(tmp_path, quotas=quotas), tiny_engine_port)
    await make_avatar(services, 1, "A", photos=1)
    await make_avatar(services, 2, "B", photos=1)
    a_jobs = [
        (await services.renders.request(1, GUILD, CHANNEL, "A", f"a{i}")).job_id for i in range(20)
    ]
    b_ticket = await services.renders.request(2, GUILD, CHANNEL, "B", "b")
    assert b_ticket.position == 2  # behind A's first job only, not behind all twenty
    assert await services.jobs.position(a_jobs[5]) == 7
    order = [await services.dispatcher.run_once() for _ in range(3)]
    assert order == [a_jobs[0], b_ticket.job_id, a_jobs[1]]


async def test_concurrent_claims_keep_the_fair_order(
    database: Database, tmp_path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    """Three workers claim at the same moment: each serves a different member. (Without
    serialised claims, PostgreSQL handed A's two jobs out together: the "least recently
    served" order only sees committed claims.)"""
    quotas = QuotaDefaults(
        renders_per_day=50, queued_per_member=25, queued_per_guild=50, renders_per_minute=60
    )
    services = await _build(database, service_settings(tmp_path, quotas=quotas), tiny_engine_port)
    for user in (1, 2, 3):
        await make_avatar(services, user, f"U{user}", photos=1)
    jobs = {}
    for user, count in ((1, 3), (2, 1), (3, 1)):
        for i in range(count):
            ticket = await services.renders.request(user, GUILD, CHANNEL, f"U{user}", f"p{i}")
            jobs[ticket.job_id] = user

    async def claim(worker: str) -> int | None:
        async with database.begin() as session:
            job = await queue.claim_next(session, worker_id=worker, lease_seconds=30, now=utcnow())
            return None if job is None else job.id

    for _ in range(5):  # several rounds: any overlap would show up
        claimed = await asyncio.gather(*(claim(f"w{i}") for i in range(3)))
        assert None not in claimed
        assert sorted(jobs[j] for j in claimed if j is not None) == [1, 2, 3]
        async with database.begin() as session:
            await session.execute(
                update(RenderJob)
                .where(RenderJob.id.in_(claimed))
                .values(status="queued", worker_id=None, lease_expires_at=None)
            )
        # Back in the queue, but each of them has been served once now.
        async with database.begin() as session:
            await session.execute(update(RenderJob).values(started_at=utcnow()))


async def test_failures_are_refunded_with_the_state_change(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port)
    services = await _build(database, settings, engine)
    recorder = await Recorder.listen(services)
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 7, "Gone")
    orphan = await services.renders.request(7, GUILD, CHANNEL, "Gone", "a cat")
    await services.avatars.delete(7, "Gone")
    assert await services.dispatcher.run_once() == orphan.job_id
    view = await services.jobs.view(orphan.job_id)
    assert view.status == "failed" and "deleted" in (view.error or "")

    engine.fail_with = RuntimeError("CUDA exploded")
    broken = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    await services.dispatcher.run_once()
    view = await services.jobs.view(broken.job_id)
    assert view.status == "failed"
    assert "reference" in (view.error or "") and "CUDA" not in (view.error or "")

    assert await _ledger(services) == [
        ("reserve", orphan.job_id),
        ("refund", orphan.job_id),
        ("reserve", broken.job_id),
        ("refund", broken.job_id),
    ]
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    await recorder.wait_for(JobEventKind.FINISHED, broken.job_id)
    [attempt] = (await services.jobs.history(broken.job_id)).attempts
    assert attempt.outcome == "failed" and "reference" in (attempt.error or "")


async def test_cancel_while_running_stops_the_render_and_is_not_refunded(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port, delay=5.0)
    services = await _build(database, settings, engine)
    other_process = await _build(database, settings, engine)  # shares only the database
    await make_avatar(services, 7, "Mia")
    await services.start()

    # Cancelled here: the event reaches the loop at once.
    first = await services.renders.request(7, GUILD, CHANNEL, "Mia", "one")
    await engine.rendering(1)
    await services.renders.cancel(7, first.job_id)
    await engine.cancelled(1)

    # Cancelled by another process (SQLite: its events stay there): the lease renewal tells.
    second = await services.renders.request(7, GUILD, CHANNEL, "Mia", "two")
    await engine.rendering(2)
    await other_process.renders.cancel(7, second.job_id)
    await engine.cancelled(2)

    await services.aclose()
    assert [(await services.jobs.view(j)).status for j in (first.job_id, second.job_id)] == [
        "cancelled",
        "cancelled",
    ]
    # Both had started: cancelling stops the GPU work but refunds nothing (audit finding 4).
    assert await _ledger(services) == [("reserve", first.job_id), ("reserve", second.job_id)]
    async with database.begin(readonly=True) as session:
        assert (await session.scalars(select(JobOutput))).all() == []
    [attempt] = (await services.jobs.history(first.job_id)).attempts
    assert attempt.outcome == "cancelled"


async def test_recovery_requeues_then_gives_up_and_refunds(services: Services) -> None:
    recorder = await Recorder.listen(services)
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    long_ago = utcnow() - timedelta(minutes=5)
    async with services.database.begin() as session:  # a worker claims it, then dies
        await queue.claim_next(session, worker_id="dead", lease_seconds=1, now=long_ago)
    report = await services.jobs.recover()
    assert [v.id for v in report.requeued] == [ticket.job_id] and report.given_up == []
    assert (await services.jobs.view(ticket.job_id)).status == "queued"
    await recorder.wait_for(JobEventKind.REQUEUED, ticket.job_id)

    async with services.database.begin() as session:  # ... and dies on its last attempt
        await queue.claim_next(session, worker_id="dead", lease_seconds=1, now=long_ago)
        await session.execute(update(RenderJob).values(attempts=MAX_ATTEMPTS))
    await services.start()  # recovery runs at start and announces the outcome
    await recorder.wait_for(JobEventKind.FINISHED, ticket.job_id)
    view = await services.jobs.view(ticket.job_id)
    assert view.status == "failed" and "interrupted" in (view.error or "")
    assert [j.id for j in await services.jobs.undelivered()] == [ticket.job_id]
    assert await _ledger(services) == [("reserve", ticket.job_id), ("refund", ticket.job_id)]
    history = await services.jobs.history(ticket.job_id)
    assert [(a.number, a.worker_id, a.outcome) for a in history.attempts] == [
        (1, "dead", "lost"),
        (2, "dead", "lost"),
    ]


async def test_expired_leases_are_reaped_while_every_slot_is_busy(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    """A loop whose slots are all taken by long jobs still reaps a dead worker's job (it is
    requeued without waiting for the queue to empty), and runs it once a slot frees."""
    engine = SlowEngine(tiny_engine_port, delay=2.0)
    config = DispatcherConfig(concurrency=1, lease_seconds=30, reap_seconds=0.2)
    services = await _build(database, settings, engine, config)
    recorder = await Recorder.listen(services)
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 8, "Max")
    dead = await services.renders.request(8, GUILD, CHANNEL, "Max", "orphaned")
    async with database.begin() as session:  # claimed by a worker that then died
        await queue.claim_next(session, worker_id="dead", lease_seconds=0.5, now=utcnow())
    busy = await services.renders.request(7, GUILD, CHANNEL, "Mia", "long")
    await services.start()
    await recorder.wait_for(JobEventKind.STARTED, busy.job_id)
    await recorder.wait_for(JobEventKind.REQUEUED, dead.job_id)
    assert (await services.jobs.view(busy.job_id)).status == "running"  # still busy
    done = await _finished(services, recorder, dead.job_id)
    assert (done.status, done.attempts) == ("done", 2)
    await services.aclose()


async def test_graceful_stop_hands_the_running_job_back(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port, delay=5.0)
    services = await _build(database, settings, engine)
    recorder = await Recorder.listen(services)
    await make_avatar(services, 7, "Mia")
    await services.start()
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    await recorder.wait_for(JobEventKind.STARTED, ticket.job_id)
    await services.aclose()
    view = await services.jobs.view(ticket.job_id)
    assert (view.status, view.attempts) == ("queued", 0)
    engine.delay = 0.0
    restarted = await _build(database, settings, engine)
    done = await restarted.dispatcher.run_job(ticket.job_id)
    assert (done.status, done.attempts) == ("done", 1)
    assert await _ledger(services) == [("reserve", ticket.job_id)]
    history = await restarted.jobs.history(ticket.job_id)
    assert [a.outcome for a in history.attempts] == ["handed_back", "done"]
    workers = {w.id: w for w in await services.workers.list()}
    assert workers[services.dispatcher.worker_id].stopped_at is not None


async def test_a_loop_without_an_engine_reaps_but_never_claims(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    """The scale-out bot's loop: a dead worker's job is requeued by it, and left for workers."""
    worker = await _build(database, settings, tiny_engine_port)
    await make_avatar(worker, 7, "Mia")
    ticket = await worker.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    async with database.begin() as session:  # claimed by a worker that then died
        await queue.claim_next(session, worker_id="dead", lease_seconds=0.2, now=utcnow())
    bot = await _build(
        database,
        settings,
        None,
        DispatcherConfig(concurrency=4, lease_seconds=5, reap_seconds=0.2),
    )
    assert not bot.dispatcher.claims
    recorder = await Recorder.listen(bot)
    await bot.start()
    try:
        await recorder.wait_for(JobEventKind.REQUEUED, ticket.job_id)
        view = await bot.jobs.view(ticket.job_id)
        assert (view.status, view.attempts) == ("queued", 1)  # requeued, and not run here
        assert [a.outcome for a in (await bot.jobs.history(ticket.job_id)).attempts] == ["lost"]
    finally:
        await bot.aclose()
    assert await worker.dispatcher.run_once() == ticket.job_id
