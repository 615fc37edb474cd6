"""`avatarbot worker` started while PostgreSQL is down waits for it, with one log line when
the database is unreachable and one when it is back, then claims jobs (issue 23). It used to
exit 1 within seconds.

The test runs its own throwaway PostgreSQL (scripts/pg-throwaway.sh), since it stops and
starts the server; the worker is a subprocess, as an operator runs it (the harness of
tests/cli/test_clean_stop.py: its log in a file, polled with bounded waits)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import JobAttempt, RenderJob
from db.session import Database
from tests.cli.test_clean_stop import (
    EXIT_TIMEOUT,
    REPO,
    START_TIMEOUT,
    Avatarbot,
    subprocess_env,
    wait_until,
)
from tests.fixtures.databases import REQUIRE_POSTGRES_ENV

SCRIPT = REPO / "scripts" / "pg-throwaway.sh"


def _pg_ctl() -> list[str] | None:
    """pg_ctl (run as the postgres user when we are root, as the script does), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        return None
    return [*(["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []), str(found[-1])]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A throwaway PostgreSQL cluster that can be stopped and started again."""

    def __init__(self, pg_ctl: list[str]) -> None:
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="avatarbot-pgwait-", dir="/tmp"))
        self.port = _free_port()
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", str(self.dir), str(self.port)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        self.url = started.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        subprocess.run(
            [*self.pg_ctl, "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=True,
        )

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        data, log = str(self.dir / "data"), str(self.dir / "log")
        subprocess.run(
            [*self.pg_ctl, "-D", data, "-w", "-l", log, "-o", options, "start"],
            capture_output=True,
            timeout=60,
            check=True,
        )

    def remove(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.dir)], timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[Server]:
    pg_ctl = _pg_ctl()
    if pg_ctl is None:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail("PostgreSQL is required but pg_ctl is missing")
        pytest.skip("no PostgreSQL binaries")
    made = Server(pg_ctl)
    try:
        yield made
    finally:
        made.remove()


async def _claims(url: str, worker: Avatarbot) -> None:
    """Enqueue a render whose avatar is gone, and wait until the worker claimed it: its
    attempt row appears (the job then fails, refunded: there is nothing to render)."""
    database = Database.from_url(url)
    try:
        async with database.begin() as session:
            job = RenderJob(user_id=1, guild_id=1, prompt="p", seed=1, settings={})
            session.add(job)
            await session.flush()
            job_id = job.id

        async def claimed() -> bool:
            async with database.begin(readonly=True) as session:
                attempts = await session.scalar(
                    select(func.count())
                    .select_from(JobAttempt)
                    .where(JobAttempt.job_id == job_id, JobAttempt.worker_id.is_not(None))
                )
            return bool(attempts)

        await wait_until("the claim", claimed, worker, START_TIMEOUT)
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_worker_started_while_postgres_is_down_waits_then_claims(
    tmp_path: Path, server: Server
) -> None:
    server.stop()
    env = subprocess_env(tmp_path, server.url, AVATARBOT_OPS__LISTEN="off")
    worker = Avatarbot(tmp_path, ["worker", "--allow-noise"], env)
    try:
        await _waits_then_claims(worker, server)
    finally:
        worker.kill()


async def _waits_then_claims(worker: Avatarbot, server: Server) -> None:
    """The worker logs the outage once, comes up once the server is back, and claims."""

    async def logged(text: str) -> bool:
        return text in worker.stderr()

    await wait_until(
        "the unreachable line",
        lambda: logged("database unreachable, retrying"),
        worker,
        START_TIMEOUT,
    )
    await asyncio.to_thread(server.start)
    await wait_until(
        "the worker's start", lambda: logged("running; SIGTERM"), worker, START_TIMEOUT
    )
    await _claims(server.url, worker)
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait_exit(EXIT_TIMEOUT) == 0
    log = worker.stderr()
    # One line per change of state, however many tries the outage took.
    assert log.count("database unreachable") == 1, log
    assert log.count("database reachable") == 1, log
    assert "Traceback" not in log
