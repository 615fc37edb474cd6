"""Scale-out of the job queue: throughput and wake-up latency with 1, 2, 4, 8 worker processes.

    python -m bench.scaleout --out bench/results            # 1 2 4 8 workers, 0.25 s renders
    python -m bench.scaleout --quick --out /tmp/bench       # seconds: checks that it runs

Every worker is a process of its own (``python -m bench.scaleout_worker``) running the real job
runtime on PostgreSQL (``build_services`` + ``Services.start``: the LISTEN/NOTIFY listener and
the job loop, one slot each) with ``FixedTimeEngine``, whose render is a fixed sleep: the
figures measure the queue and the runtime (claim, lease, outcome, events), not the CPU. The
controller (this process) plays the bot: services without an engine (engine facts read from
the ``workers`` table), ``RenderService.request`` for every job, one avatar per member.

Per worker count, with the workers started and ready:

1. warm-up: a few jobs per worker (first connections, first queries);
2. wake-up latency: one job at a time, every worker idle (a pause before each enqueue), the
   next only after the previous finished; latency = the job row's ``started_at - created_at``
   (both stamped by processes on this machine: the controller at enqueue, the worker at claim);
3. throughput: ``jobs_per_worker x N`` jobs enqueued one after another as fast as the controller
   can; jobs/s = jobs / (first enqueue → the controller hearing the last ``finished`` event),
   repeated, median taken. Speedup = jobs/s at N ÷ jobs/s at 1.

Targets: throughput at 8 workers ≥ 7x one worker; median enqueue-to-start latency ≤ 100 ms on
an idle worker. Results: ``<out>/scaleout-cpu.json`` (everything, machine included) and a
readable ``.md`` generated from it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.scaleout_processes import (
    CpuSnapshot,
    WorkerProcess,
    admin_sql,
    fresh_database,
    start_workers,
    stop_workers,
    throwaway_postgres,
)
from bench.scaleout_report import (
    build_document,
    configure_logging,
    machine_info,
    note_end_load,
    write_results,
)
from bench.scaleout_worker import FixedTimeEngine, bench_settings
from bot.services.container import Services, build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.events import JobEvent, JobEventKind
from bot.services.results import RenderOptions
from db.models import RenderJob
from db.session import Database
from kinds import FINAL_STATUSES, JobStatus

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
GUILD = 7000
CHANNEL = 7001
FIRST_USER = 10_001
AVATAR = "Bench"


@dataclass(frozen=True)
class RunConfig:
    """What one benchmark run does (see the module docstring)."""

    workers: tuple[int, ...] = (1, 2, 4, 8)
    render_seconds: float = 0.25
    jobs_per_worker: int = 40
    repeats: int = 3
    latency_samples: int = 30
    # Idle time before each latency sample: every worker is back waiting on its wake-up.
    latency_gap_seconds: float = 0.2
    warmup_per_worker: int = 2
    users: int = 16
    ready_timeout_seconds: float = 120.0


# -- arguments --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, nargs="+", default=list(defaults.workers))
    parser.add_argument(
        "--render-seconds", type=float, default=defaults.render_seconds, help="one render's sleep"
    )
    parser.add_argument(
        "--jobs-per-worker",
        type=int,
        default=defaults.jobs_per_worker,
        help="throughput jobs per worker (x N per run)",
    )
    parser.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="throughput runs per worker count"
    )
    parser.add_argument("--latency-samples", type=int, default=defaults.latency_samples)
    parser.add_argument(
        "--latency-gap", type=float, default=defaults.latency_gap_seconds, help="seconds idle"
    )
    parser.add_argument(
        "--users", type=int, default=defaults.users, help="members, one avatar each"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("AVATARBOT_TEST_POSTGRES_URL"),
        help="a postgresql+asyncpg:// server URL to create the database on (default: "
        "$AVATARBOT_TEST_POSTGRES_URL, else a throwaway cluster via scripts/pg-throwaway.sh)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default=None, help="file name stem (default scaleout-cpu)")
    parser.add_argument(
        "--quick", action="store_true", help="1 and 2 workers, few short jobs: checks that it runs"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.render_seconds, args.jobs_per_worker = [1, 2], 0.05, 5
        args.repeats, args.latency_samples, args.latency_gap, args.users = 1, 5, 0.1, 4
    if args.stem is None:
        args.stem = "scaleout-cpu" + ("-quick" if args.quick else "")
    return args


def config_of(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        workers=tuple(args.workers),
        render_seconds=args.render_seconds,
        jobs_per_worker=args.jobs_per_worker,
        repeats=args.repeats,
        latency_samples=args.latency_samples,
        latency_gap_seconds=args.latency_gap,
        users=args.users,
    )


# -- the controller ---------------------------------------------------------------------------


class Finishes:
    """When the controller heard each job's ``finished`` event (perf_counter seconds); jobs
    whose event never came are found by polling the database (counted: should be none)."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self.at: dict[int, float] = {}
        self.polled = 0
        self._changed = asyncio.Event()

    def on_event(self, job_event: JobEvent) -> None:
        if job_event.kind is JobEventKind.FINISHED:
            self.at.setdefault(job_event.job_id, time.perf_counter())
            self._changed.set()

    async def wait(self, ids: Sequence[int], within: float) -> float:
        """Wait (at most ``within`` seconds) until every job in ``ids`` finished; when the
        last one did."""
        deadline = time.perf_counter() + within
        while True:
            self._changed.clear()
            missing = [i for i in ids if i not in self.at]
            if not missing:
                return max(self.at[i] for i in ids)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(missing)} of {len(ids)} jobs did not finish in time")
            try:
                await asyncio.wait_for(self._changed.wait(), 1.0)
            except TimeoutError:
                await self._poll(missing)

    async def _poll(self, ids: Sequence[int]) -> None:
        from sqlalchemy import select

        async with self._db.begin(readonly=True) as session:
            rows = await session.execute(
                select(RenderJob.id).where(
                    RenderJob.id.in_(ids), RenderJob.status.in_(list(FINAL_STATUSES))
                )
            )
            for (job_id,) in rows:
                if job_id not in self.at:
                    self.at[job_id] = time.perf_counter()
                    self.polled += 1


@dataclass
class JobRow:
    id: int
    status: str
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


async def job_rows(database: Database, ids: Sequence[int]) -> list[JobRow]:
    from sqlalchemy import select

    async with database.begin(readonly=True) as session:
        rows = await session.execute(
            select(
                RenderJob.id,
                RenderJob.status,
                RenderJob.worker_id,
                RenderJob.created_at,
                RenderJob.started_at,
                RenderJob.finished_at,
            ).where(RenderJob.id.in_(list(ids)))
        )
        return [JobRow(*row) for row in rows]


def photo_png(seed: int, side: int = 256) -> bytes:
    """A distinct noise photo that passes intake (the fixed-time engine accepts anything)."""
    import io

    from PIL import Image

    data = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), data).save(out, "PNG")
    return out.getvalue()


def users_of(config: RunConfig) -> list[int]:
    return [FIRST_USER + i for i in range(config.users)]


async def create_avatars(
    url: str, data_dir: Path, render_seconds: float, members: Sequence[tuple[int, int]]
) -> None:
    """One ready avatar (``AVATAR``) per ``(member, guild)``, their encode jobs run in this
    process (no worker yet)."""
    database = Database.from_url(url)
    engine = FixedTimeEngine(render_seconds)
    services = await build_services(
        bench_settings(data_dir, url),
        database,
        engine,
        dispatcher_config=DispatcherConfig(concurrency=0),
    )
    try:
        for user, guild in members:
            files = [(f"{user}.png", photo_png(user))]
            ticket = await services.avatars.create(
                user, guild, AVATAR, "object", files, consent=True
            )
            view = await services.dispatcher.run_job(ticket.job_id)
            if view.status != JobStatus.DONE:
                raise RuntimeError(f"creating the avatar of {user} ended {view.status}")
            await services.avatars.creation_result(ticket.job_id)
    finally:
        await services.aclose()
        await database.dispose()


async def bot_side(url: str, data_dir: Path) -> Services:
    """The bot's side of a benchmark: services without an engine (engine facts from the
    workers table) and with no job loop; the caller disposes of ``services.database``."""
    return await build_services(
        bench_settings(data_dir, url),
        Database.from_url(url),
        None,
        dispatcher_config=DispatcherConfig(concurrency=0),
    )


class Controller:
    """The bot's side: enqueues renders through ``RenderService`` and hears their events."""

    def __init__(self, services: Services, config: RunConfig) -> None:
        self.services = services
        self.config = config
        self.finishes = Finishes(services.database)
        self._users = users_of(config)
        self._count = 0
        services.events.subscribe(self.finishes.on_event)

    async def enqueue(self) -> int:
        user = self._users[self._count % len(self._users)]
        self._count += 1
        ticket = await self.services.renders.request(
            user, GUILD, CHANNEL, AVATAR, f"scene {self._count}", RenderOptions(seed=self._count)
        )
        return ticket.job_id

    def timeout_for(self, jobs: int, workers: int) -> float:
        return 60.0 + 10.0 * jobs * self.config.render_seconds / workers

    async def warm_up(self, workers: int) -> None:
        ids = [await self.enqueue() for _ in range(self.config.warmup_per_worker * workers)]
        await self.finishes.wait(ids, self.timeout_for(len(ids), workers))

    async def latency(self) -> dict[str, Any]:
        ids, call_ms = [], []
        for _ in range(self.config.latency_samples):
            await asyncio.sleep(self.config.latency_gap_seconds)
            started = time.perf_counter()
            job_id = await self.enqueue()
            call_ms.append((time.perf_counter() - started) * 1000)
            ids.append(job_id)
            await self.finishes.wait([job_id], self.timeout_for(1, 1))
        rows = await job_rows(self.services.database, ids)
        latency_ms = [
            (r.started_at - r.created_at).total_seconds() * 1000 for r in rows if r.started_at
        ]
        run_ms = [
            (r.finished_at - r.started_at).total_seconds() * 1000
            for r in rows
            if r.started_at and r.finished_at
        ]
        return {
            "samples": len(ids),
            "done": sum(r.status == JobStatus.DONE for r in rows),
            "enqueue_to_start_ms": percentiles(latency_ms),
            "all_enqueue_to_start_ms": [round(v, 2) for v in latency_ms],
            "request_call_ms": percentiles(call_ms),
            "start_to_finish_ms": percentiles(run_ms),
        }

    async def throughput(self, workers: list[WorkerProcess]) -> dict[str, Any]:
        n = len(workers)
        jobs = self.config.jobs_per_worker * n
        before = await CpuSnapshot.take(workers, self.services.database)
        started = time.perf_counter()
        ids = [await self.enqueue() for _ in range(jobs)]
        enqueued = time.perf_counter() - started
        last = await self.finishes.wait(ids, self.timeout_for(jobs, n))
        wall = last - started
        after = await CpuSnapshot.take(workers, self.services.database)
        cpu = after.since(before, time.perf_counter() - started)
        rows = await job_rows(self.services.database, ids)
        done = [r for r in rows if r.status == JobStatus.DONE]
        per_worker: dict[str, int] = {}
        for r in done:
            per_worker[r.worker_id or "?"] = per_worker.get(r.worker_id or "?", 0) + 1
        db_span = 0.0
        if done:
            first = min(r.created_at for r in rows)
            db_span = (max(r.finished_at or first for r in done) - first).total_seconds()
        return {
            "jobs": jobs,
            "done": len(done),
            "wall_s": round(wall, 3),
            "jobs_per_s": round(jobs / wall, 3),
            "enqueue_all_s": round(enqueued, 3),
            "enqueue_per_s": round(jobs / enqueued, 1) if enqueued else None,
            "db_span_s": round(db_span, 3),
            "jobs_per_worker": sorted(per_worker.values()),
            "workers_that_ran_jobs": len(per_worker),
            "cpu": cpu,
            "worker_cpu_ms_per_job": round(1000 * cpu["workers_cpu_s"] / jobs, 2),
            "postgres_cpu_ms_per_job": round(1000 * cpu["postgres_cpu_s"] / jobs, 2),
            "controller_cpu_ms_per_job": round(1000 * cpu["controller_cpu_s"] / jobs, 2),
        }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else []
    return {
        "median": round(statistics.median(ordered), 2),
        "p90": round(cuts[8] if cuts else ordered[0], 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


async def measure(server_url: str, config: RunConfig) -> dict[str, Any]:
    """The benchmark on a fresh database of the PostgreSQL server at ``server_url``: one
    level per worker count (latency, throughput runs, speedup), plus what was measured on."""
    levels: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="avatarbot-scaleout-") as tmp:
        workdir = Path(tmp)
        logdir = workdir / "logs"
        logdir.mkdir()
        async with fresh_database(server_url) as url:
            setup_started = time.perf_counter()
            members = [(user, GUILD) for user in users_of(config)]
            await create_avatars(url, workdir / "setup", config.render_seconds, members)
            services = await bot_side(url, workdir / "bot")
            database = services.database
            try:
                await services.start(run_loop=False)
                controller = Controller(services, config)
                logger.info("setup took %.1f s", time.perf_counter() - setup_started)
                for n in config.workers:
                    levels.append(await measure_level(controller, url, n, logdir))
                    logger.warning("%d worker(s): %s", n, _brief(levels[-1]))
                polled = controller.finishes.polled
            finally:
                await services.aclose()
                await database.dispose()
            server_version = await admin_sql(server_url, "SHOW server_version")
    base = next((lv for lv in levels if lv["workers"] == 1), None)
    for level in levels:
        level["speedup"] = (
            round(level["jobs_per_s"] / base["jobs_per_s"], 3) if base is not None else None
        )
    return {
        "levels": levels,
        "finishes_found_by_polling": polled,
        "postgresql": server_version,
    }


async def measure_level(controller: Controller, url: str, n: int, logdir: Path) -> dict[str, Any]:
    config = controller.config
    started = time.perf_counter()
    workers = await start_workers(
        n, url, config.render_seconds, logdir, config.ready_timeout_seconds
    )
    startup = time.perf_counter() - started
    try:
        await controller.warm_up(n)
        latency = await controller.latency()
        runs = []
        for _ in range(config.repeats):
            await asyncio.sleep(config.latency_gap_seconds)
            runs.append(await controller.throughput(workers))
    finally:
        await stop_workers(workers)
    rates = [run["jobs_per_s"] for run in runs]
    ideal = n / config.render_seconds
    jobs_per_s = statistics.median(rates)

    def median_of(key: str, inner: str | None = None) -> float:
        values = [run[key][inner] if inner else run[key] for run in runs]
        return round(statistics.median(values), 3)

    return {
        "workers": n,
        "startup_s": round(startup, 2),
        "latency": latency,
        "throughput_runs": runs,
        "jobs_per_s": round(jobs_per_s, 3),
        "jobs_per_s_all": rates,
        "ideal_jobs_per_s": round(ideal, 3),
        "efficiency": round(jobs_per_s / ideal, 3),
        "all_done": all(run["done"] == run["jobs"] for run in runs)
        and latency["done"] == latency["samples"],
        "machine_busy_fraction_median": median_of("cpu", "machine_busy_fraction"),
        "worker_cpu_ms_per_job_median": median_of("worker_cpu_ms_per_job"),
        "postgres_cpu_ms_per_job_median": median_of("postgres_cpu_ms_per_job"),
        "controller_cpu_ms_per_job_median": median_of("controller_cpu_ms_per_job"),
        "worker_exit_codes": [w.exit_code for w in workers],
        "renders_per_worker_process": [w.renders for w in workers],
        "worker_log_problems": log_problems(workers),
    }


def log_problems(workers: Sequence[WorkerProcess], limit: int = 20) -> list[str]:
    """Warnings, errors and tracebacks the workers logged (none expected)."""
    found: list[str] = []
    for worker in workers:
        try:
            text = worker.log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if any(mark in line for mark in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
                found.append(line[:300])
    return found[:limit]


def _brief(level: dict[str, Any]) -> str:
    lat = level["latency"]["enqueue_to_start_ms"]
    return (
        f"{level['jobs_per_s']:.2f} jobs/s (runs {level['jobs_per_s_all']}), "
        f"latency median {lat.get('median')} ms p90 {lat.get('p90')} ms"
    )


async def run_on(server_url: str, config: RunConfig) -> dict[str, Any]:
    machine = machine_info()  # the load average before the run
    result = await measure(server_url, config)
    note_end_load(machine)
    return build_document(asdict(config), machine, result)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    config = config_of(args)
    if args.pg_url:
        document = asyncio.run(run_on(args.pg_url, config))
    else:
        with throwaway_postgres() as server_url:
            document = asyncio.run(run_on(server_url, config))
    path = write_results(args.out, args.stem, document)
    print(path.with_suffix(".md").read_text())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
