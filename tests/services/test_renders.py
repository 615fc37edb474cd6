"""Render requests: validation before any GPU work, quota and queue limits, cancel, reroll,
variations, delete, and the 200-concurrent-requests race on both databases."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from bot.config import QuotaDefaults
from bot.errors import InvalidInput, NotFound, NotOwner, PromptRefused, QueueFull, QuotaExceeded
from bot.services.container import Services, build_services
from bot.services.ledger import day_bounds
from bot.services.results import RenderOptions
from db.models import LedgerEntry, RenderJob, UsageLedger
from db.session import Database
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings


async def test_request_queues_and_reserves(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(
        7, GUILD, CHANNEL, "mia", "  a portrait  ", RenderOptions(count=2, seed=42, style="oil")
    )
    assert ticket.position == 1
    view = await services.jobs.view(ticket.job_id)
    assert (view.status, view.prompt, view.avatar_name) == ("queued", "a portrait", "Mia")
    assert (view.settings.seed, view.settings.count, view.settings.style) == (42, 2, "oil")
    assert (view.settings.width, view.settings.height) == (64, 64)  # the tiny model's size
    assert view.settings.steps == 2  # the engine default, below the guild's max
    usage = await services.quotas.usage(GUILD, 7)
    assert (usage.used, usage.remaining) == (1, 9)
    second = await services.renders.request(7, GUILD, CHANNEL, "Mia", "another")
    assert second.position == 2


REFUSED = [
    ("", RenderOptions(), InvalidInput),
    ("word " * 80, RenderOptions(), InvalidInput),  # 80 tokens > 75
    ("a cat", RenderOptions(negative_prompt="blur " * 80), InvalidInput),
    ("a cat", RenderOptions(count=5), InvalidInput),
    ("a cat", RenderOptions(count=0), InvalidInput),
    ("a cat", RenderOptions(steps=41), InvalidInput),
    ("a cat", RenderOptions(identity_strength=1.5), InvalidInput),
    ("a cat", RenderOptions(guidance=-1), InvalidInput),
    ("a cat", RenderOptions(seed=-1), InvalidInput),
    ("a cat", RenderOptions(style="vaporwave"), InvalidInput),
    ("a cat", RenderOptions(aspect="round"), InvalidInput),  # type: ignore[arg-type]
    ("a bloody scene", RenderOptions(), PromptRefused),
    ("a cat", RenderOptions(negative_prompt="BLOODY"), PromptRefused),
]


async def test_request_refusals_cost_nothing(
    database: Database, tmp_path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    settings = service_settings(tmp_path, prompt_blocklist=["bloody"])
    services = await build_services(settings, database, tiny_engine_port)
    await make_avatar(services, 7, "Mia")
    for prompt, options, error in REFUSED:
        with pytest.raises(error):
            await services.renders.request(7, GUILD, CHANNEL, "Mia", prompt, options)
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    assert await services.jobs.active() == []


async def test_only_own_avatars_can_be_rendered(services: Services) -> None:
    await make_avatar(services, 8, "Mia")
    with pytest.raises(NotFound):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")


async def test_daily_quota(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=2)
    for _ in range(2):
        ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    with pytest.raises(QuotaExceeded) as info:
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    assert info.value.resets_at == day_bounds(utcnow())[1]
    # A cancelled render gives its unit back.
    await services.renders.cancel(7, ticket.job_id)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    # Quotas are per guild: another guild has its own count.
    await services.renders.request(7, GUILD + 1, CHANNEL, "Mia", "a cat")


async def test_queue_limits(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 8, "Max")
    await services.quotas.set(GUILD, actor_is_admin=True, queued_per_member=2, queued_per_guild=3)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    with pytest.raises(QueueFull):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "c")
    await services.renders.request(8, GUILD, CHANNEL, "Max", "d")
    with pytest.raises(QueueFull, match="server"):
        await services.renders.request(8, GUILD, CHANNEL, "Max", "e")
    assert (await services.quotas.usage(GUILD, 7)).used == 2  # refused requests reserve nothing


async def test_cancel_refunds_once_and_only_for_the_owner(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    with pytest.raises(NotOwner):
        await services.renders.cancel(8, ticket.job_id)
    view = await services.renders.cancel(7, ticket.job_id)
    assert view.status == "cancelled"
    with pytest.raises(InvalidInput):
        await services.renders.cancel(7, ticket.job_id)
    with pytest.raises(NotFound):
        await services.renders.cancel(7, 999_999)
    assert await _ledger(services) == [("reserve", 1), ("refund", 1)]
    assert (await services.quotas.usage(GUILD, 7)).used == 0


async def test_reroll_and_variations(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    first = await services.renders.request(
        7, GUILD, CHANNEL, "Mia", "a cat", RenderOptions(count=2, seed=5, aspect="portrait")
    )
    with pytest.raises(NotOwner):
        await services.renders.reroll(8, first.job_id)
    again = await services.jobs.view((await services.renders.reroll(7, first.job_id)).job_id)
    assert again.parent_job_id == first.job_id and again.prompt == "a cat"
    assert again.settings.count == 2 and again.settings.aspect == "portrait"
    assert again.settings.seed != 5
    more = await services.jobs.view((await services.renders.variations(7, first.job_id)).job_id)
    assert more.settings.count == 4 and more.parent_job_id == first.job_id
    assert (await services.quotas.usage(GUILD, 7)).used == 3
    await services.avatars.delete(7, "Mia")
    with pytest.raises(NotFound, match="avatar"):
        await services.renders.reroll(7, first.job_id)


async def test_delete_job(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    ticket = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat")
    with pytest.raises(NotOwner):
        await services.renders.delete(8, ticket.job_id)
    await services.renders.delete(7, ticket.job_id)  # queued: cancelled, refunded, deleted
    with pytest.raises(NotFound):
        await services.jobs.view(ticket.job_id)
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    assert await _ledger(services) == [("reserve", 1), ("refund", 1)]


async def test_200_concurrent_requests_against_a_limit_of_10(
    database: Database, tmp_path, tiny_engine_port
) -> None:  # type: ignore[no-untyped-def]
    quotas = QuotaDefaults(
        renders_per_day=10, queued_per_member=500, queued_per_guild=500, renders_per_minute=60
    )
    services = await build_services(
        service_settings(tmp_path, quotas=quotas), database, tiny_engine_port
    )
    await make_avatar(services, 7, "Mia")
    results = await asyncio.gather(
        *(services.renders.request(7, GUILD, CHANNEL, "Mia", "a cat") for _ in range(200)),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(accepted) == 10
    assert all(isinstance(r, QuotaExceeded) for r in refused), {type(r) for r in refused}
    async with database.begin(readonly=True) as session:
        jobs = (await session.scalars(select(RenderJob).where(RenderJob.kind == "render"))).all()
    assert len(jobs) == 10
    assert await _ledger(services) == [("reserve", 1)] * 10
    assert (await services.quotas.usage(GUILD, 7)).remaining == 0


async def _ledger(services: Services) -> list[tuple[str, int]]:
    async with services.database.begin(readonly=True) as session:
        rows = (await session.scalars(select(UsageLedger).order_by(UsageLedger.id))).all()
    return [(LedgerEntry(r.entry).value, r.amount) for r in rows]
