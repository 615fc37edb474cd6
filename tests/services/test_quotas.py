"""Guild quota settings, usage on the UTC day, the admin report and grants."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from bot.errors import Forbidden, InvalidInput, QuotaExceeded
from bot.services.container import Services
from bot.services.ledger import day_bounds
from db.models import RenderJob, UsageLedger
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar


async def test_defaults_and_admin_changes(services: Services) -> None:
    quotas = await services.quotas.get(GUILD)
    assert (quotas.renders_per_day, quotas.images_per_render, quotas.personalizer) == (10, 4, None)
    with pytest.raises(Forbidden):
        await services.quotas.set(GUILD, actor_is_admin=False, renders_per_day=50)
    changed = await services.quotas.set(
        GUILD, actor_is_admin=True, renders_per_day=50, personalizer="ip-adapter"
    )
    assert (changed.renders_per_day, changed.personalizer) == (50, "ip-adapter")
    assert (await services.quotas.get(GUILD + 1)).renders_per_day == 10  # other guilds: defaults
    restored = await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=None)
    assert restored.renders_per_day == 10 and restored.personalizer == "ip-adapter"
    for bad in (
        {"renders_per_day": -1},
        {"images_per_render": 9},
        {"max_side": 10},
        {"colour": 3},
        {"personalizer": "dreambooth"},
        {},
    ):
        with pytest.raises(InvalidInput):
            await services.quotas.set(GUILD, actor_is_admin=True, **bad)


async def test_usage_resets_at_utc_midnight_and_refunds_count_on_their_day(
    services: Services,
) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=2)
    old = await services.renders.request(7, GUILD, CHANNEL, "Mia", "yesterday's")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "yesterday's too")
    # Move both reservations (and their jobs) to yesterday.
    yesterday = day_bounds(utcnow())[0] - timedelta(hours=1)
    async with services.database.begin() as session:
        await session.execute(update(UsageLedger).values(created_at=yesterday))
        await session.execute(update(RenderJob).values(created_at=yesterday))
    usage = await services.quotas.usage(GUILD, 7)
    assert (usage.used, usage.remaining) == (0, 2)
    assert usage.resets_at == day_bounds(utcnow())[1]
    # Refunding yesterday's job today gives back yesterday's unit, not one of today's.
    await services.renders.cancel(7, old.job_id)
    assert (await services.quotas.usage(GUILD, 7)).remaining == 2
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    with pytest.raises(QuotaExceeded):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "c")

    report = await services.quotas.report(GUILD, days=2, actor_is_admin=True)
    rows = [(r.day, r.user_id, r.reserved, r.refunded, r.net) for r in report.rows]
    today, before = utcnow().date(), yesterday.date()
    assert rows == [(today, 7, 2, 0, 2), (before, 7, 2, 1, 1)]
    assert len((await services.quotas.report(GUILD, days=1, actor_is_admin=True)).rows) == 1
    with pytest.raises(Forbidden):
        await services.quotas.report(GUILD, actor_is_admin=False)
    with pytest.raises(InvalidInput):
        await services.quotas.report(GUILD, days=0, actor_is_admin=True)


async def test_admin_grant_adds_renders_for_today(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.quotas.set(GUILD, actor_is_admin=True, renders_per_day=1)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a")
    with pytest.raises(QuotaExceeded):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    with pytest.raises(Forbidden):
        await services.quotas.grant(GUILD, 7, 2, actor_is_admin=False)
    with pytest.raises(InvalidInput):
        await services.quotas.grant(GUILD, 7, 0, actor_is_admin=True)
    usage = await services.quotas.grant(GUILD, 7, 2, actor_is_admin=True, note="contest")
    assert (usage.used, usage.limit, usage.remaining) == (1, 3, 2)
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "b")
    report = await services.quotas.report(GUILD, days=1, user_id=7, actor_is_admin=True)
    assert [(r.reserved, r.granted) for r in report.rows] == [(2, 2)]
