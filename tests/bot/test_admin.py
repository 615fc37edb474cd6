"""``/avatar-admin``: Manage Server only — hidden by Discord, and checked again by the bot."""

from __future__ import annotations

import io

import pytest
from discord import app_commands
from PIL import Image
from simcord import SetupError

from bot.errors import InvalidInput
from tests.fixtures.discord import SIMCORD, World, create_avatar, expect_errors

pytestmark = SIMCORD


async def test_admin_shows_and_sets_quotas(world: World) -> None:
    shown = await world.admin.slash(world.channel, "avatar-admin quota show")
    assert shown.ephemeral
    assert "Renders per member per day (UTC): **10**" in shown.response.content

    changed = await world.admin.slash(
        world.channel, "avatar-admin quota set", setting="renders_per_day", value=3
    )
    assert changed.response.content == "Renders per member per day (UTC): now **3**."
    assert (await world.bot.services.quotas.get(world.guild.id)).renders_per_day == 3

    reset = await world.admin.slash(
        world.channel, "avatar-admin quota set", setting="renders_per_day"
    )
    assert reset.response.content.endswith("now **10** (default).")


async def test_invalid_quota_is_refused(world: World) -> None:
    result = await world.admin.slash(
        world.channel, "avatar-admin quota set", setting="images_per_render", value=9
    )
    expect_errors(world.env, InvalidInput)
    # Above the engine's limit of 4, and so above the operator's ceiling: named first.
    assert result.ephemeral and "images_per_render at most 4" in result.response.content


async def test_members_do_not_see_admin_commands(world: World) -> None:
    assert not any(
        c.startswith("avatar-admin") for c in world.bob.available_commands(world.channel)
    )
    assert "avatar-admin quota show" in world.admin.available_commands(world.channel)
    with pytest.raises(SetupError):
        await world.bob.slash(world.channel, "avatar-admin quota show")


async def test_admin_commands_are_checked_again_by_the_bot(world: World) -> None:
    """A server may grant the command to anyone in its settings; the bot still refuses."""
    commands = await world.bot.tree.fetch_commands()
    admin_command = next(c for c in commands if c.name == "avatar-admin")
    world.guild.set_command_permissions(admin_command, {world.bob: True})
    assert "avatar-admin quota set" in world.bob.available_commands(world.channel)

    result = await world.bob.slash(
        world.channel, "avatar-admin quota set", setting="renders_per_day", value=1000
    )
    expect_errors(world.env, app_commands.MissingPermissions)
    assert result.ephemeral
    assert result.response.content == "You need the Manage Guild permission to use this command."
    assert (await world.bot.services.quotas.get(world.guild.id)).renders_per_day == 10


async def test_usage_report_and_grant(world: World) -> None:
    await create_avatar(world, world.alice)
    await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")

    report = await world.admin.slash(world.channel, "avatar-admin usage", days=2)
    content = report.response.content
    assert content.startswith("Last 2 day(s), net per member:")
    assert f"<@{world.alice.id}>: 1" in content
    # Beside the table, a chart: a PNG of renders per day per member.
    [chart] = report.response.attachments
    assert chart.filename == "usage.png"
    with Image.open(io.BytesIO(await chart.read())) as image:
        assert image.format == "PNG" and image.width >= 800
    only_bob = await world.admin.slash(world.channel, "avatar-admin usage", member=world.bob)
    assert only_bob.response.content == "No renders in the last 7 day(s)."
    assert only_bob.response.attachments == []  # nothing to draw

    granted = await world.admin.slash(
        world.channel, "avatar-admin grant", member=world.alice, amount=5
    )
    assert "14 more time(s) today" in granted.response.content


async def test_purge_removes_a_members_renders_after_confirmation(world: World) -> None:
    await create_avatar(world, world.alice)
    rendered = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="x")
    assert rendered.followups

    asked = await world.admin.slash(world.channel, "avatar-admin purge", member=world.alice)
    await world.admin.click(asked.response, label="Remove")
    assert asked.response.content.startswith("Removed 1 render(s) and 1 image(s)")
    assert await world.bot.services.jobs.undelivered() == []
    # Her avatar is hers: it stays.
    assert [a.name for a in await world.bot.services.avatars.list(world.alice.id)] == ["Mug"]


async def test_every_option_of_every_command_has_a_description(world: World) -> None:
    missing = []
    for command in world.bot.tree.walk_commands():
        if isinstance(command, app_commands.Command):
            for parameter in command.parameters:
                if not parameter.description or parameter.description == "…":
                    missing.append(f"/{command.qualified_name} {parameter.name}")
    assert missing == []
