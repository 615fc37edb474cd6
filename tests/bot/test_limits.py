"""Abuse limits and the audit log on SimCord: a member over the render rate is told when to
retry and nothing is queued; an admin's quota change shows in ``/avatar-admin audit``."""

from __future__ import annotations

import pytest
from discord import app_commands
from simcord import SetupError
from sqlalchemy import func, select

from bot.errors import RateLimited
from db.models import RenderJob
from tests.fixtures.discord import SIMCORD, World, create_avatar, expect_errors

pytestmark = SIMCORD


async def _render_jobs(world: World) -> int:
    async with world.bot.services.database.begin(readonly=True) as session:
        count = await session.scalar(
            select(func.count()).select_from(RenderJob).where(RenderJob.kind == "render")
        )
        return int(count or 0)


async def test_render_rate_limit_tells_when_to_retry_and_queues_nothing(world: World) -> None:
    await create_avatar(world, world.alice)
    await world.admin.slash(
        world.channel, "avatar-admin quota set", setting="renders_per_minute", value=1
    )
    first = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")
    assert first.response.content.startswith("Done")
    jobs = await _render_jobs(world)

    second = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a cap")
    expect_errors(world.env, RateLimited)
    assert second.ephemeral and second.followups == []
    content = second.response.content
    assert content.startswith("You can start 1 render a minute here")
    assert "Try again <t:" in content and content.endswith(":R>.")  # in the member's time zone
    assert await _render_jobs(world) == jobs
    usage = await world.bot.services.quotas.usage(world.guild.id, world.alice.id)
    assert usage.used == 1
    # Bob has his own count.
    await create_avatar(world, world.bob)
    other = await world.bob.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")
    assert other.response.content.startswith("Done")


async def test_admin_sees_quota_change_in_audit_and_members_cannot(world: World) -> None:
    await world.admin.slash(
        world.channel, "avatar-admin quota set", setting="renders_per_day", value=3
    )
    shown = await world.admin.slash(world.channel, "avatar-admin audit")
    assert shown.ephemeral
    content = shown.response.content
    assert f"<@{world.admin.id}> changed `renders_per_day` 10 → 3" in content
    assert "<t:" in content
    # The mention names the admin without pinging them (SimCord keeps the message's policy).
    assert not shown.response._message.allowed_mentions.allows_user(world.admin.id)

    with pytest.raises(SetupError):  # hidden from members
        await world.bob.slash(world.channel, "avatar-admin audit")
    commands = await world.bot.tree.fetch_commands()
    admin_command = next(c for c in commands if c.name == "avatar-admin")
    world.guild.set_command_permissions(admin_command, {world.bob: True})
    refused = await world.bob.slash(world.channel, "avatar-admin audit")
    expect_errors(world.env, app_commands.MissingPermissions)
    assert refused.ephemeral and "Manage Guild" in refused.response.content
