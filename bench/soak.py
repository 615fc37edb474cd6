"""Fault-injection soak of the job runtime on PostgreSQL (issue 23): an operator's bad day.

    python -m bench.soak --out bench/results             # 10,000 jobs, 4 workers, faults
    python -m bench.soak --quick --out /tmp/bench        # a few hundred jobs, well under a minute

A throwaway PostgreSQL cluster of its own (scripts/pg-throwaway.sh; ``--pg-port``), since the
soak stops and starts it. K worker processes (``python -m bench.scaleout_worker``: the real job
runtime, one slot each, ``FixedTimeEngine`` whose render is a fixed sleep) render the jobs; this
process plays the bot (services without an engine: ``RenderService.request``, ``cancel``,
``PrivacyService.forget_me``) for members with one avatar each in several guilds, keeping at
most ``queue_depth`` jobs active, and a supervisor restarts every worker that exits (a start
that fails, the database being down, is retried a second later). Faults while the jobs run:

- a SIGKILL of a random worker every ~``kill_every_s`` (±30 %), and a SIGTERM every
  ~``term_every_s``, plus one of each at set fractions of the jobs enqueued; all restarted;
- PostgreSQL stopped for a few seconds (``pg_ctl stop -m fast`` or ``immediate``) and started
  again, at set fractions of the jobs enqueued;
- every backend of the soak's database terminated (``pg_terminate_backend``), likewise;
- a cancel every ~``cancel_every_s``, of a queued and of a running job in turn;
- forget-me of members (one per guild at most) mid-run, with jobs queued and running.

Then enqueueing stops, the faults stop, and the queue drains (bounded); the workers stop and
the checks run (bench/soak_checks.py): none lost, none rendered twice, no finished render
redone, no failure but the legitimate one, ledger exact, nothing stuck. The soak reports what
it finds; it never retries around a defect. Results: ``<out>/soak-cpu.json`` and its ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import soak_checks
from bench.scaleout import AVATAR, bot_side, create_avatars
from bench.scaleout_processes import (
    PgCluster,
    WorkerProcess,
    admin_sql,
    fresh_database,
    start_worker,
    throwaway_cluster,
    wait_ready,
)
from bench.scaleout_report import configure_logging, machine_info, note_end_load, write_results
from bench.scaleout_worker import STOPPED
from bench.soak_report import build_document, markdown
from bot.services.container import Services
from bot.services.results import RenderOptions
from db.notify import asyncpg_dsn

logger = logging.getLogger("bench.soak")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
FIRST_GUILD = 7100
CHANNEL = 7001
FIRST_USER = 20_001


@dataclass(frozen=True)
class Outage:
    """PostgreSQL stopped once ``at`` of the jobs were enqueued, for ``seconds``."""

    at: float
    seconds: float
    mode: str  # pg_ctl stop mode: "fast" or "immediate"


@dataclass(frozen=True)
class SoakConfig:
    jobs: int = 10_000
    workers: int = 4
    render_seconds: float = 0.1
    members: int = 26
    guilds: int = 3
    queue_depth: int = 150
    kill_every_s: float = 20.0
    term_every_s: float = 60.0
    cancel_every_s: float = 2.0
    outages: tuple[Outage, ...] = (Outage(0.3, 8.0, "fast"), Outage(0.65, 7.0, "immediate"))
    # A SIGKILL and a SIGTERM at set fractions too, so that even a short run has both.
    signals_at: tuple[tuple[float, str], ...] = ((0.1, "SIGKILL"), (0.35, "SIGTERM"))
    terminations: tuple[float, ...] = (0.2, 0.5, 0.85)
    forget_me: tuple[float, ...] = (0.4, 0.75)
    lease_seconds: float = 30.0
    reap_seconds: float = 5.0
    drain_timeout_s: float = 300.0
    # Bounds: enqueueing gives up after this (the run is reported as cut short), a slot
    # after this many failed starts in a row.
    enqueue_timeout_s: float = 3600.0
    ready_timeout_s: float = 60.0
    start_tries: int = 60
    seed: int = 23


QUICK = SoakConfig(
    jobs=200,
    workers=3,
    render_seconds=0.1,
    members=9,
    queue_depth=40,
    kill_every_s=10.0,
    term_every_s=20.0,
    cancel_every_s=1.0,
    outages=(Outage(0.45, 2.0, "fast"),),
    terminations=(0.25, 0.75),
    forget_me=(0.6,),
    lease_seconds=6.0,
    reap_seconds=2.0,
    drain_timeout_s=60.0,
    enqueue_timeout_s=180.0,
)


# -- the worker processes ---------------------------------------------------------------------


@dataclass
class WorkerStart:
    """One worker process's life."""

    number: int
    slot: int
    pid: int
    worker_id: str
    render_log: str
    log: str
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    ended_by: str | None = None  # the signal the soak sent; None: it exited on its own
    renders: int | None = None


class Workers:
    """K slots, each keeping one worker process running: when its process exits (a signal,
    or on its own) the slot starts another. A start that fails (PostgreSQL down) is retried
    a second later, like a service manager would."""

    def __init__(self, url: str, config: SoakConfig, workdir: Path) -> None:
        self._url = url
        self._config = config
        self._dir = workdir
        self.starts: list[WorkerStart] = []
        self.failed_starts = 0
        self.abandoned_slots = 0
        self._current: dict[int, tuple[WorkerProcess, WorkerStart]] = {}
        self._signalled: dict[int, str] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = [asyncio.Event() for _ in range(config.workers)]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._keep(slot), name=f"slot-{slot}")
            for slot in range(self._config.workers)
        ]
        await asyncio.wait_for(
            asyncio.gather(*(e.wait() for e in self._ready)), self._config.ready_timeout_s * 2
        )

    def live(self) -> list[int]:
        """Slots with a ready worker that no signal is on its way to."""
        return [s for s in self._current if s not in self._signalled]

    def signal(self, slot: int, signum: signal.Signals) -> WorkerStart | None:
        current = self._current.get(slot)
        if current is None or slot in self._signalled or self._stopping:
            return None
        worker, start = current
        self._signalled[slot] = signum.name
        worker.process.send_signal(signum)
        return start

    async def stop(self) -> None:
        """SIGTERM every worker (a clean stop) and wait for the slots to end."""
        self._stopping = True
        for slot, (worker, _) in list(self._current.items()):
            self._signalled.setdefault(slot, "stop")
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*self._tasks)

    async def _keep(self, slot: int) -> None:
        while not self._stopping:
            started = await self._start(slot)
            if started is None:
                return
            worker, start = started
            self._current[slot] = started
            self._ready[slot].set()
            if self._stopping:  # ready only after ``stop`` signalled the others
                self._signalled[slot] = "stop"
                worker.process.send_signal(signal.SIGTERM)
            start.exit_code = await worker.process.wait()
            assert worker.process.stdout is not None
            for line in (await worker.process.stdout.read()).decode().splitlines():
                if line.startswith(STOPPED):
                    start.renders = int(line.split()[1])
            start.ended_at = time.time()
            start.ended_by = self._signalled.pop(slot, None)
            del self._current[slot]

    async def _start(self, slot: int) -> tuple[WorkerProcess, WorkerStart] | None:
        for _ in range(self._config.start_tries):
            if self._stopping:
                return None
            number = len(self.starts) + self.failed_starts + 1
            render_log = self._dir / f"render-{number}.log"
            log = self._dir / f"worker-{number}.log"
            args = ["--render-log", str(render_log), "--lease", repr(self._config.lease_seconds)]
            args += ["--reap", repr(self._config.reap_seconds)]
            worker = await start_worker(self._url, self._config.render_seconds, log, args)
            try:
                await asyncio.wait_for(wait_ready(worker), self._config.ready_timeout_s)
            except (RuntimeError, TimeoutError):
                self.failed_starts += 1
                if worker.process.returncode is None:
                    worker.process.kill()
                await worker.process.wait()
                # A restart delay, as a service manager has: the database may be down.
                await asyncio.sleep(1.0)
                continue
            start = WorkerStart(
                number,
                slot,
                worker.process.pid,
                worker.worker_id,
                str(render_log),
                str(log),
                time.time(),
            )
            self.starts.append(start)
            return worker, start
        logger.error(
            "slot %d: %d starts failed in a row; left empty", slot, self._config.start_tries
        )
        self.abandoned_slots += 1
        return None


# -- the bot's side and the faults ------------------------------------------------------------


@dataclass
class Faults:
    """What was done to the system, for the results."""

    kills: list[soak_checks.Kill] = field(default_factory=list)
    terms: int = 0
    outages: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[datetime] = field(default_factory=list)
    terminations: list[dict[str, Any]] = field(default_factory=list)
    cancels: Counter[str] = field(default_factory=Counter)
    forget_me: list[dict[str, Any]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)


class Soak:
    def __init__(
        self,
        config: SoakConfig,
        cluster: PgCluster,
        database_name: str,
        services: Services,
        workers: Workers,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.database_name = database_name
        self.services = services
        self.workers = workers
        self.rng = random.Random(config.seed)
        self.members = members_of(config)
        self.active = [user for user, _ in self.members]
        self.guild_of = dict(self.members)
        self.forgotten: list[int] = []
        self.accepted: dict[int, int] = {}
        self.enqueued = 0
        self.timed_out = False
        self.depth = 0
        self.faults = Faults()
        self.done = asyncio.Event()
        self._enqueue_lock = asyncio.Lock()
        self._enqueued_more = asyncio.Event()
        self._next_seed = 1_000_000

    # -- load ------------------------------------------------------------------------------

    async def enqueue_all(self) -> None:
        deadline = time.perf_counter() + self.config.enqueue_timeout_s
        while self.enqueued < self.config.jobs:
            if time.perf_counter() > deadline:
                logger.error("enqueueing timed out after %d jobs", self.enqueued)
                self.timed_out = True
                return
            if self.depth >= self.config.queue_depth:
                await asyncio.sleep(0.05)  # poll: the depth below is read from the database
                continue
            async with self._enqueue_lock:
                member = self.rng.choice(self.active)
                self._next_seed += 1
                seed = self._next_seed
                try:
                    ticket = await self.services.renders.request(
                        member,
                        self.guild_of[member],
                        CHANNEL,
                        AVATAR,
                        f"soak {seed}",
                        RenderOptions(seed=seed),
                    )
                except Exception as exc:  # the database is down, or a connection was cut
                    self.faults.refused[type(exc).__name__] += 1
                    ticket = None
            if ticket is None:
                await asyncio.sleep(0.2)
                continue
            self.accepted[ticket.job_id] = member
            self.enqueued += 1
            self.depth += 1
            self._enqueued_more.set()

    async def watch_depth(self) -> None:
        """Keep ``depth`` (queued + running jobs) current until the end of the drain."""
        while True:
            with contextlib.suppress(Exception):  # down: keep the last reading
                self.depth = await self.active_jobs()
            await asyncio.sleep(0.25)  # poll: events are lost while the database is down

    async def active_jobs(self) -> int:
        async with self.services.database.begin(readonly=True) as session:
            count = await session.scalar(
                text("SELECT count(*) FROM render_jobs WHERE status IN ('queued', 'running')")
            )
            return int(count or 0)

    # -- faults ----------------------------------------------------------------------------

    async def every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` about every ``seconds`` (±30 %) until enqueueing is done."""
        while not self.done.is_set():
            pause = seconds * self.rng.uniform(0.7, 1.3)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), pause)
            if not self.done.is_set():
                await action()

    async def kill(self) -> None:
        slots = self.workers.live()
        if slots:
            start = self.workers.signal(self.rng.choice(slots), signal.SIGKILL)
            if start is not None:
                self.faults.kills.append(
                    soak_checks.Kill(start.number, start.worker_id, time.time())
                )

    async def term(self) -> None:
        slots = self.workers.live()
        if slots and self.workers.signal(self.rng.choice(slots), signal.SIGTERM) is not None:
            self.faults.terms += 1

    async def cancel(self) -> None:
        state = "queued" if sum(self.faults.cancels.values()) % 2 == 0 else "running"
        try:
            async with self.services.database.begin(readonly=True) as session:
                row = (
                    await session.execute(
                        text(
                            "SELECT id, user_id FROM render_jobs WHERE status = :s "
                            "AND kind = 'render' ORDER BY "
                            # A running job: the one started last, a live worker's (a random
                            # one would mostly be a killed worker's, waiting for its lease to
                            # expire, and the cancel would hide the requeue the soak checks).
                            + ("started_at DESC" if state == "running" else "random()")
                            + " LIMIT 1"
                        ),
                        {"s": state},
                    )
                ).first()
            if row is None:
                self.faults.cancels[f"no {state} job"] += 1
                return
            view = await self.services.renders.cancel(int(row[1]), int(row[0]))
            was = "queued" if view.started_at is None else "running"
            self.faults.cancels[f"cancelled while {was}"] += 1
        except Exception as exc:  # it finished first, was erased, or the database blinked
            self.faults.cancels[f"{state}: {type(exc).__name__}"] += 1

    async def milestones(self) -> None:
        """The faults placed at fractions of the jobs enqueued, in order."""
        plan: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        for outage in self.config.outages:
            plan.append((outage.at, lambda o=outage: self.outage(o)))  # type: ignore[misc]
        for at in self.config.terminations:
            plan.append((at, lambda a=at: self.terminate(a)))  # type: ignore[misc]
        for at in self.config.forget_me:
            plan.append((at, self.forget))
        for at, name in self.config.signals_at:
            plan.append((at, self.kill if name == "SIGKILL" else self.term))
        for at, action in sorted(plan, key=lambda p: p[0]):
            while self.enqueued < at * self.config.jobs and not self.done.is_set():
                self._enqueued_more.clear()
                await self._enqueued_more.wait()
            await action()

    async def outage(self, outage: Outage) -> None:
        begun = time.perf_counter()
        await asyncio.to_thread(self.cluster.stop, outage.mode)
        stopped = time.perf_counter()
        await asyncio.sleep(outage.seconds)
        await asyncio.to_thread(self.cluster.start)
        self.faults.restarts.append(datetime.now(UTC))
        self.faults.outages.append(
            {
                "at_fraction": outage.at,
                "mode": outage.mode,
                "stop_s": round(stopped - begun, 2),
                "down_s": round(time.perf_counter() - stopped, 2),
            }
        )
        logger.warning("PostgreSQL was down %.1f s", time.perf_counter() - stopped)

    async def terminate(self, at: float) -> None:
        terminated = await admin_sql(
            self.cluster.url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE pid <> pg_backend_pid() AND datname = '{self.database_name}'",
        )
        self.faults.terminations.append({"at_fraction": at, "terminated": int(terminated or 0)})

    async def forget(self) -> None:
        """Forget-me of a member of a guild nobody was forgotten in yet, with jobs active."""
        guilds_done = {self.guild_of[m] for m in self.forgotten}
        candidates = [m for m in self.active if self.guild_of[m] not in guilds_done]
        if not candidates:
            return
        member = self.rng.choice(candidates)
        async with self._enqueue_lock:  # no request of theirs is in flight from here on
            self.active.remove(member)
        record: dict[str, Any] = {"guild": self.guild_of[member], "errors": []}
        for _ in range(5):
            try:
                report = await self.services.privacy.forget_me(member)
            except Exception as exc:  # a deadlock, or the database blinked: say so, try again
                record["errors"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                await asyncio.sleep(0.5)
                continue
            record.update(
                jobs_erased=report.jobs, ledger_rows_anonymised=report.ledger_rows_anonymised
            )
            break
        self.forgotten.append(member)
        self.faults.forget_me.append(record)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self.watch_depth(), name="depth")
        faults = [
            loop.create_task(self.every(self.config.kill_every_s, self.kill), name="kill"),
            loop.create_task(self.every(self.config.term_every_s, self.term), name="term"),
            loop.create_task(self.every(self.config.cancel_every_s, self.cancel), name="cancel"),
        ]
        milestones = loop.create_task(self.milestones(), name="milestones")
        started = time.perf_counter()
        try:
            await self.enqueue_all()
            await milestones  # an outage in progress ends first
            enqueued = time.perf_counter()
            self.done.set()
            self._enqueued_more.set()
            await asyncio.gather(*faults)
            drained = await self.drain()
        finally:
            self.done.set()
            watcher.cancel()
            for task in (*faults, milestones):
                task.cancel()
            await asyncio.gather(watcher, milestones, *faults, return_exceptions=True)
        end = time.perf_counter()
        return {
            "enqueue_s": round(enqueued - started, 1),
            "drain_s": round(end - enqueued, 1),
            "duration_s": round(end - started, 1),
            "drained": float(drained),
            "enqueue_timed_out": float(self.timed_out),
        }

    async def drain(self) -> bool:
        """Wait (bounded) until no job is queued or running."""
        deadline = time.perf_counter() + self.config.drain_timeout_s
        while time.perf_counter() < deadline:
            with contextlib.suppress(Exception):
                if await self.active_jobs() == 0:
                    return True
            await asyncio.sleep(0.5)  # poll: the workers' progress, in the database
        return False


def code_version() -> dict[str, Any]:
    """The commit the soak ran on and the tracked files changed since (a run on a work tree
    with other work in progress says so)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60
            ).stdout.strip()
        except OSError:
            return ""

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "tracked_files_changed": len(changed.splitlines()),
    }


def members_of(config: SoakConfig) -> list[tuple[int, int]]:
    """(member, guild) pairs: ``members`` spread over ``guilds`` guilds."""
    return [
        (FIRST_USER + i, FIRST_GUILD + 100 * (i % config.guilds)) for i in range(config.members)
    ]


# Lines of the workers' logs worth counting (the issue's symptoms among them).
LOG_MARKS = {
    "task exception never retrieved": re.compile(r"exception was never retrieved"),
    "deadlock detected": re.compile(r"deadlock detected", re.I),
    "requeued: its worker died": re.compile(r"requeued: its worker died"),
    "given up and refunded": re.compile(r"given up and refunded"),
    "ERROR lines": re.compile(r" ERROR "),
    "tracebacks": re.compile(r"^Traceback"),
}


def scan_logs(paths: Sequence[Path]) -> dict[str, Any]:
    """Count ``LOG_MARKS`` in the workers' logs; group their warnings, errors and the last
    line of each traceback (the exception), numbers masked."""
    counts: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for path in paths:
        with contextlib.suppress(OSError):
            in_traceback = False
            for line in path.read_text(errors="replace").splitlines():
                for name, mark in LOG_MARKS.items():
                    if mark.search(line):
                        counts[name] += 1
                if line.startswith("Traceback"):
                    in_traceback = True
                elif in_traceback and line and not line.startswith((" ", "During", "The ")):
                    in_traceback = False
                    groups["raised: " + re.sub(r"\d+", "N", line)[:160]] += 1
                elif " ERROR " in line or " WARNING " in line:
                    # Without the time stamp, so alike lines group together.
                    groups[re.sub(r"\d+", "N", line.split(" ", 2)[-1])[:160]] += 1
    return {
        "counts": {name: counts[name] for name in LOG_MARKS},
        "warnings_and_errors": dict(groups.most_common(25)),
    }


async def run_soak(
    cluster: PgCluster, config: SoakConfig, logs: Path | None = None
) -> dict[str, Any]:
    """The soak on a fresh database of ``cluster``; the results document. The workers' logs
    and render logs are kept in ``logs`` when given (else a temporary directory)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    machine = machine_info()
    code = await asyncio.to_thread(code_version)
    with tempfile.TemporaryDirectory(prefix="avatarbot-soak-") as tmp:
        workdir = Path(tmp)
        if logs is not None:
            await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
        async with fresh_database(cluster.url) as url:
            name = str(make_url(url).database)
            dsn = asyncpg_dsn(make_url(url))
            connection = await asyncpg.connect(dsn)
            try:
                await soak_checks.instrument(connection)
            finally:
                await connection.close()
            setup = time.perf_counter()
            await create_avatars(url, workdir / "setup", config.render_seconds, members_of(config))
            services = await bot_side(url, workdir / "bot")
            database = services.database
            workers = Workers(url, config, logs or workdir)
            try:
                await services.start(run_loop=False)
                soak = Soak(config, cluster, name, services, workers)
                try:
                    await workers.start()
                    logger.warning("setup took %.1f s", time.perf_counter() - setup)
                    timing = await soak.run()
                finally:
                    await workers.stop()
            finally:
                await services.aclose()
                await database.dispose()
            connection = await asyncpg.connect(dsn)
            try:
                seen = await soak_checks.gather(
                    connection,
                    accepted=soak.accepted,
                    forgotten=soak.forgotten,
                    renders=soak_checks.read_render_logs(
                        {s.number: Path(s.render_log) for s in workers.starts}
                    ),
                    kills=soak.faults.kills,
                    lease_seconds=config.lease_seconds,
                )
                gaps = await soak_checks.claim_gaps(connection, soak.faults.restarts)
                version = await connection.fetchval("SHOW server_version")
            finally:
                await connection.close()
            worker_logs = scan_logs([Path(s.log) for s in workers.starts])
    note_end_load(machine)
    checks = soak_checks.run_checks(seen)
    # A run whose worker slot never came back passes nothing; one whose enqueueing hit its
    # time bound (``--max-minutes``) is judged on the jobs it enqueued, and says so.
    checks["verdicts"]["run_complete"] = not workers.abandoned_slots
    # No database fault is injected while a forget-me runs (the milestones run one at a
    # time), so any error of one (a deadlock with a finishing worker) is a defect.
    checks["verdicts"]["forget_me_without_errors"] = all(
        not record["errors"] and "jobs_erased" in record for record in soak.faults.forget_me
    )
    checks["passed"] = all(checks["verdicts"].values())
    for outage, gap in zip(soak.faults.outages, gaps, strict=True):
        outage["first_claim_after_restart_s"] = gap
    return build_document(
        settings=asdict(config),
        code=code,
        machine={**machine, "postgresql": version},
        timing=timing,
        faults={
            "sigkill": len(soak.faults.kills),
            "sigterm": soak.faults.terms,
            "outages": soak.faults.outages,
            "backend_terminations": soak.faults.terminations,
            "cancels": dict(soak.faults.cancels),
            "forget_me": soak.faults.forget_me,
            "requests_refused": dict(soak.faults.refused),
            "worker_starts": len(workers.starts),
            "worker_starts_failed": workers.failed_starts,
            "worker_slots_abandoned": workers.abandoned_slots,
            "worker_exits": dict(
                Counter(f"{s.ended_by or 'on its own'}: {s.exit_code}" for s in workers.starts)
            ),
        },
        checks=checks,
        worker_logs=worker_logs,
    )


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = SoakConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=None, help=f"default {defaults.jobs}")
    parser.add_argument("--workers", type=int, default=None, help=f"default {defaults.workers}")
    parser.add_argument("--render-seconds", type=float, default=None)
    parser.add_argument("--pg-port", type=int, default=None, help="the throwaway server's port")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop enqueueing after this long (then drain and check what was enqueued)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default=None, help="file name stem (default soak-cpu)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the workers' logs here")
    parser.add_argument("--quick", action="store_true", help="a few hundred jobs, seconds")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.stem is None:
        args.stem = "soak-cpu" + ("-quick" if args.quick else "")
    return args


def config_of(args: argparse.Namespace) -> SoakConfig:
    config = QUICK if args.quick else SoakConfig()
    changes = {
        name: value
        for name, value in (
            ("jobs", args.jobs),
            ("workers", args.workers),
            ("render_seconds", args.render_seconds),
            ("seed", args.seed),
            ("enqueue_timeout_s", args.max_minutes and 60 * args.max_minutes),
        )
        if value is not None
    }
    return replace(config, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    config = config_of(args)
    try:
        with throwaway_cluster(args.pg_port) as cluster:
            document = asyncio.run(run_soak(cluster, config, args.logs))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc
    path = write_results(args.out, args.stem, document, markdown)
    print(path.with_suffix(".md").read_text())
    print(f"results: {path}")
    return 0 if document["checks"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
