"""Wiring: every service built from the settings, one database and (in a process that renders)
one engine port.

The bot (``setup_hook``), the workers, the CLI and the tests all build the services through
``build_services``; nothing else constructs them, so the wiring lives in one place::

    services = await build_services(settings, database, engine_port_or_None)
    await services.start()      # listen for job events, run the job loop
    ...
    await services.aclose()     # stop the loop (running jobs go back to the queue)

A process without an engine (the bot in the scale-out setup, the CLI's data commands) gets a
job loop that claims nothing and only reaps expired leases and purges; what it must know of
the engine comes from the workers through the database (bot/services/workers.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import Settings
from bot.services.audit import AuditService
from bot.services.avatars import AvatarService
from bot.services.blocklist import BlocklistService
from bot.services.crypto import DataCipher
from bot.services.dispatcher import DispatcherConfig, JobDispatcher, Waker
from bot.services.events import JobEvents
from bot.services.friends import FriendService
from bot.services.job_work import EncodeWork, JobWork, RenderWork
from bot.services.jobs import JobService
from bot.services.metrics_port import MetricsPort
from bot.services.ports import EnginePort
from bot.services.privacy import PrivacyService
from bot.services.prompt_policy import PromptPolicy
from bot.services.quotas import QuotaService
from bot.services.renders import RenderService
from bot.services.safety import SafetyService
from bot.services.usage_keys import UsageKeys
from bot.services.workers import WorkerRegistry
from db.session import Database
from kinds import JobKind

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """The service objects of one process (see the module docstring)."""

    settings: Settings
    database: Database
    engine: EnginePort | None
    cipher: DataCipher
    events: JobEvents
    workers: WorkerRegistry
    avatars: AvatarService
    renders: RenderService
    friends: FriendService
    quotas: QuotaService
    jobs: JobService
    privacy: PrivacyService
    audit: AuditService
    blocklist: BlocklistService
    dispatcher: JobDispatcher
    safety: SafetyService
    # The process's metrics (bot/ops/metrics.py in the bot and the worker), fed by the job loop
    # and the delivery, through a port: the services do not import operations code.
    metrics: MetricsPort

    async def start(self, *, run_loop: bool = True) -> None:
        """Listen for job events (PostgreSQL), then start the job loop unless told not to
        (one-shot tools drive ``dispatcher.run_job`` themselves)."""
        await self.events.start()
        if run_loop:
            await self.dispatcher.start()

    async def aclose(self) -> None:
        """Stop the job loop (running jobs go back to the queue) and the event listener. The
        database and the engine belong to whoever created them."""
        try:
            await self.dispatcher.stop(grace=self.dispatcher.config.lease_seconds)
        finally:
            await self.events.aclose()


def default_dispatcher_config(
    settings: Settings, database: Database, engine: EnginePort | None
) -> DispatcherConfig:
    """One job per engine batch slot when this process renders, none otherwise; the sole
    worker of the embedded SQLite setup adopts what it left running when it died."""
    renders = engine is not None
    return DispatcherConfig.from_settings(
        settings.jobs,
        concurrency=settings.engine.max_batch if renders else 0,
        exclusive=renders and database.dialect == "sqlite",
    )


async def build_services(
    settings: Settings,
    database: Database,
    engine: EnginePort | None,
    *,
    dispatcher_config: DispatcherConfig | None = None,
    waker: Waker | None = None,
    worker_id: str | None = None,
    metrics: MetricsPort | None = None,
) -> Services:
    """Build and wire every service; the schema must already be at head (db.migrate)."""
    cipher = DataCipher.from_settings(
        settings.data_key.get_secret_value() if settings.data_key else None,
        settings.old_data_keys.get_secret_value() if settings.old_data_keys else None,
        strict=settings.encryption_strict,
    )
    if cipher.enabled:
        logger.info("photos, features and outputs are encrypted at rest")
    events = JobEvents(database)
    registry = WorkerRegistry(database, engine.facts() if engine is not None else None)
    usage_keys = UsageKeys(cipher)  # one secret for forget-me's keys and usage counting
    quotas = QuotaService(
        database,
        settings.quotas,
        usage_keys,
        settings.quota_ceilings,
        personal=settings.personal_quotas,
    )
    jobs = JobService(
        database,
        cipher,
        settings.output_retention_hours,
        events,
        audit_retention_days=settings.audit_retention_days,
    )
    avatars = AvatarService(database, cipher, quotas, settings.photos, registry, events, jobs)
    prompt_policy = PromptPolicy.base(settings.prompt_blocklist)
    renders = RenderService(
        database,
        registry,
        quotas,
        jobs,
        events,
        prompts=prompt_policy,
        default_steps=settings.engine.default_steps,
        # Only a guidance the operator set: otherwise the render workers' engine decides (its
        # profile's, published in its facts), as it does for steps.
        default_guidance=(
            settings.engine.default_guidance
            if "default_guidance" in settings.engine.model_fields_set
            else None
        ),
        fallback_guidance=settings.engine.default_guidance,
        safety=settings.safety,
        best_of_charge=settings.best_of_charge,
        upscale_units=settings.upscale_units,
    )
    work: dict[JobKind, JobWork] = {}
    if engine is not None:
        work[JobKind.RENDER] = RenderWork(
            database, engine, cipher, safety=settings.safety, events=events
        )
        work[JobKind.ENCODE] = EncodeWork(database, engine, cipher)
    dispatcher = JobDispatcher(
        database,
        jobs,
        events,
        registry,
        work,
        dispatcher_config or default_dispatcher_config(settings, database, engine),
        worker_id=worker_id,
        waker=waker,
        metrics=metrics,
    )
    privacy = PrivacyService(database, cipher, usage_keys)
    return Services(
        settings=settings,
        database=database,
        engine=engine,
        cipher=cipher,
        events=events,
        workers=registry,
        avatars=avatars,
        renders=renders,
        friends=FriendService(
            database, renders, cipher, ask_minutes=settings.friend_request_minutes
        ),
        quotas=quotas,
        jobs=jobs,
        privacy=privacy,
        audit=AuditService(database),
        blocklist=BlocklistService(database, quotas, prompt_policy),
        dispatcher=dispatcher,
        safety=SafetyService(database, settings.safety),
        metrics=dispatcher.metrics,
    )
