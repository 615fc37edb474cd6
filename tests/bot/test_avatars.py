"""``/avatar create|list|show|rename|delete|forget-me|usage|help`` end to end on SimCord."""

from __future__ import annotations

from pathlib import Path

import bot as bot_package
from bot.errors import InvalidInput, NotFound
from bot.services.avatars import NoUsablePhotos
from tests.fixtures.discord import SIMCORD, World, create_avatar, expect_errors, object_photo

pytestmark = SIMCORD

SAMPLES = Path(bot_package.__file__).parent / "assets" / "samples"


def sample(name: str) -> tuple[str, bytes]:
    return name, (SAMPLES / name).read_bytes()


def modal_controls(modal: dict) -> dict[str, dict]:
    """custom_id → component of a modal payload (inside its labels)."""
    found: dict[str, dict] = {}
    for node in modal["components"]:
        child = node.get("component")
        if child and "custom_id" in child:
            found[child["custom_id"]] = child
    return found


async def test_create_opens_a_form_with_photos_and_consent(world: World) -> None:
    shown = await world.alice.slash(world.channel, "avatar create")
    assert shown.modal is not None
    controls = modal_controls(shown.modal)
    assert set(controls) == {"name", "kind", "photos", "consent"}
    assert controls["photos"]["max_values"] == 10 and controls["photos"]["min_values"] == 1
    assert controls["consent"]["required"] and controls["consent"]["min_values"] == 1
    assert [o["value"] for o in controls["kind"]["options"]] == ["person", "pet", "object"]
    texts = [n.get("content", "") for n in shown.modal["components"]]
    assert any("permission" in t for t in texts)  # the consent statement itself


async def test_create_person_keeps_faces_and_says_why_others_were_refused(world: World) -> None:
    photos = [
        sample("person-1.jpg"),
        sample("person-2.jpg"),
        sample("cat-1.jpg"),
        ("notes.txt", b"not a photo at all"),
    ]
    result = await create_avatar(world, world.alice, "Me", kind="person", photos=photos)

    assert result.ephemeral
    content = result.response.content
    assert content.startswith("**Me** is ready (person, 2 photos kept)")
    assert "Not kept:" in content
    assert "cat-1.jpg" in content and "notes.txt" in content
    [sheet] = result.response.attachments
    assert sheet.filename.startswith("photos.")
    [embed] = result.response.embeds
    assert {f.name: f.value for f in embed.fields}["Photos"] == "2"
    view = await world.bot.services.avatars.get(world.alice.id, "me")
    assert view.kind == "person" and view.photo_count == 2


async def test_create_with_no_usable_photo_is_refused_with_reasons(world: World) -> None:
    photos = [("a.txt", b"hello"), ("b.gif", b"GIF89a broken")]
    result = await create_avatar(world, world.alice, "Nope", photos=photos)
    expect_errors(world.env, NoUsablePhotos)
    assert result.ephemeral
    assert result.response.content.startswith("None of the photos can be used")
    assert "a.txt" in result.response.content
    assert await world.bot.services.avatars.list(world.alice.id) == []


async def test_list_show_and_rename(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.alice, "Cat")

    listed = await world.alice.slash(world.channel, "avatar list")
    assert listed.ephemeral
    assert listed.response.content.splitlines()[1:] == [
        "- **Cat** — object, 2 photos",
        "- **Mug** — object, 2 photos",
    ]

    shown = await world.alice.slash(world.channel, "avatar show", avatar="mug")
    [embed] = shown.response.embeds
    assert embed.title == "Mug"
    assert len(shown.response.attachments) == 1

    renamed = await world.alice.slash(world.channel, "avatar rename", avatar="Mug", new_name="Cup")
    assert renamed.response.content == "Renamed to **Cup**."
    names = [a.name for a in await world.bot.services.avatars.list(world.alice.id)]
    assert names == ["Cat", "Cup"]


async def test_names_are_per_member_and_another_members_avatar_is_invisible(
    world: World,
) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.bob, "Mug")  # bob's own Mug: fine
    again = await create_avatar(world, world.alice, "mug", photos=[("x.png", object_photo(77))])
    expect_errors(world.env, InvalidInput)
    assert "already have an avatar" in again.response.content

    shown = await world.bob.slash(world.channel, "avatar show", avatar="Cat")
    expect_errors(world.env, NotFound)
    assert shown.ephemeral and shown.response.attachments == []


async def test_delete_asks_first(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    asked = await world.alice.slash(world.channel, "avatar delete", avatar="Mug")
    question = asked.response
    assert question.content.startswith("Delete **Mug**")

    await world.alice.click(question, label="Cancel")
    assert question.content == "Cancelled, nothing changed."
    assert len(await world.bot.services.avatars.list(world.alice.id)) == 1

    asked = await world.alice.slash(world.channel, "avatar delete", avatar="Mug")
    await world.alice.click(asked.response, label="Delete")
    assert asked.response.content == "**Mug** is deleted, photos and all."
    assert await world.bot.services.avatars.list(world.alice.id) == []


async def test_forget_me_erases_everything_after_confirmation(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await create_avatar(world, world.bob, "Dog")
    rendered = await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="hat")
    assert rendered.followups

    asked = await world.alice.slash(world.channel, "avatar forget-me")
    await world.alice.click(asked.response, label="Erase everything")
    assert asked.response.content.startswith("Done. Erased 1 avatar(s), 2 photo(s), 1 render(s)")

    services = world.bot.services
    assert await services.avatars.list(world.alice.id) == []
    assert await services.jobs.undelivered() == [] and await services.jobs.active() == []
    assert [a.name for a in await services.avatars.list(world.bob.id)] == ["Dog"]


async def test_usage_help_and_a_bad_new_name(world: World) -> None:
    await create_avatar(world, world.alice, "Mug")
    await world.alice.slash(world.channel, "avatar render", avatar="Mug", prompt="a hat")
    usage = await world.alice.slash(world.channel, "avatar usage")
    assert usage.response.content.startswith("You have used 1 of 10 renders today")
    assert "<t:" in usage.response.content

    helped = await world.alice.slash(world.channel, "avatar help")
    assert helped.ephemeral and "/avatar create" in helped.response.content

    bad = await world.alice.slash(
        world.channel, "avatar rename", avatar="Mug", new_name="@everyone"
    )
    expect_errors(world.env, InvalidInput)
    assert bad.ephemeral


async def test_direct_messages_get_clear_answers(world: World) -> None:
    # /avatar works in DMs, on the personal quota (tests/bot/test_user_install.py).
    alice = world.alice.user
    render = await alice.slash("avatar render", avatar="Mug", prompt="a hat")
    expect_errors(world.env, NotFound)
    assert render.ephemeral and "no avatar by that name" in render.response.content
    usage = await alice.slash("avatar usage")
    assert usage.response.content.startswith("You have used 0 of 5 renders today outside servers")
    listed = await alice.slash("avatar list")
    assert listed.response.content.startswith("You have no avatar yet")
    assert "avatar-admin quota show" not in alice.available_commands()
