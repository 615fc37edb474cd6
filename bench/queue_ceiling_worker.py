"""One process of the queue-ceiling benchmark (bench/queue_ceiling.py).

    python -m bench.queue_ceiling_worker PG_URL RENDER_SECONDS --loops N

Builds a worker's services on PostgreSQL (bench/scaleout_worker.py's settings and
``FixedTimeEngine``; RENDER_SECONDS is 0 in the benchmark) with a job loop that claims nothing
(it registers the engine's facts and reaps), prints ``READY <worker id> <pid>`` and waits for
a line on stdin; then runs N loops at once, each calling
``JobDispatcher.run_once`` (claim, render, outcome: the job loop's own path, one job at a time)
until the queue is empty, and prints ``DRAINED <jobs> <process CPU seconds>``. It exits at the
next line on stdin (or its end), so the controller reads every process's CPU time first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.scaleout_worker import READY, FixedTimeEngine, bench_settings, worker_config
from bot.services.container import build_services
from bot.services.dispatcher import JobDispatcher
from db.session import Database

DRAINED = "DRAINED"


async def drain(dispatcher: JobDispatcher) -> int:
    """Run jobs one after another until none is queued; how many ran."""
    ran = 0
    while await dispatcher.run_once() is not None:
        ran += 1
    return ran


async def serve(database_url: str, engine: FixedTimeEngine, loops: int) -> int:
    database = Database.from_url(database_url)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with tempfile.TemporaryDirectory(prefix="avatarbot-ceiling-") as tmp:
        settings = bench_settings(Path(tmp), database_url)
        # A loop that claims nothing itself (concurrency 0) but registers this worker's
        # engine facts, which requests are checked against, and reaps.
        config = replace(worker_config(), concurrency=0)
        services = await build_services(settings, database, engine, dispatcher_config=config)
        try:
            await services.start()
            print(f"{READY} {services.dispatcher.worker_id} {os.getpid()}", flush=True)
            await reader.readline()
            counts = await asyncio.gather(*(drain(services.dispatcher) for _ in range(loops)))
            print(f"{DRAINED} {sum(counts)} {time.process_time():.3f}", flush=True)
            await reader.readline()
        finally:
            await services.aclose()
            await database.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_ceiling_worker")
    parser.add_argument("pg_url")
    parser.add_argument("render_seconds", type=float)
    parser.add_argument("--loops", type=int, default=1)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine = FixedTimeEngine(args.render_seconds)
    return asyncio.run(serve(args.pg_url, engine, args.loops))


if __name__ == "__main__":
    raise SystemExit(main())
