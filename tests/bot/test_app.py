"""The bot as a whole: ``create_bot``, command sync only on change, sharding, unexpected errors."""

from __future__ import annotations

import logging
from pathlib import Path

import discord
import pytest
import simcord

from bot.app import AvatarBot, ShardedAvatarBot, create_bot
from bot.errors import InternalError, NotFound
from bot.services.command_tree import CommandTreeHashes
from bot.ui.sync import tree_hash
from tests.fixtures.discord import (
    SIMCORD,
    World,
    bot_test_settings,
    create_avatar,
    expect_errors,
)

pytestmark = SIMCORD


def syncs(env) -> int:
    return sum(
        1
        for e in env.http_requests
        if e.method == "PUT"
        and e.path.startswith("/applications/")
        and e.path.endswith("/commands")
    )


def test_create_bot_builds_without_connecting(tmp_path: Path) -> None:
    bot = create_bot(bot_test_settings(tmp_path))
    assert isinstance(bot, AvatarBot) and not isinstance(bot, discord.AutoShardedClient)
    assert bot.is_closed() is False and bot.user is None
    with pytest.raises(InternalError):
        bot.services  # noqa: B018 - built in setup_hook, after login
    sharded = create_bot(bot_test_settings(tmp_path, shard_count=3))
    assert isinstance(sharded, ShardedAvatarBot) and sharded.shard_count == 3
    assert not bot.intents.message_content and not bot.intents.members  # nothing privileged


async def test_commands_are_synced_only_when_the_tree_changed(world: World, bots) -> None:
    assert syncs(world.env) == 1
    old = world.bot
    stored = tree_hash(old.tree)

    await world.env.restart_bot(bots())
    await old.close()
    assert syncs(world.env) == 1  # same tree, same hash: no call to Discord
    listed = await world.alice.slash(world.channel, "avatar list")  # still registered
    assert listed.response.content.startswith("You have no avatar")
    assert tree_hash(world.bot.tree) == stored

    await CommandTreeHashes(world.bot.database).forget(world.bot.application_id)
    old = world.bot
    await world.env.restart_bot(bots())
    await old.close()
    assert syncs(world.env) == 2


async def test_a_sharded_bot_serves_guilds_on_every_shard(tmp_path: Path, bots) -> None:
    bots.settings = bot_test_settings(tmp_path, shard_count=2)
    bot = bots()
    assert isinstance(bot, discord.AutoShardedClient)
    async with simcord.run(bot, settle_timeout=60.0) as env:
        for shard in (0, 1):
            guild = env.create_guild(name=f"shard {shard}", shard_id=shard)
            channel = guild.create_text_channel("general")
            member = guild.add_member(env.create_user(f"user{shard}"))
            result = await member.slash(channel, "avatar list")
            assert result.response.content.startswith("You have no avatar")
        assert sorted(bot.shards) == [0, 1]


async def test_unexpected_errors_show_only_a_reference_that_the_log_has(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await create_avatar(world, world.alice)

    async def broken(owner_id: int) -> list[object]:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(world.bot.services.avatars, "list", broken)
    with caplog.at_level(logging.ERROR):
        result = await world.alice.slash(world.channel, "avatar list")
    assert [type(e.original) for e in world.env.errors] == [RuntimeError]
    text = result.response.content
    assert result.ephemeral and "database on fire" not in text
    reference = text.split("`")[1]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


def test_discord_endpoints_come_from_the_settings(tmp_path: Path, monkeypatch) -> None:
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    from bot.app import configure_discord_endpoints

    monkeypatch.setattr(Route, "BASE", Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    settings = bot_test_settings(
        tmp_path,
        discord_api_base="http://127.0.0.1:8080/api/v10/",
        discord_gateway_url="ws://127.0.0.1:8081/",
    )
    configure_discord_endpoints(settings)
    assert Route.BASE == "http://127.0.0.1:8080/api/v10"
    assert str(DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:8081/"


def test_run_without_a_token_explains_where_to_get_one(tmp_path: Path, monkeypatch, capsys) -> None:
    from bot.cli import main

    monkeypatch.delenv("AVATARBOT_DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path))
    assert main(["run"]) == 2
    assert "AVATARBOT_DISCORD_TOKEN" in capsys.readouterr().err


@pytest.mark.parametrize(
    "order",
    [
        ("bot.cogs.avatars", "bot.cogs.render", "bot.cogs.admin"),
        ("bot.cogs.render", "bot.cogs.avatars", "bot.cogs.admin"),
        ("bot.cogs.admin", "bot.cogs.render", "bot.cogs.avatars"),
    ],
)
async def test_the_cogs_load_in_any_order_to_the_same_tree(world: World, order) -> None:
    bot = world.bot
    stored = tree_hash(bot.tree)
    # Unloaded dependent first: render's command leaves the /avatar group before it goes.
    for name in ("bot.cogs.admin", "bot.cogs.render", "bot.cogs.avatars"):
        await bot.unload_extension(name)
    assert bot.tree.get_command("avatar") is None

    for name in order:
        if name not in bot.extensions:  # render loads avatars itself when it comes first
            await bot.load_extension(name)

    group = bot.tree.get_command("avatar")
    assert isinstance(group, discord.app_commands.Group)
    assert group.get_command("render") is not None
    assert tree_hash(bot.tree) == stored
    # The reloaded cogs answer it: the render cog's handler asks the reloaded services.
    rendered = await world.alice.slash(world.channel, "avatar render", avatar="Nobody", prompt="x")
    assert rendered.response.content == "You have no avatar by that name. See /avatar list."
    expect_errors(world.env, NotFound)


async def test_commands_sync_for_servers_only_when_user_install_is_off(
    world: World, bots, caplog: pytest.LogCaptureFixture
) -> None:
    """Discord refuses commands offering a user install when the application has it off: the
    bot syncs them again for server installs and says so in one line, not a failed start."""
    await CommandTreeHashes(world.bot.database).forget(world.bot.application_id)
    world.env.inject_error(
        "PUT", "/applications/*/commands", status=400, code=50035, message="Invalid Form Body"
    )  # the first try only
    old = world.bot
    with caplog.at_level(logging.WARNING, logger="bot.ui.sync"):
        await world.env.restart_bot(bots())
    await old.close()
    assert syncs(world.env) == 3  # the first start, then the refused try and the retry
    [line] = [r.getMessage() for r in caplog.records if r.name == "bot.ui.sync"]
    assert "Turn on User Install" in line
    [avatar] = [c for c in world.bot.tree.get_commands() if c.name == "avatar"]
    assert avatar.allowed_installs is not None and not avatar.allowed_installs.user
    listed = await world.alice.slash(world.channel, "avatar list")  # registered in servers
    assert listed.response.content.startswith("You have no avatar")
    # The full tree's hash was not stored: the next start offers the user install again.
    assert await CommandTreeHashes(world.bot.database).stored(world.bot.application_id) != (
        tree_hash(old.tree)
    )
