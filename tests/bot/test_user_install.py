"""Issue 26, the bot wherever members are, on SimCord: ``/avatar`` in a DM with the bot and,
through a member's own install, in a server the bot is not in; both count against the
operator's personal quota, apart from every server's.

SimCord sends every guild interaction from a guild the bot is in, so a server without the bot
is modelled as the bot's missing cache entry for it (what discord.py sees there: a guild id
and a partial guild); the command tree's install types and contexts are checked as synced.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from bot.cli import main
from bot.config import QuotaDefaults
from bot.errors import NotFound, QuotaExceeded
from bot.ui.jobs import MAX_POLL
from bot.ui.sync import tree_payload
from tests.fixtures.discord import (
    SIMCORD,
    World,
    button_ids,
    create_avatar,
    expect_errors,
    object_photo,
    result_card,
)

PERSONAL = QuotaDefaults(renders_per_day=2)
pytestmark = [SIMCORD, pytest.mark.bot_settings(personal_quotas=PERSONAL)]

GUILD, BOT_DM, PRIVATE_CHANNEL = 0, 1, 2


def job_id(result: object) -> int:
    reroll = next(i for i in button_ids(result) if i.startswith("avatarbot:reroll:"))
    return int(reroll.rsplit(":", 1)[1])


def test_avatar_is_installable_anywhere_and_admin_only_in_servers(world: World) -> None:
    commands = {c["name"]: c for c in tree_payload(world.bot.tree)}
    avatar, admin = commands["avatar"], commands["avatar-admin"]
    assert sorted(avatar["integration_types"]) == [0, 1]  # guild install, user install
    assert sorted(avatar["contexts"]) == [GUILD, BOT_DM, PRIVATE_CHANNEL]
    assert admin["integration_types"] == [0] and admin["contexts"] == [GUILD]


def test_the_user_install_link_asks_for_commands_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["invite", "--application-id", "1", "--user"]) == 0
    [url] = capsys.readouterr().out.splitlines()
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "client_id": ["1"],
        "scope": ["applications.commands"],  # no bot joins anything, no permission asked
        "integration_type": ["1"],  # Discord's user install
    }


async def test_a_dm_render_is_posted_in_the_dm_and_spends_the_personal_quota(
    world: World,
) -> None:
    await create_avatar(world, world.alice)
    alice = world.alice.user
    quotas = world.bot.services.quotas

    rendered = await alice.slash("avatar render", avatar="Mug", prompt="a hat")
    assert rendered.ephemeral and rendered.response.content.startswith("Done")
    [posted] = rendered.followups
    assert posted.channel_id == alice.dm_channel.id  # only alice and the bot are there
    assert result_card(posted).prompt == "a hat"
    assert (await quotas.usage(None, world.alice.id)).used == 1
    assert (await quotas.usage(world.guild.id, world.alice.id)).used == 0

    usage = await alice.slash("avatar usage")
    assert usage.response.content.startswith("You have used 1 of 2 renders today outside servers")

    await alice.slash("avatar render", avatar="Mug", prompt="a scarf")
    refused = await alice.slash("avatar render", avatar="Mug", prompt="a coat")
    expect_errors(world.env, QuotaExceeded)
    assert refused.ephemeral and "used your 2 renders" in refused.response.content
    assert refused.followups == [] or all(f.ephemeral for f in refused.followups)

    # The server's quota is its own: spending the personal one leaves it whole.
    in_server = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="x")
    assert in_server.response.content.startswith("Done")
    assert (await quotas.usage(world.guild.id, world.alice.id)).used == 1


async def test_an_avatar_made_in_a_dm_renders_in_a_server(world: World) -> None:
    alice = world.alice.user
    shown = await alice.slash("avatar create")
    assert shown.modal is not None
    photos = [(f"cup-{i}.png", object_photo(300 + i)) for i in range(2)]
    made = await alice.submit_modal(
        shown, {"name": "Cup", "kind": ["object"], "photos": photos, "consent": ["accepted"]}
    )
    assert made.ephemeral and made.response.content.startswith("**Cup** is ready")
    rendered = await world.alice.slash(world.channel, "avatar render", avatar="Cup", prompt="x")
    assert rendered.response.content.startswith("Done")


async def test_a_user_install_render_in_a_server_without_the_bot_is_private(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_avatar(world, world.alice)
    # From here on the bot is not in the server: only alice's own install answers there.
    server = world.guild.id
    monkeypatch.setattr(world.bot, "get_guild", lambda guild_id: None)

    rendered = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="hat")
    [posted] = rendered.followups
    assert posted.ephemeral  # alice alone sees it; nothing public in a server without the bot
    quotas = world.bot.services.quotas
    assert (await quotas.usage(None, world.alice.id)).used == 1
    assert (await quotas.usage(server, world.alice.id)).used == 0
    job = await world.bot.services.jobs.view(job_id(posted))
    assert (job.guild_id, job.channel_id) == (None, None)  # nothing kept of that server

    usage = await world.alice.slash(world.channel, "avatar usage")
    assert "outside servers" in usage.response.content
    await world.alice.click(posted, label="Delete")  # an ephemeral result goes like any other
    with pytest.raises(NotFound):
        await world.bot.services.jobs.view(job.id)

    # Forget-me: the personal day's usage stays counted (a fresh quota is not a way out).
    asked = await world.alice.slash(world.channel, "avatar forget-me")
    await world.alice.click(asked.response, label="Erase everything")
    assert (await quotas.usage(None, world.alice.id)).used == 1


async def test_a_private_result_after_the_token_expired_is_a_dm_never_the_channel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_avatar(world, world.alice)
    monkeypatch.setattr(world.bot, "get_guild", lambda guild_id: None)
    world.bot.services.dispatcher.pause()
    queued = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="hat")
    assert queued.response.content.startswith("Queued")
    await world.env.advance_time(16 * 60)  # the interaction token is dead now
    world.bot.services.dispatcher.resume()
    await world.env.advance_time(MAX_POLL)

    me = world.bot.user
    assert me is not None
    assert [m for m in world.channel.history() if m.author.id == me.id] == []
    [delivered] = [m for m in world.alice.user.dm_channel.history() if m.components]
    assert result_card(delivered).prompt == "hat"
    assert queued.followups == []
