"""The job queue's ceiling: claims per second with zero-time renders (issue 23).

    python -m bench.queue_ceiling --out bench/results      # 1, 8 and 32 worker loops
    python -m bench.queue_ceiling --quick --out /tmp/bench # seconds: checks that it runs

Every claim is serialised by one PostgreSQL advisory lock (db/queue.py ``CLAIM_LOCK``), so the
queue has a ceiling however many GPUs wait on it. With renders that take no time, the job
runtime does nothing but queue work, and claims/s is that ceiling as this machine sees it:

1. **Worker loops.** Per level, ``jobs`` renders are queued first (``RenderService.request``,
   members with one avatar each), then ``loops`` loops spread over at most ``processes``
   worker processes (``python -m bench.queue_ceiling_worker``) each run
   ``JobDispatcher.run_once`` (claim, zero-time render, outcome: the job loop's own path)
   until the queue is empty; claims/s = jobs / (go → the last process drained). The
   processes' CPU time and the PostgreSQL server's are recorded with it.
2. **The serialised section alone.** One connection runs the claim transaction
   (``queue.claim_next`` and its ``started`` notification, then commit: exactly what the
   advisory lock covers) back to back on a full queue; 1 / its median time is the most claims
   per second one PostgreSQL can hand out whatever the number of workers.

GPUs one PostgreSQL can feed at ``r`` seconds per render (one job per render): claims/s × r.
Results: ``<out>/queue-ceiling-cpu.json`` and its ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.scaleout import AVATAR, bot_side, create_avatars, percentiles
from bench.scaleout_processes import (
    CpuSnapshot,
    WorkerProcess,
    admin_sql,
    fresh_database,
    start_worker,
    stop_workers,
    throwaway_cluster,
    wait_ready,
)
from bench.scaleout_report import configure_logging, machine_info, note_end_load, write_results
from bot.services.container import Services
from bot.services.events import JobEventKind
from bot.services.results import RenderOptions
from db import queue
from db.types import utcnow

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
GUILD = 7500
CHANNEL = 7501
FIRST_USER = 30_001
RENDER_SECONDS_FOR_GPUS = (1.0, 5.0)


@dataclass(frozen=True)
class CeilingConfig:
    loops: tuple[int, ...] = (1, 8, 32)
    # Worker processes at most per level: the loops are spread evenly over them. Two on this
    # 2-core machine (PostgreSQL and the controller share the cores).
    processes: int = 2
    jobs: int = 600
    users: int = 16
    claim_samples: int = 300
    # Queue depths the claim transaction is timed at (its fair-order query reads every
    # queued row's member's last start).
    claim_depths: tuple[int, ...] = (100, 1000)
    ready_timeout_s: float = 120.0
    level_timeout_s: float = 600.0


QUICK = CeilingConfig(loops=(1, 4), jobs=40, users=4, claim_samples=20, claim_depths=(40,))


async def enqueue(services: Services, config: CeilingConfig, count: int, first: int) -> float:
    """Queue ``count`` renders round-robin over the members; seconds it took."""
    started = time.perf_counter()
    for i in range(first, first + count):
        await services.renders.request(
            FIRST_USER + i % config.users,
            GUILD,
            CHANNEL,
            AVATAR,
            f"ceiling {i}",
            RenderOptions(seed=i),
        )
    return time.perf_counter() - started


async def measure_level(
    services: Services, url: str, config: CeilingConfig, loops: int, logdir: Path, first: int
) -> dict[str, Any]:
    processes = min(loops, config.processes)
    per_process = [
        loops // processes + (1 if i < loops % processes else 0) for i in range(processes)
    ]
    workers: list[WorkerProcess] = []
    for i, n in enumerate(per_process):
        log = logdir / f"ceiling-{loops}-{i}.log"
        args = ["--loops", str(n)]
        workers.append(await start_worker(url, 0.0, log, args, module="bench.queue_ceiling_worker"))
    try:
        await asyncio.wait_for(
            asyncio.gather(*(wait_ready(w) for w in workers)), config.ready_timeout_s
        )
        # Queued once the workers are registered (requests are checked against their facts).
        enqueue_s = await enqueue(services, config, config.jobs, first)
        before = await CpuSnapshot.take(workers, services.database)
        started = time.perf_counter()
        for worker in workers:
            assert worker.process.stdin is not None
            worker.process.stdin.write(b"go\n")
        drained = await asyncio.wait_for(
            asyncio.gather(*(_drained(w) for w in workers)), config.level_timeout_s
        )
        wall = time.perf_counter() - started
        after = await CpuSnapshot.take(workers, services.database)
        for worker in workers:
            assert worker.process.stdin is not None
            worker.process.stdin.write(b"exit\n")
        await asyncio.wait_for(
            asyncio.gather(*(w.process.wait() for w in workers)), config.ready_timeout_s
        )
    finally:
        await stop_workers(workers)
    cpu = after.since(before, wall)
    jobs = sum(n for n, _ in drained)
    return {
        "loops": loops,
        "processes": processes,
        "loops_per_process": per_process,
        "jobs": jobs,
        "queued_before": config.jobs,
        "enqueue_per_s": round(config.jobs / enqueue_s, 1),
        "wall_s": round(wall, 3),
        "claims_per_s": round(jobs / wall, 1),
        "worker_cpu_ms_per_job": round(1000 * cpu["workers_cpu_s"] / max(jobs, 1), 2),
        "postgres_cpu_ms_per_job": round(1000 * cpu["postgres_cpu_s"] / max(jobs, 1), 2),
        "machine_busy_fraction": cpu["machine_busy_fraction"],
        "worker_exit_codes": [w.exit_code for w in workers],
    }


async def _drained(worker: WorkerProcess) -> tuple[int, float]:
    assert worker.process.stdout is not None
    while True:
        line = (await worker.process.stdout.readline()).decode()
        if not line:
            raise RuntimeError(f"a ceiling worker exited early: {worker.log}")
        if line.startswith("DRAINED"):
            _, jobs, cpu = line.split()
            return int(jobs), float(cpu)


async def claim_section(
    services: Services, config: CeilingConfig, depth: int, first: int
) -> dict[str, Any]:
    """The claim transaction alone, back to back on one connection, on a queue topped up to
    ``depth`` jobs (what the advisory lock serialises); it claims at most half of them."""
    async with services.database.begin(readonly=True) as session:
        queued = int(
            await session.scalar(text("SELECT count(*) FROM render_jobs WHERE status = 'queued'"))
            or 0
        )
    await enqueue(services, config, max(depth - queued, 0), first)
    times_ms: list[float] = []
    before = await CpuSnapshot.take([], services.database)
    begun = time.perf_counter()
    for _ in range(min(config.claim_samples, depth // 2)):
        started = time.perf_counter()
        async with services.database.begin() as session:
            job = await queue.claim_next(
                session, worker_id="ceiling-probe", lease_seconds=3600.0, now=utcnow()
            )
            if job is None:
                break
            await services.events.publish(session, JobEventKind.STARTED, job.id)
        times_ms.append((time.perf_counter() - started) * 1000)
    cpu = (await CpuSnapshot.take([], services.database)).since(before, time.perf_counter() - begun)
    median = statistics.median(times_ms)
    # CPU spent per claim while the lock is held: this process (SQLAlchemy, asyncpg) and the
    # PostgreSQL server. On cores of their own, the lock's hold time comes near their sum
    # (plus loopback round trips); on this shared machine the wall time adds waiting.
    client_ms = 1000 * cpu["controller_cpu_s"] / len(times_ms)
    server_ms = 1000 * cpu["postgres_cpu_s"] / len(times_ms)
    return {
        "samples": len(times_ms),
        "queued_at_start": depth,
        "claim_transaction_ms": percentiles(times_ms),
        "ceiling_claims_per_s": round(1000 / median, 1),
        "client_cpu_ms_per_claim": round(client_ms, 2),
        "postgres_cpu_ms_per_claim": round(server_ms, 2),
        "ceiling_claims_per_s_dedicated_cores": round(1000 / (client_ms + server_ms), 1),
    }


def gpus_fed(claims_per_s: float) -> dict[str, int]:
    return {f"{r:g}s": int(claims_per_s * r) for r in RENDER_SECONDS_FOR_GPUS}


async def run_on(server_url: str, config: CeilingConfig) -> dict[str, Any]:
    machine = machine_info()
    levels: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="avatarbot-ceiling-") as tmp:
        workdir = Path(tmp)
        async with fresh_database(server_url) as url:
            members = [(FIRST_USER + i, GUILD) for i in range(config.users)]
            await create_avatars(url, workdir / "setup", 0.0, members)
            services = await bot_side(url, workdir / "bot")
            try:
                first = 0
                for loops in config.loops:
                    levels.append(await measure_level(services, url, config, loops, workdir, first))
                    first += config.jobs
                sections = []
                for depth in config.claim_depths:
                    sections.append(await claim_section(services, config, depth, first))
                    first += depth
            finally:
                await services.aclose()
                await services.database.dispose()
        version = await admin_sql(server_url, "SHOW server_version")
    note_end_load(machine)
    best = max(level["claims_per_s"] for level in levels)
    # The deepest queue's figures (the most conservative) head the GPU table.
    section = sections[-1]
    return {
        "benchmark": "queue-ceiling",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "postgresql": version},
        "settings": asdict(config),
        "levels": levels,
        "claim_sections": sections,
        "gpus_fed": {
            "measured_best_claims_per_s": best,
            "at_measured_best": gpus_fed(best),
            "serialised_ceiling_claims_per_s": section["ceiling_claims_per_s"],
            "at_serialised_ceiling": gpus_fed(section["ceiling_claims_per_s"]),
            "dedicated_cores_claims_per_s": section["ceiling_claims_per_s_dedicated_cores"],
            "at_dedicated_cores": gpus_fed(section["ceiling_claims_per_s_dedicated_cores"]),
        },
    }


def markdown(document: dict[str, Any]) -> str:
    m, s, g = document["machine"], document["settings"], document["gpus_fed"]
    lines = [
        "# The job queue's ceiling (PostgreSQL, zero-time renders, CPU machine)",
        "",
        f"Measured {document['measured_at']} on {m['nproc']} × {m['cpu_model']}, "
        f"{m['platform']}, Python {m['python']}, PostgreSQL {m['postgresql']}; load average "
        f"(1 min) at start {m.get('load_average_1m')}, at the end {m.get('load_average_1m_end')} "
        "(a machine shared with other work: PostgreSQL, the controller and the workers share "
        "its cores, so every figure here is a floor for a dedicated database server).",
        "",
        "## Worker loops",
        "",
        f"{s['jobs']} renders queued before each level; the loops (each "
        "`JobDispatcher.run_once` until the queue is empty: claim, zero-time render, outcome) "
        f"spread over at most {s['processes']} worker processes "
        "(`python -m bench.queue_ceiling_worker`); claims/s = jobs ÷ (go → last drained).",
        "",
        "| loops | processes × loops | jobs | claims/s | wall s | worker / PG CPU ms per job "
        "| machine busy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in document["levels"]:
        lines.append(
            f"| {lv['loops']} | {' + '.join(str(n) for n in lv['loops_per_process'])} "
            f"| {lv['jobs']} | {lv['claims_per_s']:.1f} | {lv['wall_s']:.1f} "
            f"| {lv['worker_cpu_ms_per_job']:.1f} / {lv['postgres_cpu_ms_per_job']:.1f} "
            f"| {lv['machine_busy_fraction']:.0%} |"
        )
    lines += [
        "",
        "## The serialised section",
        "",
        "The claim transaction alone (advisory lock, fair-order select, update, attempt row, "
        "`started` notification, commit), back to back on one connection: 1 ÷ its median "
        "time is the most claims per second through the one lock on this machine, whatever "
        "the number of workers. With cores of their own, the lock is held about the CPU the "
        "claiming process and PostgreSQL spend per claim (plus loopback round trips).",
        "",
        "| queued | claims timed | median ms | p90 ms | claims/s (1 ÷ median) "
        "| CPU ms per claim: claimer / PostgreSQL | claims/s on dedicated cores |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in document["claim_sections"]:
        t = c["claim_transaction_ms"]
        lines.append(
            f"| {c['queued_at_start']} | {c['samples']} | {t['median']:.2f} | {t['p90']:.2f} "
            f"| {c['ceiling_claims_per_s']:.0f} | {c['client_cpu_ms_per_claim']:.2f} / "
            f"{c['postgres_cpu_ms_per_claim']:.2f} "
            f"| {c['ceiling_claims_per_s_dedicated_cores']:.0f} |"
        )
    lines += [
        "",
        "## GPUs one PostgreSQL can feed",
        "",
        "One job per render, each GPU asking for the next as soon as it is free: GPUs = "
        "claims/s × seconds per render (the serialised section at the deepest queue above).",
        "",
        "| claims/s | at 1 s per render | at 5 s per render |",
        "| --- | --- | --- |",
        f"| measured here, best level: {g['measured_best_claims_per_s']:.0f} "
        f"| {g['at_measured_best']['1s']} | {g['at_measured_best']['5s']} |",
        f"| the serialised claim's ceiling: {g['serialised_ceiling_claims_per_s']:.0f} "
        f"| {g['at_serialised_ceiling']['1s']} | {g['at_serialised_ceiling']['5s']} |",
        f"| the claim's CPU alone (dedicated cores): {g['dedicated_cores_claims_per_s']:.0f} "
        f"| {g['at_dedicated_cores']['1s']} | {g['at_dedicated_cores']['5s']} |",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--loops", type=int, nargs="+", default=None)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None, help="queued before each level")
    parser.add_argument("--pg-port", type=int, default=None, help="the throwaway server's port")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default=None, help="default queue-ceiling-cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.stem is None:
        args.stem = "queue-ceiling-cpu" + ("-quick" if args.quick else "")
    return args


def config_of(args: argparse.Namespace) -> CeilingConfig:
    config = QUICK if args.quick else CeilingConfig()
    return CeilingConfig(
        loops=tuple(args.loops) if args.loops else config.loops,
        processes=args.processes or config.processes,
        jobs=args.jobs or config.jobs,
        users=config.users,
        claim_samples=config.claim_samples,
        claim_depths=config.claim_depths,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    config = config_of(args)
    with throwaway_cluster(args.pg_port) as cluster:
        document = asyncio.run(run_on(cluster.url, config))
    path = write_results(args.out, args.stem, document, markdown)
    print(path.with_suffix(".md").read_text())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
