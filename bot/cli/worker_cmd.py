"""`avatarbot worker`: a job worker process over the shared database (scale-out).

Runs the engine and the job loop, nothing else: no Discord. Start any number of them on GPU
machines against one PostgreSQL (README, "Scale-out"); set ``AVATARBOT_RUN_WORKER=false`` on
the bot so it only queues and delivers. SIGTERM and SIGINT stop it cleanly: it stops claiming,
hands the jobs it was running back to the queue without counting an attempt (another worker
takes them at once), closes the database and exits 0. Started while the database is down,
it waits for it, logging one line, instead of exiting (db/session.py ``wait_until_reachable``).

A worker never talks to Discord, so it refuses to start when ``AVATARBOT_DISCORD_TOKEN`` is in
its environment (one line on stderr, exit 2) rather than warn and carry on: a process that
downloads and runs model code is the last one that should hold the bot's credentials, and
dropping the variable would not help: the process's initial environment (``/proc/<pid>/environ``,
what its children inherit) keeps it. Give workers their own file (deploy/worker.env.example).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bot.cli.noise_guard import add_allow_noise_flag, refuse_noise
from bot.config import Settings

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="run queued jobs (a worker process, no Discord)")
    parser.add_argument(
        "--concurrency", type=int, help="jobs at a time (default: engine.max_batch)"
    )
    add_allow_noise_flag(parser)
    parser.set_defaults(handler=run, needs_engine=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.discord_token is not None:
        print(
            "avatarbot worker: AVATARBOT_DISCORD_TOKEN is set, but a worker never talks to "
            "Discord and must not hold the bot's token; remove it from the worker's environment "
            "(its own env file: deploy/worker.env.example)",
            file=sys.stderr,
        )
        return 2
    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit("avatarbot worker: --concurrency must be at least 1")
    refused = refuse_noise(settings, "worker", allow_noise=args.allow_noise)
    if refused is not None:
        return refused
    return asyncio.run(_main(settings, args.concurrency))


async def _main(settings: Settings, concurrency: int | None) -> int:
    from bot.engine_adapter import build_engine_port
    from bot.ops.metrics import Metrics, torch_gpu_memory
    from bot.ops.server import start_ops_server
    from bot.services.container import Services, build_services, default_dispatcher_config
    from db.migrate import upgrade
    from db.session import Database

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    database = Database.from_url(settings.effective_database_url)
    # /healthz, /readyz, /metrics (bot/ops): alive from now on, ready once the loop runs.
    metrics = Metrics()
    running: list[Services] = []

    def not_ready() -> str | None:
        if not running:
            return "starting (migrating, loading the engine)"
        return None if running[0].dispatcher.started else "job loop stopped"

    ops = await start_ops_server(
        settings.ops.address,
        metrics,
        database=lambda: database,
        ready=not_ready,
        gpu=torch_gpu_memory,
    )
    try:
        await database.wait_until_reachable()
        await upgrade(database)
        engine = await build_engine_port(settings)
        try:
            config = default_dispatcher_config(settings, database, engine)
            if concurrency is not None:
                from dataclasses import replace

                config = replace(config, concurrency=concurrency)
            services = await build_services(
                settings, database, engine, dispatcher_config=config, metrics=metrics
            )
            try:
                await services.start()
                running.append(services)
                logger.info(
                    "worker %s running; SIGTERM or Ctrl-C stops it", services.dispatcher.worker_id
                )
                await stop.wait()
                logger.info("stopping: handing running jobs back to the queue")
            finally:
                await services.aclose()
        finally:
            await engine.aclose()
    finally:
        try:
            if ops is not None:
                await ops.aclose()
        finally:
            await database.dispose()
    return 0
