"""A worker process SIGKILLed mid-render: after a restart the job completes (or is refunded),
with nothing lost and nothing counted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from bot.services.container import build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.ports import EnginePort
from db.migrate import upgrade
from db.models import JobOutput, LedgerEntry, UsageLedger
from db.session import Database
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings

REPO = Path(__file__).resolve().parents[2]


async def test_sigkill_mid_render_then_restart(
    tmp_path: Path, tiny_engine_port: EnginePort
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    database = Database.from_url(url)
    await upgrade(database)
    settings = service_settings(tmp_path)
    services = await build_services(settings, database, tiny_engine_port)
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")

    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.services.crash_worker", url, str(tmp_path), "60"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Mid-render: running, and the worker has recorded progress with a lease renewal.
        for _ in range(1200):
            view = await services.jobs.view(ticket.job_id)
            if view.status == "running" and view.progress > 0:
                break
            assert victim.poll() is None, "the worker died on its own"
            await asyncio.sleep(0.05)  # poll: the worker is another process (SIGKILLed below)
        else:
            raise AssertionError("the worker never started rendering")
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    stuck = await services.jobs.view(ticket.job_id)
    assert (stuck.status, stuck.attempts) == ("running", 1)

    # The embedded worker restarts; it is the queue's only worker, so it adopts the job.
    restarted = await build_services(
        settings,
        database,
        tiny_engine_port,
        dispatcher_config=DispatcherConfig(exclusive=True, poll_seconds=0.1, reap_seconds=1),
    )
    finished = asyncio.Event()
    restarted.events.subscribe(
        lambda e: finished.set() if (e.kind, e.job_id) == ("finished", ticket.job_id) else None
    )
    await restarted.start()
    try:
        await asyncio.wait_for(finished.wait(), 120)
        done = await restarted.jobs.view(ticket.job_id)
    finally:
        await restarted.aclose()
    assert (done.status, done.attempts, done.output_count) == ("done", 2, 1)
    async with database.begin(readonly=True) as session:
        ledger = (await session.execute(select(UsageLedger.entry, UsageLedger.job_id))).all()
        outputs = (await session.scalars(select(JobOutput.job_id))).all()
    assert [(LedgerEntry(e).value, j) for e, j in ledger] == [("reserve", ticket.job_id)]
    assert outputs == [ticket.job_id]
    assert (await restarted.quotas.usage(GUILD, 7)).used == 1
    await database.dispose()
