"""Nothing lost when the database blinks (issue 23), on a PostgreSQL server of the test's own
that it stops and starts again:

- a finished render whose outcome write meets the stopped server is written once the server
  is back (retried while the job's lease holds), rendered once, one attempt, nothing logged
  as "never retrieved";
- a job whose work meets the stopped server (reading its avatar's features) goes back to
  the queue without counting an attempt, and renders once the server is back;
- the claim loop comes back within its bounded backoff, with one log line per state change.

The server restarts when the dispatcher says, in its log, that it met the outage: no sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import select

from bot.config import Settings
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.ports import (
    EngineFacts,
    EnginePort,
    PreviewCallback,
    ProgressCallback,
    RenderOutput,
    RenderSpec,
)
from db.migrate import upgrade
from db.models import JobAttempt, RenderJob
from db.session import Database
from kinds import JobStatus
from tests.cli.test_waits_for_database import Server
from tests.cli.test_waits_for_database import server as server
from tests.fixtures.services import CHANNEL, GUILD, make_avatar

pytestmark = pytest.mark.postgres

# Long enough that the outage (a restart: about a second) fits well inside one lease.
CONFIG = DispatcherConfig(concurrency=1, lease_seconds=30.0, poll_seconds=0.2, reap_seconds=5.0)


class RestartOn(logging.Handler):
    """Starts the stopped server again (in a thread: ``pg_ctl`` blocks) the first time a
    record of ``logger`` contains ``text``; ``restarted`` is set once it accepts connections."""

    def __init__(self, server: Server, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.server = server
        self.text = text
        self.restarted = threading.Event()
        self.records: list[logging.LogRecord] = []
        self._started = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if not self._started and self.text in record.getMessage():
            self._started = True
            threading.Thread(target=self._restart, daemon=True).start()

    def _restart(self) -> None:
        self.server.start()
        self.restarted.set()


class Blinking:
    """The tiny engine port, with the server stopped at a chosen moment of one job: right after
    its render (``after_render``: the outcome write meets the outage) or when the work reads
    its avatar's features (``at_features``: the engine facts are asked just before)."""

    def __init__(self, inner: EnginePort, server: Server) -> None:
        self.inner = inner
        self.server = server
        self.after_render = False
        self.at_features = False
        self.renders = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def facts(self) -> EngineFacts:
        if self.at_features:
            self.at_features = False
            self.server.stop()
        return self.inner.facts()

    async def render(
        self,
        spec: RenderSpec,
        features: bytes,
        progress: ProgressCallback | None = None,
        *,
        extra_subjects: Sequence[bytes] = (),
        preview: PreviewCallback | None = None,
    ) -> RenderOutput:
        more = {"extra_subjects": extra_subjects} if extra_subjects else {}
        output = await self.inner.render(spec, features, progress, preview=preview, **more)
        self.renders += 1
        if self.after_render:
            self.after_render = False
            await asyncio.to_thread(self.server.stop)
        return output


@pytest.fixture
async def blinking(
    server: Server, settings: Settings, tiny_engine_port: EnginePort
) -> AsyncIterator[tuple[Services, Blinking]]:
    database = Database.from_url(server.url)
    await upgrade(database)
    engine = Blinking(tiny_engine_port, server)
    services = await build_services(settings, database, engine, dispatcher_config=CONFIG)
    try:
        yield services, engine
    finally:
        await services.dispatcher.stop()
        await services.events.aclose()
        await database.dispose()


async def _job(services: Services, job_id: int) -> tuple[RenderJob, list[JobAttempt]]:
    async with services.database.begin(readonly=True) as session:
        job = (await session.scalars(select(RenderJob).where(RenderJob.id == job_id))).one()
        attempts = (
            await session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id))
        ).all()
        return job, list(attempts)


async def test_an_outcome_write_that_meets_the_outage_is_written_when_the_database_is_back(
    blinking: tuple[Services, Blinking], server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    services, engine = blinking
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    restart = RestartOn(server, "retrying while its lease holds")
    logging.getLogger("bot.services.dispatcher").addHandler(restart)
    try:
        engine.after_render = True
        assert await services.dispatcher.run_once() == ticket.job_id
    finally:
        logging.getLogger("bot.services.dispatcher").removeHandler(restart)
    assert restart.restarted.is_set()
    job, attempts = await _job(services, ticket.job_id)
    assert job.status == JobStatus.DONE and engine.renders == 1
    assert [a.outcome for a in attempts] == ["done"] and job.attempts == 1
    assert len(await services.jobs.outputs(ticket.job_id)) == 1
    assert not [r for r in restart.records if r.levelno >= logging.ERROR]


async def test_a_job_whose_work_meets_the_outage_goes_back_without_counting_an_attempt(
    blinking: tuple[Services, Blinking], server: Server
) -> None:
    services, engine = blinking
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    restart = RestartOn(server, "handing it back")
    logging.getLogger("bot.services.dispatcher").addHandler(restart)
    try:
        engine.at_features = True
        assert await services.dispatcher.run_once() == ticket.job_id
        job, attempts = await _job(services, ticket.job_id)
        assert job.status == JobStatus.QUEUED and job.attempts == 0
        assert [a.outcome for a in attempts] == ["handed_back"] and engine.renders == 0
        assert await services.dispatcher.run_once() == ticket.job_id
    finally:
        logging.getLogger("bot.services.dispatcher").removeHandler(restart)
    job, attempts = await _job(services, ticket.job_id)
    assert job.status == JobStatus.DONE and job.attempts == 1 and engine.renders == 1
    assert (await services.quotas.usage(GUILD, 7)).used == 1


async def _until_done(services: Services, job_id: int) -> None:
    # Bounded to 60 s. Its FINISHED event is a NOTIFY whose listener may still be reconnecting
    # after the outage, so the row is read instead.
    for _ in range(600):
        if (await _job(services, job_id))[0].status == JobStatus.DONE:
            return
        await asyncio.sleep(0.1)  # poll: the dispatcher's own task writes the job
    raise AssertionError(f"job {job_id} not done within 60 s")


async def test_the_job_loop_rides_out_outages_with_nothing_left_unretrieved(
    blinking: tuple[Services, Blinking], server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The real loop (job tasks it never awaits): an outage during an outcome write, then one
    while it is idle (its claims fail); afterwards both jobs are done, the claim loop said
    once that it failed and once that it works again, and asyncio has no "never retrieved"
    to report."""
    services, engine = blinking
    await make_avatar(services, 7, "Mia")
    first = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    dispatcher = logging.getLogger("bot.services.dispatcher")
    during_write = RestartOn(server, "retrying while its lease holds")
    while_idle = RestartOn(server, "claiming jobs failed")
    with caplog.at_level(logging.INFO):
        dispatcher.addHandler(during_write)
        try:
            engine.after_render = True
            await services.events.start()  # LISTEN: its connection dies with each outage
            await services.dispatcher.start()
            await asyncio.wait_for(asyncio.to_thread(during_write.restarted.wait, 60), 90)
            await _until_done(services, first.job_id)
        finally:
            dispatcher.removeHandler(during_write)
        dispatcher.addHandler(while_idle)
        try:
            await asyncio.to_thread(server.stop)
            await asyncio.wait_for(asyncio.to_thread(while_idle.restarted.wait, 60), 90)
            second = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a dog")
            await _until_done(services, second.job_id)
        finally:
            dispatcher.removeHandler(while_idle)
        await services.dispatcher.stop()
        await services.events.aclose()
        gc.collect()
    assert during_write.restarted.is_set() and engine.renders == 2
    messages = [r.getMessage() for r in caplog.records]
    # One line when claiming starts failing (another if the error changes: refused, then
    # "the database system is starting up"), one when it works again.
    assert 1 <= len([m for m in messages if m.startswith("claiming jobs failed")]) <= 2
    assert len([m for m in messages if m.startswith("claiming jobs works again")]) == 1
    assert not [m for m in messages if "never retrieved" in m]
    # The notification listener: one line per outage it met, not one per reconnect try.
    lost = [m for m in messages if m.startswith("reconnecting for notifications failed")]
    assert len(lost) <= 2
    assert len([m for m in messages if m == "notification connection restored"]) >= len(lost)
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and "claiming" not in r.getMessage()
    ]
