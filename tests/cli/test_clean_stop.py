"""`avatarbot worker` and `avatarbot run` stop cleanly on SIGTERM and SIGINT, nothing lost.

Each test starts the real command in a subprocess over a SQLite file, queues a render long
enough to be caught mid-way (150 steps of 4 images on the tiny profile) from the test process,
waits until the subprocess runs it and has recorded progress, then signals it. The process must
exit 0 without a traceback, having handed the job back to the queue: ``queued`` again, the
interrupted attempt not counted (``attempts`` 0, its ``job_attempts`` row ``handed_back``), no
refund written, its ``workers`` row marked stopped. The worker test then runs the handed-back
job to completion here: charged once, done on its first counted attempt. The bot test runs
against a fake Discord on 127.0.0.1 (tests/fixtures/fake_discord.py) and checks that the bot
also closed its gateway connection.

Waiting on another process has no event to await, so the waits poll the database (or the
subprocess's log) with short sleeps, each bounded by a generous deadline: a hang fails the test
instead of stalling the suite. No assertion depends on how fast anything ran.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from bot.config import QuotaDefaults, Settings
from bot.services.container import Services, build_services
from bot.services.ports import EnginePort
from bot.services.results import JobView, RenderOptions
from db.migrate import upgrade
from db.models import LedgerEntry, UsageLedger, Worker
from db.session import Database
from tests.fixtures.fake_discord import (
    BOT_ID,
    FakeDiscord,
    GatewaySession,
    serve_fake_discord,
)
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings

REPO = Path(__file__).resolve().parents[2]
OWNER = 7
# The longest render the quotas allow: several seconds on the tiny profile, so the job is
# caught while it runs. Steps are decided when the job is queued (here), not by the worker.
LONG_RENDER = RenderOptions(steps=150, count=4)
QUOTAS = QuotaDefaults(
    renders_per_day=10,
    avatars_per_member=3,
    queued_per_member=5,
    queued_per_guild=50,
    max_steps=150,
    renders_per_minute=60,
)
# Generous upper bounds on waits (the subprocess imports torch and builds the tiny engine
# first); a hang fails the test at the bound.
START_TIMEOUT = 300.0
EXIT_TIMEOUT = 120.0
POLL = 0.05

SIGNALS = [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, id="SIGINT"),
]


# ---------------------------------------------------------------------- helpers


def subprocess_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``avatarbot`` subprocess: this environment without any
    ``AVATARBOT_*`` of the caller's, plus the test's database, data dir, tiny offline engine,
    quotas and short job intervals (the defaults would make the waits longer, not the
    assertions different)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env.update(
        {
            "AVATARBOT_DATABASE_URL": url,
            "AVATARBOT_DATA_DIR": str(tmp_path / "data"),
            "AVATARBOT_LOG_LEVEL": "INFO",
            "AVATARBOT_ENGINE__PROFILE": "tiny",
            "AVATARBOT_ENGINE__OFFLINE": "true",
            "AVATARBOT_ENGINE__DEFAULT_STEPS": "150",
            "AVATARBOT_QUOTAS__MAX_STEPS": "150",
            "AVATARBOT_QUOTAS__RENDERS_PER_DAY": "10",
            # On SQLite an enqueue in another process wakes no one: look at the queue often.
            "AVATARBOT_JOBS__POLL_SECONDS": "0.2",
            # Progress is recorded (with the lease renewal) early in the render.
            "AVATARBOT_JOBS__PROGRESS_SECONDS": "0.2",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Avatarbot:
    """An ``avatarbot`` subprocess; its stdout and stderr go to files (no pipe can fill)."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        name = args[0]
        self.stderr_path = tmp_path / f"{name}.stderr"
        self._stdout: IO[bytes] = (tmp_path / f"{name}.stdout").open("wb")
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> None:
        """Fail (with its log) if the process exited on its own."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"avatarbot exited early ({self.process.returncode}):\n{self.stderr()[-4000:]}"
            )

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"avatarbot did not exit within {timeout:.0f} s of the signal:\n"
                f"{self.stderr()[-4000:]}"
            ) from None

    def kill(self) -> None:
        """Cleanup: SIGKILL the process if it still runs; close the log files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._stdout.close()
        self._stderr.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str]], Avatarbot]]:
    started: list[Avatarbot] = []

    def start(args: list[str], env: dict[str, str]) -> Avatarbot:
        proc = Avatarbot(tmp_path, args, env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with serve_fake_discord() as server:
        yield server


async def wait_until(
    what: str, check: Callable[[], Awaitable[bool]], proc: Avatarbot, timeout: float
) -> None:
    """Poll ``check`` until it is true; fail if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not await check():
        proc.alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{proc.stderr()[-4000:]}")
        await asyncio.sleep(POLL)


async def wait_running(services: Services, job_id: int, proc: Avatarbot) -> None:
    """Until the subprocess runs the job and has recorded progress (a lease renewal)."""

    async def running() -> bool:
        view = await services.jobs.view(job_id)
        assert view.status in ("queued", "running"), f"job {job_id} ended early: {view}"
        return view.status == "running" and view.progress > 0

    await wait_until(f"job {job_id} to run", running, proc, START_TIMEOUT)


async def open_services(tmp_path: Path, url: str, engine: EnginePort) -> tuple[Database, Services]:
    """This process's side: the database and services (the session's tiny engine), with the
    subprocess's quotas so the long render is accepted."""
    database = Database.from_url(url)
    await upgrade(database)
    settings: Settings = service_settings(tmp_path, quotas=QUOTAS, database_url=url)
    return database, await build_services(settings, database, engine)


async def ledger(database: Database) -> list[tuple[str, int | None]]:
    async with database.begin(readonly=True) as session:
        rows = (
            await session.execute(
                select(UsageLedger.entry, UsageLedger.job_id).order_by(UsageLedger.id)
            )
        ).all()
    return [(LedgerEntry(entry).value, job_id) for entry, job_id in rows]


async def worker_row(database: Database, worker_id: str) -> Worker | None:
    async with database.begin(readonly=True) as session:
        return await session.get(Worker, worker_id)


async def assert_handed_back(
    services: Services, database: Database, job_id: int, proc: Avatarbot
) -> None:
    """The job is queued again, uncounted, with one ``handed_back`` attempt; nothing was
    refunded; the job loop of ``proc`` that ran it is marked stopped."""
    view: JobView = await services.jobs.view(job_id)
    assert (view.status, view.attempts, view.progress) == ("queued", 0, 0.0)
    history = await services.jobs.history(job_id)
    assert [a.outcome for a in history.attempts] == ["handed_back"]
    attempt = history.attempts[0]
    assert attempt.ended_at is not None
    assert history.worker_id is None
    assert history.lease_expires_at is None
    worker = await worker_row(database, attempt.worker_id)
    assert worker is not None, f"no workers row for {attempt.worker_id}"
    assert worker.pid == proc.pid
    assert worker.stopped_at is not None
    assert await ledger(database) == [("reserve", job_id)]
    assert (await services.quotas.usage(GUILD, OWNER)).used == 1


def assert_clean_exit(returncode: int, proc: Avatarbot) -> str:
    stderr = proc.stderr()
    assert returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    return stderr


# ---------------------------------------------------------------------- the worker


@pytest.mark.parametrize("signum", SIGNALS)
async def test_worker_stops_cleanly(
    signum: signal.Signals,
    tmp_path: Path,
    tiny_engine_port: EnginePort,
    spawn: Callable[[list[str], dict[str, str]], Avatarbot],
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'avatarbot.db'}"
    database, services = await open_services(tmp_path, url, tiny_engine_port)
    try:
        await make_avatar(services, OWNER, "Mia")
        ticket = await services.renders.request(OWNER, GUILD, CHANNEL, "Mia", "a cat", LONG_RENDER)
        worker = spawn(["worker", "--allow-noise"], subprocess_env(tmp_path, url))
        await wait_running(services, ticket.job_id, worker)

        worker.process.send_signal(signum)
        stderr = assert_clean_exit(await worker.wait_exit(EXIT_TIMEOUT), worker)
        assert "handing running jobs back" in stderr
        await assert_handed_back(services, database, ticket.job_id, worker)

        # Nothing was lost: the job runs to the end here, counted and charged once.
        done = await services.dispatcher.run_job(ticket.job_id)
        assert (done.status, done.attempts, done.output_count) == ("done", 1, 4)
        history = await services.jobs.history(ticket.job_id)
        assert [a.outcome for a in history.attempts] == ["handed_back", "done"]
        assert await ledger(database) == [("reserve", ticket.job_id)]
        assert (await services.quotas.usage(GUILD, OWNER)).used == 1
    finally:
        await services.aclose()
        await database.dispose()


# ---------------------------------------------------------------------- the bot


@pytest.mark.parametrize("signum", SIGNALS)
async def test_bot_stops_cleanly(
    signum: signal.Signals,
    tmp_path: Path,
    tiny_engine_port: EnginePort,
    fake_discord: FakeDiscord,  # before ``spawn``: the bot is gone before the fake stops
    spawn: Callable[[list[str], dict[str, str]], Avatarbot],
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'avatarbot.db'}"
    database, services = await open_services(tmp_path, url, tiny_engine_port)
    try:
        # Before the bot starts: its job loop would otherwise race this process for the
        # avatar's encode job.
        await make_avatar(services, OWNER, "Mia")
        env = subprocess_env(
            tmp_path,
            url,
            AVATARBOT_DISCORD_TOKEN="fake.discord.token",
            AVATARBOT_DISCORD_API_BASE=fake_discord.api_base,
            AVATARBOT_DISCORD_GATEWAY_URL=fake_discord.gateway_url,
        )
        bot = spawn(["run", "--allow-noise"], env)

        async def set_up() -> bool:
            return fake_discord.identified.is_set() and "bot set up" in bot.stderr()

        await wait_until("the bot to connect and set up", set_up, bot, START_TIMEOUT)
        assert fake_discord.authorizations == {"Bot fake.discord.token"}
        assert ("PUT", f"/api/v10/applications/{BOT_ID}/commands") in fake_discord.requests

        ticket = await services.renders.request(OWNER, GUILD, CHANNEL, "Mia", "a cat", LONG_RENDER)
        await wait_running(services, ticket.job_id, bot)

        bot.process.send_signal(signum)
        stderr = assert_clean_exit(await bot.wait_exit(EXIT_TIMEOUT), bot)
        assert f"{signal.Signals(signum).name} received: stopping" in stderr
        await assert_handed_back(services, database, ticket.job_id, bot)

        # The bot closed its gateway connection with a close frame, not by dropping the socket
        # as a killed process would. (discord.py 2.7.1 closes with 4000 rather than the 1000
        # ``Client.close`` asks for: its reader task answers aiohttp's "closing" first.)
        sessions = fake_discord.sessions
        assert [s.identified for s in sessions] == [True]
        await wait_until_closed(sessions[0])
        assert sessions[0].closed_by_client, sessions[0].close_code
    finally:
        await services.aclose()
        await database.dispose()


async def wait_until_closed(session: GatewaySession, timeout: float = 30.0) -> None:
    """The fake notes the close once its handler returns (just after the client's close
    frame): wait for that, bounded."""
    deadline = time.monotonic() + timeout
    while not session.closed:
        assert time.monotonic() < deadline, "the fake gateway never saw the websocket close"
        await asyncio.sleep(POLL)
