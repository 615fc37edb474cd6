"""The negative-prompt inversion through ``/avatar render`` on SimCord: a person avatar with a
negative prompt that pushes clothing away is refused privately in every channel before any
job exists; a pet with the same negative prompt renders."""

from __future__ import annotations

import pytest

from bot.errors import PromptRefused
from tests.bot.test_prompt_policy import nothing_queued
from tests.fixtures.discord import SIMCORD, World, age_restricted, create_avatar, expect_errors
from tests.fixtures.services import face_photo

pytestmark = SIMCORD

NEGATIVE = "cl\u043ethes, shirt, bra"  # a Cyrillic о among them


async def test_a_person_with_a_clothing_negative_is_refused_and_a_pet_renders(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    after_dark = age_restricted(monkeypatch, world)
    await create_avatar(world, world.alice, "Me", kind="person", photos=[("me.jpg", face_photo())])
    for channel in (world.channel, after_dark):
        result = await world.alice.slash(
            channel, "avatar render", avatar="Me", prompt="me on a beach", negative_prompt=NEGATIVE
        )
        expect_errors(world.env, PromptRefused)
        assert result.ephemeral
        assert "never rendered without clothes" in result.response.content
        assert "bra" not in result.response.content  # the member's words are not echoed
        assert result.followups == []
    await nothing_queued(world)

    await create_avatar(world, world.alice, "Rex", kind="pet")
    result = await world.alice.slash(
        world.channel, "avatar render", avatar="Rex", prompt="on a beach", negative_prompt=NEGATIVE
    )
    assert result.response.content == "Done — your images are posted below."
    usage = await world.bot.services.quotas.usage(world.guild.id, world.alice.id)
    assert usage.used == 1
