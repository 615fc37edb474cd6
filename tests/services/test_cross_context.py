"""Audit finding 5 (cross-context use): Reroll/Variations spend a guild's quota only for a
member of that guild, and an avatar made in DMs or another guild is held to the limits of the
guild it is rendered in."""

from __future__ import annotations

import pytest

from bot.errors import Forbidden, InvalidInput, QuotaExceeded
from bot.services.container import Services
from tests.fixtures.services import CHANNEL, GUILD, make_avatar


async def test_reroll_and_variations_require_membership_of_the_jobs_guild(
    services: Services,
) -> None:
    await make_avatar(services, 7, "Mia")
    first = await services.renders.request(7, GUILD, CHANNEL, "Mia", "a hat")
    asked: list[int] = []

    async def kicked(guild_id: int) -> bool:
        asked.append(guild_id)
        return False

    async def member(guild_id: int) -> bool:
        return True

    for again in (services.renders.reroll, services.renders.variations):
        with pytest.raises(Forbidden, match="no longer a member"):
            await again(7, first.job_id, is_member=kicked)
    assert asked == [GUILD, GUILD]
    assert (await services.quotas.usage(GUILD, 7)).used == 1  # nothing spent
    await services.renders.reroll(7, first.job_id, is_member=member)
    assert (await services.quotas.usage(GUILD, 7)).used == 2


async def test_an_avatar_made_elsewhere_meets_this_guilds_photo_limit(services: Services) -> None:
    await make_avatar(services, 7, "Mia", photos=5, guild=None)  # made in a DM
    await services.quotas.set(GUILD, actor_is_admin=True, photos_per_avatar=3)
    with pytest.raises(InvalidInput, match="at most 3 per avatar"):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "a hat")
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    await services.renders.request(7, GUILD + 1, CHANNEL, "Mia", "a hat")  # fits there


async def test_a_members_avatars_count_against_the_rendering_guilds_limit(
    services: Services,
) -> None:
    for name in ("One", "Two", "Three"):
        await make_avatar(services, 7, name, guild=GUILD + 1)  # a looser guild (limit 3)
    old = await services.renders.request(7, GUILD, CHANNEL, "One", "a hat")
    await services.quotas.set(GUILD, actor_is_admin=True, avatars_per_member=2)
    with pytest.raises(QuotaExceeded, match="allows 2"):
        await services.renders.request(7, GUILD, CHANNEL, "One", "a hat")
    with pytest.raises(QuotaExceeded, match="allows 2"):
        await services.renders.reroll(7, old.job_id)
    await services.avatars.delete(7, "Three")
    await services.renders.request(7, GUILD, CHANNEL, "One", "a hat")
