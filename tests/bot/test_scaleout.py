"""The scale-out setup end to end, on a real PostgreSQL: the bot on SimCord with
``run_worker=false`` (no engine in its process) and two ``avatarbot worker`` processes on the
tiny profile. A member creates an avatar and renders; progress from a remote worker reaches the
member's message; each result is posted once. Then the worker holding a job is SIGKILLed while
other jobs keep both workers busy: the job completes on the other worker (reaped, not after
the 10-minute maintenance), is charged once and posted once.

Waiting is on job events (the bot's own LISTEN connection hands them to this process too),
never on sleeps; every wait is bounded so a hang fails the test.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import simcord
from sqlalchemy import select

from bot.app import create_bot
from bot.config import JobSettings, QuotaDefaults, Settings
from bot.services.container import Services
from bot.services.events import JobEvent, JobEventKind
from db.models import JobOutput, LedgerEntry, RenderJob, UsageLedger
from db.session import Database
from db.types import utcnow
from engine.config import EngineSettings
from tests.fixtures.discord import button_ids, create_avatar, edits, object_photo
from tests.fixtures.workers import WorkerProcess, start_worker, stop_worker

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgres"], indirect=True),
]

LEASE = 10.0
WAIT = 240.0  # the bound on any single wait: a hang fails, a slow machine does not


@dataclass
class Worker:
    proc: WorkerProcess
    ready: asyncio.Event

    @property
    def pid(self) -> int:
        return self.proc.pid


def _jobs_settings() -> JobSettings:
    return JobSettings(lease_seconds=LEASE, reap_seconds=1.0, progress_seconds=0.25)


async def _start_worker(db_url: str, data_dir: Path) -> Worker:
    ready = asyncio.Event()

    def seen(line: str) -> None:
        if "running; SIGTERM" in line:
            ready.set()

    env = {
        "AVATARBOT_JOBS__LEASE_SECONDS": str(LEASE),
        "AVATARBOT_JOBS__REAP_SECONDS": "1",
        "AVATARBOT_JOBS__PROGRESS_SECONDS": "0.25",
    }
    return Worker(await start_worker(db_url, data_dir, seen, env), ready)


@pytest.fixture
async def workers(db_url: str, database: Database, tmp_path: Path) -> AsyncIterator[list[Worker]]:
    started = [await _start_worker(db_url, tmp_path / f"w{i}") for i in range(2)]
    try:
        for w in started:
            try:
                await asyncio.wait_for(w.ready.wait(), WAIT)
            except TimeoutError:
                raise AssertionError(
                    "a worker did not start:\n" + "\n".join(w.proc.lines)
                ) from None
        yield started
    finally:
        await asyncio.gather(*(stop_worker(w.proc) for w in started))


class Seen:
    """Every job event the bot's process hears (its LISTEN connection), with a bounded wait."""

    def __init__(self, services: Services) -> None:
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()
        services.events.subscribe(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def has(self, kind: JobEventKind, job_id: int) -> bool:
        return JobEvent(kind, job_id) in self.events

    async def until(self, condition: Callable[[], bool], within: float = WAIT) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), within)


def _settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "bot",
        database_url=db_url,
        run_worker=False,
        # Renders long enough on the tiny model for progress to be reported mid-render.
        engine=EngineSettings(profile="tiny", default_steps=60, offline=True),
        quotas=QuotaDefaults(
            renders_per_day=20,
            queued_per_member=5,
            queued_per_guild=50,
            max_steps=150,
            renders_per_minute=60,
        ),
        jobs=_jobs_settings(),
        output_retention_hours=24,
    )


def _job_of(message) -> int:  # type: ignore[no-untyped-def]
    return int(button_ids(message)[0].rsplit(":", 1)[1])


async def test_bot_and_two_workers_on_postgres(
    db_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    bot = create_bot(_settings(tmp_path, db_url))
    async with simcord.run(bot, settle_timeout=WAIT) as env:
        assert bot.services.engine is None and not bot.services.dispatcher.claims
        seen = Seen(bot.services)
        guild = env.create_guild(name="Scale-out")
        channel = guild.create_text_channel("renders")
        members = [guild.add_member(env.create_user(name)) for name in ("alice", "bob", "cy")]
        world = _World(env, channel)

        # Avatar creation: checked and encoded by a worker, summary edited in by the bot.
        for i, member in enumerate(members):
            photos = [(f"{i}-{k}.png", object_photo(100 * i + k)) for k in range(2)]
            created = await create_avatar(world, member, "Mug", photos=photos)  # type: ignore[arg-type]
            encode_job = await _encode_job(bot.services, member.id)
            await seen.until(lambda j=encode_job: seen.has(JobEventKind.FINISHED, j))
            await env.settle()
            assert created.response.content.startswith("**Mug** is ready"), created.response

        # A render: queued here, rendered by a worker, progress shown, posted once.
        before = len(edits(env))
        result = await members[0].slash(channel, "avatar render", avatar="Mug", prompt="a hat")
        job_id = _job_of(result.response)
        await seen.until(lambda: seen.has(JobEventKind.FINISHED, job_id))
        await env.settle()
        shown = edits(env)[before:]
        assert shown[0].startswith("Queued")
        progress = [c for c in shown if c.startswith("Rendering **Mug**")]
        # Moved past the start, reported from a worker process.
        assert any(c.endswith("%") and not c.endswith(" 0%") for c in progress), shown
        assert result.response.content == "Done — your images are posted below."
        [posted] = result.followups
        assert len(posted.attachments) == 1
        view = await bot.services.jobs.view(job_id)
        assert view.status == "done" and view.delivered_at is not None
        history = await bot.services.jobs.history(job_id)
        [attempt] = history.attempts
        assert attempt.outcome == "done"
        assert str(attempt.worker_id).split(":")[1] in {str(w.pid) for w in workers}

        # SIGKILL the worker holding a job while the other worker is busy too.
        results = [
            await member.slash(channel, "avatar render", avatar="Mug", prompt=f"take {i}")
            for i, member in enumerate([members[1], members[2], members[0], members[1]])
        ]
        job_ids = [_job_of(r.response) for r in results]
        await seen.until(lambda: sum(seen.has(JobEventKind.STARTED, j) for j in job_ids) >= 2)
        holders = await _holders(bot.services, job_ids)
        assert holders, "two jobs started, none running"
        victim_job, victim_pid = next(iter(holders.items()))
        victim = next(w for w in workers if w.pid == victim_pid)
        killed_at = _db_now()
        victim.proc.process.send_signal(signal.SIGKILL)
        await victim.proc.process.wait()

        await seen.until(lambda: all(seen.has(JobEventKind.FINISHED, j) for j in job_ids))
        await env.settle()
        done = await bot.services.jobs.history(victim_job)
        assert done.job.status == "done"
        assert [a.outcome for a in done.attempts] == ["lost", "done"]
        survivor = next(w for w in workers if w is not victim)
        assert done.attempts[1].worker_id.split(":")[1] == str(survivor.pid)
        assert done.job.finished_at is not None
        # Reaped by the surviving worker's loop while it was busy (not by the 10-minute
        # maintenance), and finished within two lease periods of the kill.
        assert (done.job.finished_at - killed_at).total_seconds() <= 2 * LEASE
        for r, j in zip(results, job_ids, strict=True):
            assert (await bot.services.jobs.view(j)).status == "done"
            [one] = r.followups  # posted exactly once
            assert len(one.attachments) == 1
        async with bot.services.database.begin(readonly=True) as session:
            ledger = (
                await session.execute(
                    select(UsageLedger.entry).where(UsageLedger.job_id == victim_job)
                )
            ).all()
            outputs = (
                await session.scalars(select(JobOutput.id).where(JobOutput.job_id == victim_job))
            ).all()
        assert [LedgerEntry(e).value for (e,) in ledger] == ["reserve"]  # charged once
        assert len(outputs) == 1


@dataclass
class _World:
    """What ``create_avatar`` (tests/fixtures/discord.py) reads of a world."""

    env: object
    channel: object


async def _encode_job(services: Services, user_id: int) -> int:
    async with services.database.begin(readonly=True) as session:
        return int(
            (
                await session.scalars(
                    select(RenderJob.id).where(
                        RenderJob.user_id == user_id, RenderJob.kind == "encode"
                    )
                )
            ).one()
        )


async def _holders(services: Services, job_ids: list[int]) -> dict[int, int]:
    """Running job -> the pid of the worker holding it."""
    async with services.database.begin(readonly=True) as session:
        rows = (
            await session.execute(
                select(RenderJob.id, RenderJob.worker_id).where(
                    RenderJob.id.in_(job_ids), RenderJob.status == "running"
                )
            )
        ).all()
    return {job_id: int(worker.split(":")[1]) for job_id, worker in rows if worker}


def _db_now() -> datetime:
    return utcnow()
