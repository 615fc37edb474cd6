"""Friends in one picture, with their consent (issue 26), end to end through real discord.py
on SimCord with the ``tiny-flux2`` profile (two subjects): Alice asks for Bob's avatar, Bob
approves once by DM, one render is posted with both; a second request asks again; "always
allow" skips asking; Bob revokes and turns asking off, and Alice is refused; declined and
expired requests charge nothing; a sexual prompt with Bob's person avatar is refused before
Bob is asked; the guild can forbid it all; Bob's forget-me removes the joint render, its
message included, and so does deleting his avatar; with his DMs closed the request waits in
``/avatar requests``. The services' rules: tests/services/test_friends.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import discord
import pytest
from sqlalchemy import update

from bot.app import AvatarBot
from bot.config import Settings
from bot.errors import Forbidden, PromptRefused
from bot.services.ports import EnginePort
from db.models import AvatarAsk
from db.types import utcnow
from tests.fixtures.discord import (
    SIMCORD,
    BotFactory,
    World,
    button_ids,
    create_avatar,
    expect_errors,
    result_card,
)
from tests.fixtures.services import TINY_FLUX2, face_photo

pytestmark = SIMCORD

PROMPT = "the mug from image 1 and the cat from image 2 on a beach"


@pytest.fixture
def simcord_bot(bot_settings: Settings, tiny_flux2_port: EnginePort) -> AvatarBot:
    return BotFactory(bot_settings.model_copy(update={"engine": TINY_FLUX2}), tiny_flux2_port)()


async def ask(world: World, prompt: str = PROMPT, **options: Any) -> Any:
    options.setdefault("avatar", "Mug")
    options.setdefault("with", "Cat")
    return await world.alice.slash(
        world.channel, "avatar render", prompt=prompt, friend=world.bob, **options
    )


def requests_to(member: Any) -> list[Any]:
    """The requests the bot sent the member by DM (as they read now), oldest first."""
    history = list(member.user.dm_channel.history())
    return [m for m in history if m.author.bot]


def posted(world: World) -> list[Any]:
    """The results posted in the channel (gallery cards with a Reroll button)."""
    return [
        m
        for m in world.channel.history()
        if any(i.startswith("avatarbot:reroll:") for i in button_ids(m))
    ]


async def used(world: World) -> int:
    return (await world.bot.services.quotas.usage(world.guild.id, world.alice.id)).used


@pytest.fixture
async def friends(world: World) -> World:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.bob, "Cat", kind="pet")
    return world


async def test_ask_approve_once_always_allow_revoke(friends: World) -> None:
    world = friends
    services = world.bot.services
    # Not shared yet: refused, and Bob hears nothing.
    refused = await ask(world)
    assert "that others may ask for" in refused.response.content
    assert requests_to(world.bob) == []
    expect_errors(world.env, Forbidden)
    shared = await world.bob.slash(
        world.channel, "avatar sharing", avatar="Cat", others_may_ask=True
    )
    assert shared.response.content.startswith("Other members may now ask")
    listed = await world.bob.slash(world.channel, "avatar list")
    assert "**Cat** — pet, 2 photos — others may ask to render with it" in listed.response.content

    # Alice asks: Bob gets a DM, nothing is queued or counted.
    waiting = await ask(world)
    assert waiting.response.content.startswith(f"Asked <@{world.bob.id}> to approve")
    assert "by direct message" in waiting.response.content
    [request] = requests_to(world.bob)
    assert f"<@{world.alice.id}>" in request.content and "**Mug**" in request.content
    assert PROMPT in request.content and f"<#{world.channel.id}>" in request.content
    assert posted(world) == [] and await used(world) == 0

    # Approve once: one render with both, posted in the channel, charged to Alice.
    await world.bob.user.click(request, label="Approve once")
    [request] = requests_to(world.bob)
    assert request.content.startswith("Approved: the render with **Cat** is queued.")
    assert button_ids(request) == []
    [result] = posted(world)
    assert result_card(result).subjects == "Avatars: Mug + Cat"
    assert await used(world) == 1
    assert (await services.quotas.usage(world.guild.id, world.bob.id)).used == 0
    assert waiting.response.content.startswith("Done"), waiting.response.content

    # A reroll of it, or a second render, asks again.
    reroll = await world.alice.click(result, label="Reroll")
    assert "approved one render only" in reroll.response.content
    await ask(world, seed=3)
    [_, second] = requests_to(world.bob)
    await world.bob.user.click(second, label="Always allow")
    assert "without asking" in requests_to(world.bob)[1].content
    assert len(posted(world)) == 2 and await used(world) == 2
    listed = await world.bob.slash(world.channel, "avatar list")
    assert f"- **Cat** — <@{world.alice.id}>" in listed.response.content

    # Always allowed: no request, rendered at once.
    direct = await ask(world, seed=4)
    assert direct.response.content.startswith("Done"), direct.response.content
    assert len(requests_to(world.bob)) == 2 and len(posted(world)) == 3

    # Bob stops sharing and revokes: Alice is refused.
    await world.bob.slash(world.channel, "avatar sharing", avatar="Cat", others_may_ask=False)
    revoked = await world.bob.slash(
        world.channel, "avatar revoke", member=world.alice, avatar="Cat"
    )
    assert revoked.response.content.startswith("Revoked")
    refused = await ask(world)
    assert "that others may ask for" in refused.response.content
    expect_errors(world.env, Forbidden)
    assert await used(world) == 3

    # Both see the joint renders in their history, charged to Alice.
    mine = (await world.alice.slash(world.channel, "avatar usage")).response.content
    theirs = (await world.bob.slash(world.channel, "avatar usage")).response.content
    assert mine.startswith("You have used 3 of") and theirs.startswith("You have used 0 of")
    for text in (mine, theirs):
        assert "Renders with another member's avatar" in text
    assert mine.count(f"you with **Cat** of <@{world.bob.id}> (charged to you)") == 3
    assert theirs.count(f"<@{world.alice.id}> with your **Cat**") == 3

    # Bob's forget-me removes the joint renders, their messages included: Alice sees them go.
    erase = await world.bob.slash(world.channel, "avatar forget-me")
    await world.bob.click(erase.response, label="Erase everything")
    assert posted(world) == []
    mine = (await world.alice.slash(world.channel, "avatar usage")).response.content
    assert "Renders with another member's avatar" not in mine
    assert [a.name for a in await services.avatars.list(world.alice.id)] == ["Mug"]
    assert await services.friends.grants(world.alice.id) == []


async def test_declined_and_expired_requests_charge_nothing(friends: World) -> None:
    world = friends
    await world.bob.slash(world.channel, "avatar sharing", avatar="Cat", others_may_ask=True)
    declined = await ask(world)
    [request] = requests_to(world.bob)
    await world.bob.user.click(request, label="Decline")
    assert requests_to(world.bob)[0].content.startswith("Declined")
    assert declined.response.content == (
        f"<@{world.bob.id}> declined rendering with their avatar **Cat**. Nothing was counted."
    )

    await ask(world)
    [_, late] = requests_to(world.bob)
    async with world.bot.services.database.begin() as session:
        await session.execute(update(AvatarAsk).values(expires_at=utcnow() - timedelta(seconds=1)))
    answer = await world.bob.user.click(late, label="Approve once")
    assert "expired" in answer.followups[0].content
    assert posted(world) == [] and await used(world) == 0


async def test_a_sexual_prompt_with_a_person_is_refused_before_asking(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.bob, "Bob", kind="person", photos=[("me.jpg", face_photo())])
    await world.bob.slash(world.channel, "avatar sharing", avatar="Bob", others_may_ask=True)
    refused = await ask(world, "a nude statue", **{"with": "Bob"})
    assert refused.ephemeral
    expect_errors(world.env, PromptRefused)
    assert requests_to(world.bob) == []
    assert await used(world) == 0


async def test_the_guild_can_forbid_cross_member_renders(friends: World) -> None:
    world = friends
    await world.bob.slash(world.channel, "avatar sharing", avatar="Cat", others_may_ask=True)
    await world.admin.slash(world.channel, "avatar-admin safety friends", allowed=False)
    refused = await ask(world)
    assert refused.response.content == (
        "This server does not allow renders with another member's avatar."
    )
    expect_errors(world.env, Forbidden)
    assert requests_to(world.bob) == []


class _Refused:
    """Discord's answer to a DM the member does not accept (what discord.py reads of it)."""

    status = 403
    reason = "Forbidden"


async def test_closed_dms_then_deleting_the_avatar(
    friends: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = friends
    await world.bob.slash(world.channel, "avatar sharing", avatar="Cat", others_may_ask=True)

    async def closed(*args: Any, **kwargs: Any) -> None:
        raise discord.Forbidden(
            _Refused(),  # type: ignore[arg-type]
            {"code": 50007, "message": "Cannot send messages to this user"},
        )

    with monkeypatch.context() as patched:
        patched.setattr(discord.User, "send", closed)
        waiting = await ask(world)
    assert "with `/avatar requests` (their direct messages are closed)" in (
        waiting.response.content
    )
    assert requests_to(world.bob) == [] and await used(world) == 0

    shown = await world.bob.slash(world.channel, "avatar requests")
    assert shown.ephemeral and PROMPT in shown.response.content
    await world.bob.click(shown.response, label="Approve once")
    assert waiting.response.content.startswith("Done"), waiting.response.content
    assert len(posted(world)) == 1 and await used(world) == 1
    nothing = await world.bob.slash(world.channel, "avatar requests")
    assert nothing.response.content == "No request is waiting for your answer."

    # Bob deleting that avatar takes the joint render with it, its message included.
    deleting = await world.bob.slash(world.channel, "avatar delete", avatar="Cat")
    await world.bob.click(deleting.response, label="Delete")
    assert deleting.response.content == (
        "**Cat** is deleted, photos and all. 1 render(s) other members made with it are "
        "deleted too."
    )
    assert posted(world) == []
