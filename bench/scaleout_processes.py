"""The scale-out benchmark's processes: a throwaway PostgreSQL, fresh databases, the worker
processes (``python -m bench.scaleout_worker``), and CPU accounting from Linux's /proc."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scaleout_worker import READY, STOPPED
from db.session import Database

logger = logging.getLogger("bench.scaleout")
REPO = Path(__file__).resolve().parents[1]
PG_SCRIPT = REPO / "scripts" / "pg-throwaway.sh"


# -- PostgreSQL -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgCluster:
    """A throwaway PostgreSQL cluster (scripts/pg-throwaway.sh layout: ``<workdir>/data``,
    socket and log in ``workdir``) that can be stopped and started again in place: the
    soak's database outages (bench/soak.py)."""

    workdir: Path
    port: int
    url: str

    def _pg_ctl(self, *args: str) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("pg_ctl not found under /usr/lib/postgresql")
        # pg-throwaway.sh runs the server as the postgres user when we are root.
        runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*runas, str(bins[-1]), "-D", str(self.workdir / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions ended cleanly; ``immediate``: like a crash)."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def start(self) -> None:
        """Start it again with the options pg-throwaway.sh gave it."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.workdir} "
            "-c fsync=off -c max_connections=300"
        )
        self._pg_ctl("-w", "-l", str(self.workdir / "log"), "-o", options, "start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def throwaway_cluster(port: int | None = None) -> Iterator[PgCluster]:
    """A PostgreSQL cluster of our own (scripts/pg-throwaway.sh) on ``port`` (default: a free
    one), removed afterwards. Raises ``RuntimeError`` when it cannot start (no binaries)."""
    workdir = tempfile.mkdtemp(prefix="avatarbot-scaleout-pg-", dir="/tmp")
    port = port or free_port()
    result = subprocess.run(
        ["bash", str(PG_SCRIPT), "start", workdir, str(port)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"pg-throwaway.sh failed: {result.stderr.strip()[-2000:]}")
    try:
        yield PgCluster(Path(workdir), port, result.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["bash", str(PG_SCRIPT), "stop", workdir], capture_output=True, timeout=120)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster of our own (scripts/pg-throwaway.sh); yields its server URL."""
    try:
        with throwaway_cluster() as cluster:
            yield cluster.url
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc


def _dsn(url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def admin_sql(server_url: str, sql: str) -> str | None:
    import asyncpg

    conn = await asyncpg.connect(_dsn(server_url))
    try:
        if sql.lstrip().upper().startswith(("SHOW", "SELECT")):
            value = await conn.fetchval(sql)
            return None if value is None else str(value)
        await conn.execute(sql)
        return None
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> Any:
    """A new database on the server, migrated to head; dropped afterwards. Yields its URL."""
    from sqlalchemy.engine import make_url

    from db.migrate import upgrade

    name = f"scaleout_{secrets.token_hex(4)}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        await upgrade(url)
        yield url
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- worker processes -------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    log: Path
    worker_id: str = ""
    renders: int | None = None
    exit_code: int | None = None


async def start_worker(
    url: str,
    render_seconds: float,
    log: Path,
    extra_args: Sequence[str] = (),
    module: str = "bench.scaleout_worker",
) -> WorkerProcess:
    """Start one worker process (``python -m module URL RENDER_SECONDS *extra_args``, its
    stderr to ``log``, its stdin a pipe); not yet ready (see ``wait_ready``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            url,
            repr(render_seconds),
            *extra_args,
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    return WorkerProcess(process, log)


async def wait_ready(worker: WorkerProcess) -> None:
    """Read the worker's output up to its ready line (``RuntimeError`` if it exits first)."""
    assert worker.process.stdout is not None
    while True:
        line = (await worker.process.stdout.readline()).decode()
        if not line:
            worker.exit_code = await worker.process.wait()
            tail = worker.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"a worker exited before it was ready:\n{tail}")
        if line.startswith(READY):
            worker.worker_id = line.split()[1]
            return


async def start_workers(
    count: int, url: str, render_seconds: float, logdir: Path, within: float
) -> list[WorkerProcess]:
    """Start ``count`` worker processes and wait for each one's ready line."""
    started = [
        await start_worker(
            url, render_seconds, logdir / f"worker-{count}-{i}-{secrets.token_hex(2)}.log"
        )
        for i in range(count)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(wait_ready(w) for w in started)), within)
    except BaseException:
        await stop_workers(started)
        raise
    return started


async def stop_workers(workers: Sequence[WorkerProcess], within: float = 60.0) -> None:
    """SIGTERM each worker (a clean stop), then read its last line and exit status."""
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            assert worker.process.stdout is not None
            rest = await asyncio.wait_for(worker.process.stdout.read(), within)
            worker.exit_code = await asyncio.wait_for(worker.process.wait(), within)
        except TimeoutError:
            logger.warning("worker %s did not stop; killing it", worker.process.pid)
            worker.process.kill()
            worker.exit_code = await worker.process.wait()
            continue
        for line in rest.decode().splitlines():
            if line.startswith(STOPPED):
                worker.renders = int(line.split()[1])


# -- CPU accounting (Linux /proc) -------------------------------------------------------------


def _system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def _process_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_pids(database: Database) -> list[int]:
    """The PostgreSQL server's own processes (backends and background processes), not those
    of other clusters on the machine."""
    from sqlalchemy import text

    async with database.begin(readonly=True) as session:
        rows = await session.execute(text("SELECT pid FROM pg_stat_activity"))
        return [int(pid) for (pid,) in rows]


def _cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    return {pid: _process_cpu_seconds(pid) for pid in pids}


def _cpu_delta(after: dict[int, float], before: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second one."""
    return sum(max(seconds - before.get(pid, 0.0), 0.0) for pid, seconds in after.items())


@dataclass
class CpuSnapshot:
    system: tuple[float, float]
    workers: dict[int, float]
    postgres: dict[int, float]
    controller: float

    @classmethod
    async def take(cls, workers: Sequence[WorkerProcess], database: Database) -> CpuSnapshot:
        postgres = await server_pids(database)
        return cls(
            system=_system_cpu(),
            workers=_cpu_by_pid([w.process.pid for w in workers]),
            postgres=_cpu_by_pid(postgres),
            controller=time.process_time(),
        )

    def since(self, before: CpuSnapshot, wall: float) -> dict[str, float]:
        busy = self.system[0] - before.system[0]
        total = self.system[1] - before.system[1]
        return {
            "machine_busy_fraction": round(busy / total, 3) if total else 0.0,
            "workers_cpu_s": round(_cpu_delta(self.workers, before.workers), 3),
            "postgres_cpu_s": round(_cpu_delta(self.postgres, before.postgres), 3),
            "controller_cpu_s": round(self.controller - before.controller, 3),
            "wall_s": round(wall, 3),
        }
