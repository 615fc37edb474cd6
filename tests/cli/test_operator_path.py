"""The README's "Run it on your server" walked with the real commands, on the tiny profile.

Each step runs ``avatarbot`` as a subprocess, as an operator would: ``invite`` prints the link;
``db upgrade`` migrates an empty PostgreSQL database; ``doctor --role bot|worker`` pass; ``worker
--allow-noise`` starts and waits for jobs; ``run`` (``AVATARBOT_RUN_WORKER=false``, the
scale-out bot) connects to a fake Discord on 127.0.0.1 (tests/fixtures/fake_discord.py: it
cannot send interactions). Then a member's avatar and render are queued from this process
through the same services the bot uses; the worker encodes and renders them through PostgreSQL
and the bot posts the result in the member's channel. Every wait is on an event (a log line, a
job event heard over LISTEN, the fake's gateway and message events) and bounded. The steps'
wall times are printed (``-s``) for the operator's path's closing note.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.services.container import Services, build_services
from bot.services.events import JobEvent, JobEventKind
from bot.services.results import RenderOptions
from db.session import Database
from tests.fixtures.cli_process import CliProcess, clean_env, start_cli
from tests.fixtures.fake_discord import BOT_ID, serve_fake_discord
from tests.fixtures.services import CHANNEL, GUILD, make_photo, service_settings

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgres"], indirect=True),
]

WAIT = 240.0  # the bound on any single wait: a hang fails, a slow machine does not
OWNER = 7
# Shaped like a bot token (doctor checks the shape): a base64 user id and two more parts.
TOKEN = ".".join(
    [base64.urlsafe_b64encode(str(BOT_ID).encode()).decode().rstrip("="), "GaBcDe", "x" * 27]
)


class Steps:
    """Each step's wall time, printed at the end."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self._start = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self._start))
        self._start = now

    def report(self) -> str:
        return "\n".join(f"{seconds:7.2f} s  {name}" for name, seconds in self.times)


async def command(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``avatarbot ARGS`` to its end; its status and stdout (stderr in the failure)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, f"avatarbot {' '.join(args)}: {proc.returncode}\n{err.decode()}"
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, out.decode()


class Heard:
    """The job events this process hears over PostgreSQL's LISTEN, with a bounded wait."""

    def __init__(self, services: Services) -> None:
        self._events: set[JobEvent] = set()
        self._changed = asyncio.Event()
        services.events.subscribe(self._on_event)

    def _on_event(self, event: JobEvent) -> None:
        self._events.add(event)
        self._changed.set()

    async def finished(self, job_id: int) -> None:
        async def wait() -> None:
            while JobEvent(JobEventKind.FINISHED, job_id) not in self._events:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT)


async def test_the_readme_path_from_invite_to_a_render_posted_by_the_bot(
    db_url: str, tmp_path: Path
) -> None:
    steps = Steps()
    env = clean_env(
        AVATARBOT_DATABASE_URL=db_url,
        AVATARBOT_ENGINE__PROFILE="tiny",
        AVATARBOT_ENGINE__OFFLINE="true",
        AVATARBOT_OPS__LISTEN="127.0.0.1:0",
        HF_HOME=str(tmp_path / "hf"),
    )
    bot_env = {**env, "AVATARBOT_DATA_DIR": str(tmp_path / "bot"), "AVATARBOT_RUN_WORKER": "false"}

    # 2. The invite link (step 1, the portal, is the operator's).
    _, out = await command(bot_env, "invite", "--application-id", "1")
    assert out.startswith("https://discord.com/oauth2/authorize?client_id=1&")
    steps.done("avatarbot invite --application-id 1")

    # 5. The database and the doctor (3 and 4, the profile and its weights: tiny needs none).
    await command(bot_env, "db", "upgrade")
    steps.done("avatarbot db upgrade (PostgreSQL, empty)")
    await command({**bot_env, "AVATARBOT_DISCORD_TOKEN": TOKEN}, "doctor", "--role", "bot")
    steps.done("avatarbot doctor --role bot")
    worker_env = {**env, "AVATARBOT_DATA_DIR": str(tmp_path / "worker")}
    await command(worker_env, "doctor", "--role", "worker")
    steps.done("avatarbot doctor --role worker (no token)")

    # 7. A worker, then the bot.
    worker_ready = asyncio.Event()
    bot_ready = asyncio.Event()

    def worker_line(line: str) -> None:
        if "running; SIGTERM" in line:
            worker_ready.set()

    def bot_line(line: str) -> None:
        if "bot set up" in line:
            bot_ready.set()

    processes: list[CliProcess] = []
    try:
        worker = await start_cli(["worker", "--allow-noise"], worker_env, worker_line)
        processes.append(worker)
        await worker.until(worker_ready, "worker start", WAIT)
        steps.done("avatarbot worker --allow-noise: waiting for jobs")

        async with bot_side(tmp_path, db_url) as (services, heard):
            # A member's avatar, queued as /avatar create would: the worker encodes it.
            photos = [(f"p{i}.png", make_photo(OWNER * 100 + i, size=256)) for i in range(2)]
            created = await services.avatars.create(
                OWNER, GUILD, "Mia", "object", photos, consent=True
            )
            await heard.finished(created.job_id)
            assert (await services.avatars.creation_result(created.job_id)).avatar.name == "Mia"
            # Its summary is the bot's to send (to the member, who is not in the fake
            # Discord): told delivered, as the bot would be after sending it.
            await services.jobs.mark_delivered(created.job_id)
            steps.done("avatar created: photos checked and encoded by the worker")

            async with serve_fake_discord(token=TOKEN) as fake:
                bot_env.update(
                    AVATARBOT_DISCORD_TOKEN=TOKEN,
                    AVATARBOT_DISCORD_API_BASE=fake.api_base,
                    AVATARBOT_DISCORD_GATEWAY_URL=fake.gateway_url,
                )
                bot = await start_cli(["run"], bot_env, bot_line)
                processes.append(bot)
                await bot.until(fake.identified, "gateway connection", WAIT)
                await bot.until(bot_ready, "bot set up", WAIT)
                steps.done("avatarbot run (RUN_WORKER=false): connected, commands synced")

                # A render, queued as /avatar render would (no interaction: the fake cannot
                # send one, so the result goes to the channel): the worker renders it, the
                # bot posts it.
                ticket = await services.renders.request(
                    OWNER, GUILD, CHANNEL, "Mia", "a cat", RenderOptions(steps=2)
                )
                await heard.finished(ticket.job_id)
                assert (await services.jobs.view(ticket.job_id)).status == "done"
                steps.done("render queued, rendered by the worker")
                await bot.until(fake.message_posted, "result posted", WAIT)
                steps.done("result posted in its channel by the bot")
                assert ("POST", f"/api/v10/channels/{CHANNEL}/messages") in fake.requests
                for proc in reversed(processes):
                    assert await proc.stop() == 0, proc.stderr()
    finally:
        for proc in processes:
            await proc.stop()
    for proc in processes:
        assert "Traceback" not in proc.stderr(), proc.stderr()
    print("\nthe operator's path, step by step:\n" + steps.report())


@contextlib.asynccontextmanager
async def bot_side(tmp_path: Path, db_url: str) -> AsyncIterator[tuple[Services, Heard]]:
    """The bot's services in this process, without an engine (what a slash command calls),
    listening to the job events."""
    settings = service_settings(tmp_path / "here", database_url=db_url, run_worker=False)
    database = Database.from_url(db_url)
    services = await build_services(settings, database, None)
    try:
        heard = Heard(services)
        await services.events.start()
        yield services, heard
    finally:
        await services.aclose()
        await database.dispose()
