"""The negative-prompt inversion: "me on a beach" with the negative "clothes, shirt" asks for
nudity without a sexual word in the prompt (a negative prompt pushes the model away from what
it names). The ``[undress]`` section of bot/data/prompt_blocklist.txt is read in the negative
prompt: a person avatar is refused in every channel, a prompt naming a minor in every channel
whatever the avatar; pets and objects otherwise pass ("no costume on my dog")."""

from __future__ import annotations

import pytest

from bot.errors import InvalidInput, PromptRefused
from bot.services import prompt_policy
from bot.services.container import Services
from bot.services.prompt_policy import MINORS_MESSAGE, PromptPolicy
from bot.services.results import RenderOptions
from tests.fixtures.services import CHANNEL, GUILD, create_now, face_photo, make_avatar

POLICY = PromptPolicy.base()
CHANNELS = (False, True)  # normal, age-restricted


def refused(
    prompt: str, negative: str, *, age_restricted: bool = False, person: bool = False
) -> str | None:
    try:
        POLICY.check(prompt, negative, age_restricted=age_restricted, person=person)
    except PromptRefused as exc:
        return exc.message
    return None


def undress_message() -> str:
    # Read when the test runs, not at import: the same file then also runs on the code before
    # this rule existed, where the refusal itself is what fails.
    return str(prompt_policy.UNDRESS_PERSON_MESSAGE)


@pytest.mark.parametrize(
    "negative",
    [
        "clothes, clothing, dressed, shirt",
        "underwear, bra",
        "bikini, swimsuit",
        "(clothes:1.5), censored, mosaic censoring",
        "sfw, covered up, modest",
        "no clothes",  # text encoders read "no" poorly: it may push clothes away all the same
        "Kleidung, BH",  # German
        "ropa, sujetador",  # Spanish
        "vêtements, soutien-gorge",  # French
        "roupa, sutiã",  # Portuguese
        "vestiti, reggiseno",  # Italian
        "одежда, трусы",  # Russian
        "ubrania, stanik",  # Polish
        "kıyafet, sütyen",  # Turkish
        "服装, 下着",  # Japanese
        "속옷, 수영복",  # Korean
        "衣服, 内衣",  # Chinese
    ],
)
@pytest.mark.parametrize("age_restricted", CHANNELS)
def test_a_person_with_a_clothing_negative_is_refused_in_every_channel(
    negative: str, age_restricted: bool
) -> None:
    message = refused("me on a beach", negative, age_restricted=age_restricted, person=True)
    assert message is not None, f"{negative!r} passed with a person avatar"
    assert message == undress_message()
    # The prompt alone is innocent: the negative is what refuses it.
    assert refused("me on a beach", "", age_restricted=age_restricted, person=True) is None


@pytest.mark.parametrize(
    "negative",
    [
        "\u0441l\u043ethes",  # Cyrillic с, о
        "\u0392RA, \u0392\u0399\u039a\u0399\u039d\u0399",  # Greek capitals
        "clo\u0301thes",  # combining acute
        "dre\u034fssed",  # combining grapheme joiner
        "shi\u3164rt",  # Hangul filler
        "un\u200bderwear",  # zero-width space
        "clo thes",  # split by a space
        "c l o t h e s",  # spelled apart
        "cl0th3s",  # leetspeak
        "\uff43\uff4c\uff4f\uff54\uff48\uff45\uff53",  # full-width
        "clothessss",  # repeated letters
        "clothes_on, bar_censor",  # tag style
    ],
)
def test_the_negative_is_normalised_like_the_prompt(negative: str) -> None:
    message = refused("me in bed", negative, age_restricted=True, person=True)
    assert message is not None, f"{negative!r} passed with a person avatar"
    assert message == undress_message()


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a little girl hugging my dog on a beach", "clothes"),
        ("my cat with a twelve-year-old", "shirt, pants"),
        ("a child holding my teddy bear", "clothing, swimsuit"),
        ("mi perro con una niña en la playa", "ropa, traje de baño"),
        ("a middle schooler with my guitar", "\u0441lothes"),
    ],
)
@pytest.mark.parametrize("age_restricted", CHANNELS)
@pytest.mark.parametrize("person", (False, True))
def test_a_minor_with_a_clothing_negative_is_refused_for_every_avatar(
    prompt: str, negative: str, age_restricted: bool, person: bool
) -> None:
    assert refused(prompt, negative, age_restricted=age_restricted, person=person) == (
        MINORS_MESSAGE
    )
    # Neither half alone: a child with a pet, or a pet with a clothing negative, is ordinary.
    assert refused(prompt, "blurry", age_restricted=age_restricted, person=False) is None
    assert refused("my dog in a park", negative, age_restricted=age_restricted) is None


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("my dog in a park", "clothes, costume, hat"),
        ("my cat on a sofa", "clothing, sweater, raincoat"),
        ("my teddy bear on a shelf", "clothes, outfit"),
        ("my hamster in a cage", "censored, blurry"),
    ],
)
@pytest.mark.parametrize("age_restricted", CHANNELS)
def test_pets_and_objects_may_push_clothes_away_and_people_may_not(
    prompt: str, negative: str, age_restricted: bool
) -> None:
    assert refused(prompt, negative, age_restricted=age_restricted, person=False) is None
    # The same request with a person avatar: only the avatar's kind differs.
    assert refused(prompt, negative, age_restricted=age_restricted, person=True) == (
        undress_message()
    )


@pytest.mark.parametrize(
    "negative",
    [
        "blurry, hat, sunglasses, extra fingers, watermark",
        "lowres, bad anatomy, bad hands, text, jpeg artifacts, signature, cropped",
        "a dress",  # one garment, replaced by another: not an undressing
        "dress, skirt, tie, uniform, costume, jacket, shoes",
        "nsfw, nude, naked, topless",  # the usual protective negative
        "hair covering face, covered in mud",
        "duplicate, a man's lips, cut off top of head",
        "mosaic floor, top hat, garden hose, table cloth, mayo",
        "un vestido, Kleid, elbise",
    ],
)
def test_ordinary_negatives_of_a_person_pass(negative: str) -> None:
    for age_restricted in CHANNELS:
        assert refused("me on a beach", negative, age_restricted=age_restricted, person=True) is (
            None
        )


def test_clothing_in_the_prompt_is_not_an_inversion() -> None:
    assert refused("me in a red shirt and jeans", "", person=True) is None
    assert refused("a child in a swimsuit with my dog", "blurry", age_restricted=True) is None


def test_a_guild_cannot_lift_the_rule() -> None:
    lax = POLICY.for_guild([], ["clothes", "lingerie", "nude"])
    with pytest.raises(PromptRefused) as caught:
        lax.check("me on a beach", "clothes, lingerie", age_restricted=True, person=True)
    assert caught.value.message == undress_message()
    with pytest.raises(PromptRefused, match="minors"):
        lax.check("a child with my dog", "clothes", age_restricted=True, person=False)


async def test_a_person_render_with_a_clothing_negative_never_creates_a_job(
    services: Services,
) -> None:
    await create_now(services, 7, GUILD, "Me", "person", [("me.jpg", face_photo())])
    await make_avatar(services, 7, "Rex", kind="pet")
    clothes = RenderOptions(negative_prompt="clothes, underwear")
    for age_restricted in CHANNELS:
        with pytest.raises(PromptRefused, match="without clothes"):
            await services.renders.request(
                7, GUILD, CHANNEL, "Me", "me on a beach", clothes, age_restricted=age_restricted
            )
    # Two avatars, one of them a person: the person decides.
    with pytest.raises(PromptRefused, match="without clothes"):
        await services.renders.request(
            7, GUILD, CHANNEL, "Rex", "on a beach", clothes, with_avatar="Me"
        )
    assert await services.jobs.active() == []
    assert (await services.quotas.usage(GUILD, 7)).used == 0
    # The pet alone renders with the same negative.
    await services.renders.request(7, GUILD, CHANNEL, "Rex", "on a beach", clothes)
    assert len(await services.jobs.active()) == 1


async def test_admins_cannot_lift_an_undress_entry(services: Services) -> None:
    with pytest.raises(InvalidInput, match="cannot be lifted"):
        await services.blocklist.remove(GUILD, "clothes", actor_id=5, actor_is_admin=True)
    # An entry also in [sexual] is lifted there (pets and objects) and still read in negatives.
    lifted = await services.blocklist.remove(GUILD, "lingerie", actor_id=5, actor_is_admin=True)
    assert lifted.action == "lifted"
    view = await services.blocklist.show(GUILD, actor_is_admin=True)
    assert view.defaults["undress"] >= 200  # shown to admins with the other sections
