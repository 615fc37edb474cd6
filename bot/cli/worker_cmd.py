"""`avatarbot worker`: a render worker process over the shared database (scale-out).

Runs the engine and the job dispatcher, nothing else: no Discord. Start any number of them on
GPU machines against one PostgreSQL (DESIGN.md, "Jobs"); set ``AVATARBOT_RUN_WORKER=false``
on the bot so it only queues and delivers. SIGINT/SIGTERM stop it gracefully: the jobs it was
rendering go back to the queue without counting an attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from bot.config import Settings

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="render queued jobs (a worker process, no Discord)")
    parser.add_argument(
        "--concurrency", type=int, help="jobs at a time (default: engine.max_batch)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_main(settings, args.concurrency))


async def _main(settings: Settings, concurrency: int | None) -> int:
    from bot.engine_adapter import build_engine_port
    from bot.services.container import build_services
    from bot.services.dispatcher import DispatcherConfig
    from db.migrate import upgrade
    from db.session import Database

    database = Database.from_url(settings.effective_database_url)
    await upgrade(database)
    engine = await build_engine_port(settings)
    config = DispatcherConfig(concurrency=concurrency or settings.engine.max_batch)
    services = await build_services(settings, database, engine, dispatcher_config=config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await services.dispatcher.start()
        logger.info("worker %s running; Ctrl-C to stop", services.dispatcher.worker_id)
        await stop.wait()
    finally:
        await services.aclose()
        await engine.aclose()
        await database.dispose()
    return 0
