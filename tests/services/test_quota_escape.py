"""Audit finding 4 (GPU without quota): a started render cancelled or deleted is not refunded,
a queued one is; guild admins cannot raise quotas above the operator's ceilings."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from bot.config import QuotaCeilings
from bot.errors import InvalidInput
from bot.services.container import Services, build_services
from db import queue
from db.models import GuildSettings
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings


async def _claim(services: Services) -> int:
    """A worker claims the next queued job (it is now running); its id."""
    async with services.database.begin() as session:
        claimed = await queue.claim_next(session, worker_id="gpu-1", lease_seconds=60, now=utcnow())
    assert claimed is not None
    return claimed.id


async def test_cancelling_a_started_render_is_not_refunded(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    running = await services.renders.request(7, GUILD, CHANNEL, "Mia", "one")
    assert await _claim(services) == running.job_id
    view = await services.renders.cancel(7, running.job_id)
    assert view.status == "cancelled" and view.started_at is not None
    assert (await services.quotas.usage(GUILD, 7)).used == 1  # it started: it counts

    queued = await services.renders.request(7, GUILD, CHANNEL, "Mia", "two")
    view = await services.renders.cancel(7, queued.job_id)
    assert view.started_at is None
    assert (await services.quotas.usage(GUILD, 7)).used == 1  # still queued: refunded


async def test_deleting_a_started_render_is_not_refunded(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    running = await services.renders.request(7, GUILD, CHANNEL, "Mia", "one")
    await _claim(services)
    await services.renders.delete(7, running.job_id)
    assert (await services.quotas.usage(GUILD, 7)).used == 1
    queued = await services.renders.request(7, GUILD, CHANNEL, "Mia", "two")
    await services.renders.delete(7, queued.job_id)
    assert (await services.quotas.usage(GUILD, 7)).used == 1


async def test_render_to_99_percent_and_cancel_cannot_loop(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=3)
    for _ in range(3):
        ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "again")
        await _claim(services)
        await services.renders.cancel(7, ticket.job_id)
    usage = await services.quotas.usage(GUILD, 7)
    assert (usage.used, usage.remaining) == (3, 0)


async def test_admins_cannot_raise_quotas_above_the_operator_ceilings(services: Services) -> None:
    ceilings = services.quotas.ceilings
    assert ceilings["renders_per_day"] == QuotaCeilings().renders_per_day == 200
    for field in ("renders_per_day", "queued_per_guild", "renders_per_minute", "max_steps"):
        with pytest.raises(InvalidInput, match="operator"):
            await services.quotas.set(GUILD, actor_is_admin=True, **{field: 100_000})
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=200)  # at the ceiling
    assert (await services.quotas.get(GUILD)).renders_per_day == 200


async def test_ceilings_are_settings_and_cap_older_overrides(
    database: Database, tmp_path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings(
        tmp_path, quota_ceilings=QuotaCeilings(renders_per_day=20, creates_per_hour=3)
    )
    services = await build_services(settings, database, tiny_engine_port)
    try:
        with pytest.raises(InvalidInput, match="renders_per_day at most 20"):
            await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=21)
        # The operator's own defaults stay allowed (creates_per_hour defaults to 100 here).
        assert services.quotas.ceilings["creates_per_hour"] == 100
        # An override written before the ceiling was lowered reads as the ceiling.
        await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=15)
        async with services.database.begin() as session:
            await session.execute(update(GuildSettings).values(renders_per_day=50_000))
        assert (await services.quotas.get(GUILD)).renders_per_day == 20
    finally:
        await services.aclose()
