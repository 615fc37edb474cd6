"""Wiring: every service built from the settings, one database and one engine port.

The bot (``setup_hook``), the CLI and the tests all build the services through
``build_services``; nothing else constructs them, so the wiring lives in one place::

    services = await build_services(settings, database, engine_port)
    await services.dispatcher.start()        # when this process renders (settings.run_worker)
    ...
    await services.aclose()                   # stops the dispatcher; the caller owns db/engine
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import Settings
from bot.services.avatars import AvatarService
from bot.services.crypto import DataCipher
from bot.services.dispatcher import DispatcherConfig, JobDispatcher
from bot.services.jobs import JobService
from bot.services.ports import EnginePort
from bot.services.privacy import PrivacyService
from bot.services.prompts import PromptBlocklist
from bot.services.quotas import QuotaService
from bot.services.renders import RenderService
from db.session import Database

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """The service objects of one process (see the module docstring)."""

    settings: Settings
    database: Database
    engine: EnginePort
    cipher: DataCipher
    avatars: AvatarService
    renders: RenderService
    quotas: QuotaService
    jobs: JobService
    privacy: PrivacyService
    dispatcher: JobDispatcher

    async def aclose(self) -> None:
        """Stop the dispatcher (running jobs go back to the queue). The database and the
        engine belong to whoever created them."""
        await self.dispatcher.stop()


async def build_services(
    settings: Settings,
    database: Database,
    engine: EnginePort,
    *,
    dispatcher_config: DispatcherConfig | None = None,
) -> Services:
    """Build and wire every service; the schema must already be at head (db.migrate).

    ``dispatcher_config`` defaults to one job at a time per engine batch slot
    (``settings.engine.max_batch``), adopting orphaned jobs at start only on SQLite, where the
    embedded worker is the only one.
    """
    cipher = DataCipher.from_settings(
        settings.data_key.get_secret_value() if settings.data_key else None,
        settings.old_data_keys.get_secret_value() if settings.old_data_keys else None,
    )
    if cipher.enabled:
        logger.info("photos, features and outputs are encrypted at rest")
    quotas = QuotaService(database, settings.quotas)
    jobs = JobService(database, cipher, settings.output_retention_hours)
    avatars = AvatarService(database, engine, cipher, quotas, settings.photos)
    renders = RenderService(
        database,
        engine,
        quotas,
        jobs,
        blocklist=PromptBlocklist(settings.prompt_blocklist),
        default_steps=settings.engine.default_steps,
        default_guidance=settings.engine.default_guidance,
    )
    config = dispatcher_config or DispatcherConfig(
        concurrency=settings.engine.max_batch, exclusive=False
    )
    dispatcher = JobDispatcher(database, engine, jobs, avatars, cipher, config)
    renders.on_enqueued(dispatcher.wake)
    renders.on_cancelled(dispatcher.job_cancelled)
    privacy = PrivacyService(database, cipher)
    return Services(
        settings=settings,
        database=database,
        engine=engine,
        cipher=cipher,
        avatars=avatars,
        renders=renders,
        quotas=quotas,
        jobs=jobs,
        privacy=privacy,
        dispatcher=dispatcher,
    )
