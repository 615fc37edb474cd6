"""The crash test's victim: a dispatcher rendering slowly over a SQLite file until killed.

Run as ``python -m tests.services.crash_worker DB_URL DATA_DIR RENDER_DELAY``; it prints
``ready`` once its dispatcher runs. The test SIGKILLs it in the middle of a render.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.services.container import build_services
from bot.services.dispatcher import DispatcherConfig
from db.session import Database
from tests.fixtures.services import TINY, SlowEngine, service_settings


async def main(url: str, data_dir: str, delay: float) -> None:
    import torch

    from bot.engine_adapter import EngineAdapter

    torch.set_num_threads(1)
    database = Database.from_url(url)
    engine = SlowEngine(await EngineAdapter.create(TINY), delay=delay)
    services = await build_services(
        service_settings(Path(data_dir)),
        database,
        engine,
        dispatcher_config=DispatcherConfig(lease_seconds=3.0, poll_seconds=0.1),
    )
    await services.dispatcher.start()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
