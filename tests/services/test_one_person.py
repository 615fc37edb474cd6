"""One person per person-avatar, on real photos: scikit-image's astronaut (Eileen Collins) and
Grace Hopper (tests/fixtures/faces/, public domain). Threshold and measurements:
bot/services/identity.py and scripts/measure_face_distances.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageOps

from bot.errors import AvatarbotError
from bot.services.container import Services
from bot.services.identity import odd_ones_out
from tests.fixtures.services import GUILD, create_now, face_photo

HOPPER = Path(__file__).parents[1] / "fixtures" / "faces" / "grace_hopper.jpg"


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=92)
    return out.getvalue()


def astronaut_variants() -> list[bytes]:
    image = Image.open(io.BytesIO(face_photo()))
    return [
        face_photo(),
        jpeg(ImageOps.mirror(image)),
        jpeg(ImageEnhance.Brightness(image.rotate(6)).enhance(1.2)),
    ]


def hopper() -> bytes:
    return HOPPER.read_bytes()


def test_majority_rule() -> None:
    a, b, c = [0.0] * 128, [1.0] + [0.0] * 127, [0.0, 1.0] + [0.0] * 126
    near_a = [0.1] + [0.0] * 127
    assert odd_ones_out([a]) == ([], True)
    assert odd_ones_out([a, near_a]) == ([], True)
    assert odd_ones_out([a, near_a, b]) == ([2], True)
    assert odd_ones_out([a, b]) == ([0, 1], False)
    assert odd_ones_out([a, b, c]) == ([0, 1, 2], False)
    assert odd_ones_out([a, near_a, b, [1.05] + [0.0] * 127]) == ([0, 1, 2, 3], False)


async def test_photos_of_one_person_pass(services: Services) -> None:
    files = [(f"me-{i}.jpg", data) for i, data in enumerate(astronaut_variants())]
    created = await create_now(services, 7, GUILD, "Me", "person", files)
    assert created.kept == ("me-0.jpg", "me-1.jpg", "me-2.jpg")
    assert created.refused == ()


async def test_the_odd_person_out_is_refused_by_name(services: Services) -> None:
    files = [(f"me-{i}.jpg", data) for i, data in enumerate(astronaut_variants())]
    files.insert(1, ("someone.jpg", hopper()))
    created = await create_now(services, 7, GUILD, "Me", "person", files)
    assert created.kept == ("me-0.jpg", "me-1.jpg", "me-2.jpg")
    assert [(r.filename, r.reason) for r in created.refused] == [
        ("someone.jpg", "different_person")
    ]
    assert created.refused[0].message == (
        "`someone.jpg` shows a different person than the other photos."
    )
    assert created.avatar.photo_count == 3


async def test_no_majority_is_refused_whole(services: Services) -> None:
    files = [("me.jpg", face_photo()), ("someone.jpg", hopper())]
    with pytest.raises(AvatarbotError) as info:
        await create_now(services, 7, GUILD, "Me", "person", files)
    assert "None of the photos" in info.value.message
    lines = info.value.message.splitlines()[1:]
    assert [line.split("`")[1] for line in lines] == ["me.jpg", "someone.jpg"]
    assert all("show different people" in line for line in lines)
    assert await services.avatars.list(7) == []


async def test_other_kinds_are_not_compared(services: Services) -> None:
    files = [("me.jpg", face_photo()), ("someone.jpg", hopper())]
    created = await create_now(services, 7, GUILD, "Pics", "object", files)
    assert created.refused == ()
