"""The prompt policy: the default blocklist file, channels, person avatars, guild changes."""

from __future__ import annotations

import pytest

from bot.errors import Forbidden, InvalidInput, PromptRefused
from bot.services.container import Services
from bot.services.prompt_policy import (
    MINORS_MESSAGE,
    SEXUAL_CHANNEL_MESSAGE,
    SEXUAL_PERSON_MESSAGE,
    PromptPolicy,
    default_blocklist,
    parse_blocklist,
)
from db.repositories import audit as audit_repo
from tests.fixtures.services import CHANNEL, GUILD, create_now, face_photo, make_avatar

POLICY = PromptPolicy.base(["operatorword"])


def refused(prompt: str, *, age_restricted: bool = False, person: bool = False) -> str | None:
    try:
        POLICY.check(prompt, "", age_restricted=age_restricted, person=person)
    except PromptRefused as exc:
        return exc.message
    return None


def test_default_file_loads_with_every_section() -> None:
    defaults = default_blocklist()
    assert default_blocklist() is defaults  # loaded once
    for section in ("sexual", "minors", "always"):
        assert len(defaults.entries(section)) >= 5, section
    assert "nude" in defaults.entries("sexual") and "child" in defaults.entries("minors")


def test_file_format_errors() -> None:
    with pytest.raises(ValueError, match="unknown section"):
        parse_blocklist("[violence]\ngore\n")
    with pytest.raises(ValueError, match="before any"):
        parse_blocklist("gore\n")
    with pytest.raises(ValueError):
        parse_blocklist("[sexual]\n/(unclosed/\n")
    parsed = parse_blocklist("# header\n[sexual]\nnude  # trailing comment\n\n/a+b/\n")
    assert parsed.entries("sexual") == ("nude", "/a+b/")


def test_sexual_prompts_by_channel_and_avatar() -> None:
    prompt = "a nude statue"
    assert refused(prompt) == SEXUAL_CHANNEL_MESSAGE
    assert refused(prompt, age_restricted=True) is None  # pets and objects, age-restricted
    assert refused(prompt, person=True) == SEXUAL_PERSON_MESSAGE
    assert refused(prompt, age_restricted=True, person=True) == SEXUAL_PERSON_MESSAGE
    assert refused("a cat in a garden", person=True) is None
    # The negative prompt may name what to avoid.
    POLICY.check("a portrait", "nsfw, nude", age_restricted=False, person=True)


@pytest.mark.parametrize(
    "prompt",
    [
        "NUDE",
        "n.u.d.e",
        "n u d e",
        "nu-de",
        "nud3",
        "nuuuude",
        "ｎｕｄｅ",
        "nu\u200bde",
        "p0rn",
        "nudes",
    ],
)
def test_evasions_are_caught(prompt: str) -> None:
    assert refused(f"a {prompt} painting") == SEXUAL_CHANNEL_MESSAGE


@pytest.mark.parametrize(
    "prompt", ["a denuded hillside", "sussex countryside", "3d render of a kid", "a 18 yo man"]
)
def test_innocent_prompts_pass(prompt: str) -> None:
    assert refused(prompt) is None


def test_minors_with_sexual_terms_are_refused_everywhere() -> None:
    assert refused("a child in a park") is None
    for prompt in ["sexy child", "nude teen", "erotic photo of a 12 yo"]:
        assert refused(prompt, age_restricted=True) == MINORS_MESSAGE
    assert refused("loli", age_restricted=True) is not None  # [always]
    assert refused("an operatorword here", age_restricted=True) is not None
    with pytest.raises(PromptRefused):
        POLICY.check("fine", "operatorword", age_restricted=True, person=False)


def test_guild_additions_and_lifts() -> None:
    guild = POLICY.for_guild(("clown", "/spi+der/"), ("nude",))
    assert POLICY.for_guild(("clown", "/spi+der/"), ("nude",)) is guild  # cached
    for prompt in ("a clown", "a spiiider"):
        with pytest.raises(PromptRefused):
            guild.check(prompt, age_restricted=True, person=False)
    guild.check("a nude statue", age_restricted=False, person=False)  # lifted here
    with pytest.raises(PromptRefused, match="never rendered"):
        guild.check("a nude statue", age_restricted=True, person=True)  # never for people
    with pytest.raises(PromptRefused, match="minors"):
        guild.check("a nude child", age_restricted=True, person=False)
    # Lifting minors or always entries does nothing.
    lax = POLICY.for_guild((), ("child", "loli"))
    with pytest.raises(PromptRefused):
        lax.check("sexy child", age_restricted=True, person=False)
    with pytest.raises(PromptRefused):
        lax.check("loli", age_restricted=True, person=False)


async def test_admin_blocklist_commands_validate_and_audit(services: Services) -> None:
    blocklist = services.blocklist
    with pytest.raises(Forbidden):
        await blocklist.add(GUILD, "clown", actor_id=5, actor_is_admin=False)
    # Hostile entries too: look-around RE2 refuses, nothing left once normalised.
    for bad in ["", "x", "/(unclosed/", "/.*/", "y" * 61, "/(?=a)b/", "!!!", "\u0301\u0301x"]:
        with pytest.raises(InvalidInput):
            await blocklist.add(GUILD, bad, actor_id=5, actor_is_admin=True)
    added = await blocklist.add(GUILD, "  Clown ", actor_id=5, actor_is_admin=True)
    assert added.action == "blocked" and added.view.blocked == ("clown",)
    with pytest.raises(InvalidInput, match="already"):
        await blocklist.add(GUILD, "CLOWN", actor_id=5, actor_is_admin=True)
    lifted = await blocklist.remove(GUILD, "nude", actor_id=5, actor_is_admin=True)
    assert lifted.action == "lifted" and lifted.view.lifted == ("nude",)
    for protected in ("child", "loli"):
        with pytest.raises(InvalidInput, match="cannot be lifted"):
            await blocklist.remove(GUILD, protected, actor_id=5, actor_is_admin=True)
    with pytest.raises(InvalidInput, match="neither"):
        await blocklist.remove(GUILD, "banana", actor_id=5, actor_is_admin=True)

    await make_avatar(services, 7, "Mia")
    with pytest.raises(PromptRefused):
        await services.renders.request(7, GUILD, CHANNEL, "Mia", "a clown")
    await services.renders.request(7, GUILD, CHANNEL, "Mia", "a nude statue")  # lifted
    assert (await blocklist.remove(GUILD, "clown", actor_id=5, actor_is_admin=True)).action == (
        "unblocked"
    )
    assert (await blocklist.add(GUILD, "nude", actor_id=5, actor_is_admin=True)).action == (
        "restored"
    )
    view = await blocklist.show(GUILD, actor_is_admin=True)
    assert view.blocked == () and view.lifted == ()
    async with services.database.begin(readonly=True) as session:
        entries = await audit_repo.recent(session, GUILD, 10)
    assert [(e.action, e.detail["term"], e.detail["action"]) for e in reversed(entries)] == [
        ("blocklist.add", "clown", "blocked"),
        ("blocklist.remove", "nude", "lifted"),
        ("blocklist.remove", "clown", "unblocked"),
        ("blocklist.add", "nude", "restored"),
    ]


async def test_sexual_prompt_with_a_person_never_creates_a_job(services: Services) -> None:
    await create_now(services, 7, GUILD, "Me", "person", [("me.jpg", face_photo())])
    await make_avatar(services, 7, "Mug")
    for age_restricted in (False, True):
        with pytest.raises(PromptRefused, match="never rendered"):
            await services.renders.request(
                7, GUILD, CHANNEL, "Me", "nude on a beach", age_restricted=age_restricted
            )
    with pytest.raises(PromptRefused, match="age-restricted"):
        await services.renders.request(7, GUILD, CHANNEL, "Mug", "a nude mug")
    assert await services.jobs.active() == []
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    # An object in an age-restricted channel may; a reroll keeps the channel's flag.
    ticket = await services.renders.request(
        7, GUILD, CHANNEL, "Mug", "a nude mug", age_restricted=True
    )
    await services.dispatcher.run_job(ticket.job_id)
    again = await services.renders.reroll(7, ticket.job_id)
    [job] = [j for j in await services.jobs.active() if j.id == again.job_id]
    assert job.settings.age_restricted is True
