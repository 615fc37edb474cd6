"""Issue 26: the personal scope (``guild_id`` None: DMs with the bot, and a member's own
install in servers without the bot) has the operator's own quota setting and its own ledger
rows (guild NULL), apart from every guild's; forget-me keeps its day counted."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.config import QuotaDefaults, Settings
from bot.errors import InvalidInput, QueueFull, QuotaExceeded
from bot.services.container import Services
from bot.services.results import RenderOptions
from db.repositories import ledger as ledger_repo
from db.types import utcnow
from tests.fixtures.services import CHANNEL, GUILD, make_avatar, service_settings

PERSONAL = QuotaDefaults(
    renders_per_day=2, images_per_render=1, queued_per_member=1, renders_per_minute=60
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return service_settings(tmp_path, personal_quotas=PERSONAL)


async def _run_all(services: Services) -> None:
    # Bounded: each call runs one queued job; a few are queued in these tests.
    for _ in range(10):
        if await services.dispatcher.run_once() is None:
            return


def test_the_personal_quota_is_its_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARBOT_PERSONAL_QUOTAS__RENDERS_PER_DAY", "7")
    settings = Settings()
    assert settings.personal_quotas.renders_per_day == 7
    assert settings.quotas.renders_per_day == QuotaDefaults().renders_per_day
    monkeypatch.delenv("AVATARBOT_PERSONAL_QUOTAS__RENDERS_PER_DAY")
    # Conservative by default: fewer renders a day than a server's default.
    assert Settings().personal_quotas.renders_per_day < QuotaDefaults().renders_per_day


async def test_personal_renders_count_apart_from_every_guild(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    quotas = await services.quotas.get(None)
    assert (quotas.renders_per_day, quotas.images_per_render) == (2, 1)
    assert (await services.quotas.get(GUILD)).renders_per_day == 10  # the guilds' default

    await services.renders.request(7, None, None, "Mia", "one")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "in the server")
    personal = await services.quotas.usage(None, 7)
    assert (personal.used, personal.limit, personal.remaining) == (1, 2, 1)
    assert (await services.quotas.usage(GUILD, 7)).used == 1
    assert (await services.quotas.usage(None, 8)).used == 0  # per member

    with pytest.raises(QueueFull, match="the most outside servers I allow"):
        await services.renders.request(7, None, None, "Mia", "waits for one")
    await _run_all(services)
    await services.renders.request(7, None, None, "Mia", "two")
    with pytest.raises(QuotaExceeded, match="used your 2 renders"):
        await services.renders.request(7, None, None, "Mia", "three")
    # The guild's quota is untouched by the personal one being spent.
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "still fine")

    async with services.database.begin(readonly=True) as session:
        rows = await ledger_repo.report(session, guild_id=GUILD, since=_long_ago(), user_id=7)
    assert sum(r.reserved for r in rows) == 2  # the guild's report: its own renders only


async def test_the_personal_scope_has_the_operators_bounds(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    with pytest.raises(InvalidInput, match="1 to 1 images"):
        await services.renders.request(7, None, None, "Mia", "x", RenderOptions(count=2))
    assert (await services.quotas.usage(None, 7)).used == 0  # nothing reserved


async def test_forget_me_keeps_the_personal_days_usage(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await services.renders.request(7, None, None, "Mia", "one")
    await _run_all(services)  # rendered: forget-me refunds only what is still queued
    await services.renders.request(7, None, None, "Mia", "two")
    await _run_all(services)
    await services.privacy.forget_me(7)

    usage = await services.quotas.usage(None, 7)
    assert (usage.used, usage.remaining) == (2, 0)  # erasing one's data is no fresh quota
    await make_avatar(services, 7, "Mia")
    with pytest.raises(QuotaExceeded):
        await services.renders.request(7, None, None, "Mia", "three")
    async with services.database.begin(readonly=True) as session:
        rows = await ledger_repo.report(session, guild_id=None, since=_long_ago())
    assert all(r.user_id is None for r in rows)  # the rows kept no member id


def _long_ago() -> datetime:
    return utcnow() - timedelta(days=2)
