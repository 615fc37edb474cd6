"""A guild that removed the bot while it was offline is purged at the next start (audit
finding 8), on SimCord with a restart: its settings, jobs, usage and audit log go once the bot
is ready; guilds the bot still sees keep theirs; a bot that sees no guild at all purges nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from db.models import AuditEntry, GuildSettings, RenderJob, UsageLedger
from db.types import utcnow
from tests.fixtures.discord import SIMCORD, World

pytestmark = SIMCORD


async def _rows(world: World, guild_id: int) -> dict[str, int]:
    counts = {}
    async with world.bot.database.begin(readonly=True) as session:
        for model in (GuildSettings, RenderJob, UsageLedger, AuditEntry):
            query = select(func.count()).select_from(model).where(model.guild_id == guild_id)
            counts[model.__tablename__] = int(await session.scalar(query) or 0)
    return counts


async def _use_guild(world: World, guild: Any, channel: Any, member: Any, admin: Any) -> None:
    """Leave settings, jobs, usage and an audit entry of ``guild`` in the database."""
    await admin.slash(channel, "avatar-admin quota set", setting="renders_per_day", value=5)
    shown = await member.slash(channel, "avatar create")
    files = [(f"p{i}.png", _photo(member.id + i)) for i in range(2)]
    await member.submit_modal(
        shown, {"name": "Mug", "kind": ["object"], "photos": files, "consent": ["accepted"]}
    )
    rendered = await member.slash(channel, "avatar render", avatar="Mug", prompt="a hat")
    assert rendered.followups


def _photo(seed: int) -> bytes:
    from tests.fixtures.discord import object_photo

    return object_photo(seed % 10_000)


async def _removed_while_offline(
    world: World, bots: Any, monkeypatch: pytest.MonkeyPatch, *guilds: Any
) -> None:
    """The guilds remove the bot while it is down (it never handles their GUILD_DELETE),
    then it starts again."""

    async def offline(guild: Any) -> None:
        return None

    monkeypatch.setattr(world.bot, "on_guild_remove", offline)
    for guild in guilds:
        world.env.backend.remove_guild(guild.id)
    await world.env.settle()
    old = world.bot
    await world.env.restart_bot(bots())
    await old.close()


async def test_a_guild_left_while_offline_is_purged_at_start(
    world: World, bots: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import discord

    await _use_guild(world, world.guild, world.channel, world.alice, world.admin)
    other = world.env.create_guild(name="Elsewhere")
    other_channel = other.create_text_channel("art")
    managers = other.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    carol = other.add_member(world.env.create_user("carol"))
    owner = other.add_member(world.env.create_user("dana"), roles=[managers])
    await _use_guild(world, other, other_channel, carol, owner)
    kept_before = await _rows(world, world.guild.id)
    assert all(kept_before.values()) and all((await _rows(world, other.id)).values())

    await _removed_while_offline(world, bots, monkeypatch, other)

    # Settings and jobs go at once; the day's usage and the audit log are kept a while
    # (issue 21: removing and re-inviting resets nothing), then maintenance erases them.
    assert await _rows(world, other.id) == {
        "guild_settings": 0,
        "render_jobs": 0,
        "usage_ledger": 1,
        "audit_log": 1,
    }
    assert await _rows(world, world.guild.id) == kept_before
    # Carol's avatar is hers, not the guild's: it stays (forget-me is hers to run).
    assert [a.name for a in await world.bot.services.avatars.list(carol.id)] == ["Mug"]
    await world.bot.services.jobs.purge_expired(utcnow() + timedelta(days=31))
    assert await _rows(world, other.id) == {
        "guild_settings": 0,
        "render_jobs": 0,
        "usage_ledger": 0,
        "audit_log": 0,
    }


async def test_a_bot_that_sees_no_guild_purges_nothing(
    world: World, bots: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _use_guild(world, world.guild, world.channel, world.alice, world.admin)
    before = await _rows(world, world.guild.id)

    await _removed_while_offline(world, bots, monkeypatch, world.guild)

    assert list(world.bot.guilds) == []
    assert await _rows(world, world.guild.id) == before
