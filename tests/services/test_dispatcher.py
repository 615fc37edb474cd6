"""The dispatcher: rendering through the tiny engine, observers, fairness, failures with
refunds, cancellation (in process and from another process), recovery, graceful stop."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta

from PIL import Image
from sqlalchemy import select, update

from bot.config import QuotaDefaults, Settings
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.events import JobObserver
from bot.services.jobs import MAX_ATTEMPTS
from bot.services.ports import EnginePort
from bot.services.results import JobView, RenderOptions
from db import queue
from db.models import JobOutput, LedgerEntry, RenderJob, UsageLedger
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, SlowEngine, make_avatar, service_settings

FAST = DispatcherConfig(concurrency=2, lease_seconds=0.6, poll_seconds=0.1)


class Recorder(JobObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, object]] = []

    async def job_started(self, job: JobView) -> None:
        self.events.append(("started", job.id, job.status))

    async def job_progress(self, job_id: int, fraction: float) -> None:
        self.events.append(("progress", job_id, fraction))

    async def job_requeued(self, job: JobView) -> None:
        self.events.append(("requeued", job.id, job.status))

    async def job_finished(self, job: JobView) -> None:
        self.events.append(("finished", job.id, job.status))

    def kinds(self, job_id: int) -> list[str]:
        return [kind for kind, jid, _ in self.events if jid == job_id]


async def _build(
    database: Database, settings: Settings, engine: EnginePort, config: DispatcherConfig = FAST
) -> Services:
    return await build_services(settings, database, engine, dispatcher_config=config)


async def _wait_status(services: Services, job_id: int, status: str) -> JobView:
    for _ in range(400):
        view = await services.jobs.view(job_id)
        if view.status == status:
            return view
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never reached {status}: {view.status}")


async def _ledger(services: Services) -> list[tuple[str, int | None]]:
    async with services.database.begin(readonly=True) as session:
        rows = (await session.scalars(select(UsageLedger).order_by(UsageLedger.id))).all()
    return [(LedgerEntry(r.entry).value, r.job_id) for r in rows]


async def test_renders_through_the_engine_and_notifies(services: Services) -> None:
    recorder = Recorder()
    remove = services.dispatcher.add_observer(recorder)
    await make_avatar(services, 7, "Mia")
    await services.dispatcher.start()
    ticket = await services.renders.request(
        7, GUILD, CHANNEL, "Mia", "a cat", RenderOptions(count=2, seed=11, aspect="landscape")
    )
    view = await services.dispatcher.wait_finished(ticket.job_id, within=60)
    assert (view.status, view.seeds, view.output_count, view.progress) == ("done", (11, 12), 2, 1)
    images = [Image.open(io.BytesIO(b)) for b in await services.jobs.outputs(ticket.job_id)]
    assert [(i.format, i.size) for i in images] == [("PNG", (80, 64))] * 2
    await asyncio.sleep(0.05)  # observer hooks run as their own tasks
    kinds = recorder.kinds(ticket.job_id)
    assert kinds[0] == "started" and kinds[-1] == "finished" and "progress" in kinds
    assert [j.id for j in await services.jobs.undelivered()] == [ticket.job_id]
    assert await services.jobs.mark_delivered(ticket.job_id)
    assert not await services.jobs.mark_delivered(ticket.job_id)
    assert await services.jobs.undelivered() == []
    assert await _ledger(services) == [("reserve", ticket.job_id)]
    remove()


async def test_fair_round_robin_across_users(
    database: Database, tmp_path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    quotas = QuotaDefaults(renders_per_day=50, queued_per_member=25, queued_per_guild=50)
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


async def test_failures_are_refunded_with_the_state_change(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port)
    services = await _build(database, settings, engine)
    recorder = Recorder()
    services.dispatcher.add_observer(recorder)
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
    await asyncio.sleep(0.05)
    assert ("finished", broken.job_id, "failed") in recorder.events


async def test_cancel_while_running_stops_the_render_and_refunds_once(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port, delay=5.0)
    services = await _build(database, settings, engine)
    other_process = await _build(database, settings, engine)  # shares only the database
    await make_avatar(services, 7, "Mia")
    await services.dispatcher.start()

    # Cancelled here: the dispatcher hears it at once.
    first = await services.renders.request(7, GUILD, CHANNEL, "Mia", "one")
    await _wait_status(services, first.job_id, "running")
    await services.renders.cancel(7, first.job_id)
    for _ in range(100):
        if engine.renders_cancelled == 1:
            break
        await asyncio.sleep(0.02)
    assert engine.renders_cancelled == 1

    # Cancelled by another process: the lease renewal finds out.
    second = await services.renders.request(7, GUILD, CHANNEL, "Mia", "two")
    await _wait_status(services, second.job_id, "running")
    await other_process.renders.cancel(7, second.job_id)
    for _ in range(200):
        if engine.renders_cancelled == 2:
            break
        await asyncio.sleep(0.02)
    assert engine.renders_cancelled == 2

    await services.dispatcher.stop()
    assert [(await services.jobs.view(j)).status for j in (first.job_id, second.job_id)] == [
        "cancelled",
        "cancelled",
    ]
    assert await _ledger(services) == [
        ("reserve", first.job_id),
        ("refund", first.job_id),
        ("reserve", second.job_id),
        ("refund", second.job_id),
    ]
    async with database.begin(readonly=True) as session:
        assert (await session.scalars(select(JobOutput))).all() == []


async def test_recovery_requeues_then_gives_up_and_refunds(services: Services) -> None:
    recorder = Recorder()
    services.dispatcher.add_observer(recorder)
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    long_ago = utcnow() - timedelta(minutes=5)
    async with services.database.begin() as session:  # a worker claims it, then dies
        await queue.claim_next(session, worker_id="dead", lease_seconds=1, now=long_ago)
    report = await services.jobs.recover()
    assert [v.id for v in report.requeued] == [ticket.job_id] and report.given_up == []
    assert (await services.jobs.view(ticket.job_id)).status == "queued"

    async with services.database.begin() as session:  # ... and dies on its last attempt
        await queue.claim_next(session, worker_id="dead", lease_seconds=1, now=long_ago)
        await session.execute(update(RenderJob).values(attempts=MAX_ATTEMPTS))
    await services.dispatcher.start()  # recovery runs at start and tells the observers
    view = await _wait_status(services, ticket.job_id, "failed")
    assert "interrupted" in (view.error or "")
    await asyncio.sleep(0.05)
    assert ("finished", ticket.job_id, "failed") in recorder.events
    assert [j.id for j in await services.jobs.undelivered()] == [ticket.job_id]
    assert await _ledger(services) == [("reserve", ticket.job_id), ("refund", ticket.job_id)]


async def test_graceful_stop_puts_the_running_job_back(
    database: Database, settings: Settings, tiny_engine_port: EnginePort
) -> None:
    engine = SlowEngine(tiny_engine_port, delay=5.0)
    services = await _build(database, settings, engine)
    await make_avatar(services, 7, "Mia")
    await services.dispatcher.start()
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    await _wait_status(services, ticket.job_id, "running")
    await services.dispatcher.stop()
    view = await services.jobs.view(ticket.job_id)
    assert (view.status, view.attempts) == ("queued", 0)
    engine.delay = 0.0
    restarted = await _build(database, settings, engine)
    await restarted.dispatcher.start()
    done = await restarted.dispatcher.wait_finished(ticket.job_id, within=60)
    await restarted.dispatcher.stop()
    assert (done.status, done.attempts) == ("done", 1)
    assert await _ledger(services) == [("reserve", ticket.job_id)]
