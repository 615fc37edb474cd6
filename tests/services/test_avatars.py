"""Avatars: create, list, show, rename, delete, add/remove photos, lazy re-encoding."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from bot.errors import ConsentRequired, InvalidInput, NotFound, QuotaExceeded
from bot.services.avatars import CONSENT_VERSION, NoUsablePhotos
from bot.services.container import Services
from db.models import Consent, Feature
from tests.fixtures.services import GUILD, face_photo, make_avatar, make_photo, same_features


async def test_create_keeps_good_photos_and_explains_the_rest(services: Services) -> None:
    files = [
        ("a.png", make_photo(1)),
        ("b.jpg", make_photo(2, fmt="JPEG")),
        ("notes.png", b"this is text"),
        ("copy.png", make_photo(1)),  # same bytes as a.png
        ("a-small.png", make_photo(1, size=300)),  # the same picture, resized
    ]
    created = await services.avatars.create(7, GUILD, "  Rex  ", "pet", files, consent=True)
    assert created.avatar.name == "Rex" and created.avatar.kind == "pet"
    assert created.kept == ("a.png", "b.jpg", "a-small.png")
    assert [(r.filename, r.reason) for r in created.refused] == [
        ("notes.png", "unsupported_format"),
        ("copy.png", "duplicate"),
    ]
    assert [(w.filename, w.code) for w in created.warnings] == [("a-small.png", "near_duplicate")]
    assert created.avatar.photo_count == 3 and created.avatar.features_ready

    async with services.database.begin(readonly=True) as session:
        consent = (await session.scalars(select(Consent))).one()
    assert (consent.user_id, consent.guild_id, consent.text_version) == (7, GUILD, CONSENT_VERSION)


async def test_person_photos_are_checked_for_one_clear_face(services: Services) -> None:
    files = [("me.jpg", face_photo()), ("wall.png", make_photo(5))]
    created = await services.avatars.create(7, GUILD, "Me", "person", files, consent=True)
    assert created.kept == ("me.jpg",)
    assert [(r.filename, r.reason) for r in created.refused] == [("wall.png", "no_face")]
    assert "no face" in created.refused[0].message


async def test_create_refusals(services: Services) -> None:
    good = [("a.png", make_photo(1))]
    with pytest.raises(ConsentRequired):
        await services.avatars.create(7, GUILD, "Mia", "object", good, consent=False)
    for bad_name in ["", "@everyone", "**x**", "x" * 33]:
        with pytest.raises(InvalidInput):
            await services.avatars.create(7, GUILD, bad_name, "object", good, consent=True)
    with pytest.raises(InvalidInput):
        await services.avatars.create(7, GUILD, "Mia", "dragon", good, consent=True)
    with pytest.raises(InvalidInput):
        await services.avatars.create(7, GUILD, "Mia", "object", [], consent=True)
    too_many = [(f"{i}.png", make_photo(i)) for i in range(11)]
    with pytest.raises(InvalidInput, match="at most 10"):
        await services.avatars.create(7, GUILD, "Mia", "object", too_many, consent=True)
    with pytest.raises(NoUsablePhotos) as info:
        await services.avatars.create(
            7, GUILD, "Mia", "object", [("x.gif", b"GIF89a"), ("y.png", b"")], consent=True
        )
    assert [r.reason for r in info.value.refused] == ["corrupt", "empty"]
    assert await services.avatars.list(7) == []  # nothing was stored by any refusal


async def test_names_are_unique_per_owner_case_insensitively(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    with pytest.raises(InvalidInput, match="already"):
        await make_avatar(services, 7, "MIA")
    assert await make_avatar(services, 8, "mia") == "mia"  # another owner may


async def test_avatar_limit_per_member(services: Services) -> None:
    for name in ("a", "b", "c"):
        await make_avatar(services, 7, name, photos=1)
    with pytest.raises(QuotaExceeded):
        await make_avatar(services, 7, "d", photos=1)


async def test_list_get_names_and_owner_only_photos(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 7, "max", photos=1)
    await make_avatar(services, 8, "Milo", photos=1)
    assert [a.name for a in await services.avatars.list(7)] == ["max", "Mia"]
    assert await services.avatars.names(7, "M") == ["max", "Mia"]
    assert await services.avatars.names(7, "mi") == ["Mia"]
    assert await services.avatars.names(7, "%") == []  # LIKE wildcards are escaped
    shown = await services.avatars.get(7, "  mia ")
    assert shown.name == "Mia" and shown.photo_count == 2
    photos = await services.avatars.photos(7, "Mia")
    assert len(photos) == 2 and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in photos)
    with pytest.raises(NotFound):
        await services.avatars.photos(8, "Mia")  # someone else's avatar does not exist for 8
    with pytest.raises(NotFound):
        await services.avatars.get(7, "Milo")


async def test_rename_and_delete(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    await make_avatar(services, 7, "Max", photos=1)
    with pytest.raises(InvalidInput):
        await services.avatars.rename(7, "Mia", "max")
    renamed = await services.avatars.rename(7, "Mia", "Mila")
    assert renamed.name == "Mila"
    assert await services.avatars.rename(7, "mila", "MILA") is not None  # case change of itself
    await services.avatars.delete(7, "Max")
    assert [a.name for a in await services.avatars.list(7)] == ["MILA"]
    with pytest.raises(NotFound):
        await services.avatars.delete(7, "Max")
    async with services.database.begin(readonly=True) as session:
        assert await session.scalar(select(func.count()).select_from(Consent)) == 1


async def test_add_and_remove_photos_reencode(services: Services) -> None:
    await make_avatar(services, 7, "Mia", photos=2)
    before = await _feature_bytes(services)
    added = await services.avatars.add_photos(
        7, "Mia", [("new.png", make_photo(50)), ("dup.png", make_photo(700, size=256))]
    )
    assert added.kept == ("new.png",)
    assert [(r.filename, r.reason) for r in added.refused] == [("dup.png", "duplicate")]
    assert added.avatar.photo_count == 3
    after_add = await _feature_bytes(services)
    assert not same_features(after_add, before)  # re-encoded from three photos

    third = (await services.avatars.photos(7, "Mia"))[2]
    view = await services.avatars.remove_photo(7, "Mia", 1)
    assert view.photo_count == 2
    assert (await services.avatars.photos(7, "Mia"))[1] == third  # renumbered, order kept
    assert not same_features(await _feature_bytes(services), after_add)
    with pytest.raises(InvalidInput):
        await services.avatars.remove_photo(7, "Mia", 3)
    await services.avatars.remove_photo(7, "Mia", 1)
    with pytest.raises(InvalidInput, match="at least one"):
        await services.avatars.remove_photo(7, "Mia", 1)
    with pytest.raises(InvalidInput, match="at most 10"):
        await services.avatars.add_photos(
            7, "Mia", [(f"{i}.png", make_photo(90 + i)) for i in range(10)]
        )


async def test_stale_features_are_reencoded_lazily(services: Services) -> None:
    await make_avatar(services, 7, "Mia")
    avatar = await services.avatars.get(7, "Mia")
    fresh = await _feature_bytes(services)
    async with services.database.begin() as session:
        await session.execute(update(Feature).values(encoder_id="some-older-encoder"))
    assert not (await services.avatars.get(7, "Mia")).features_ready
    personalizer = services.engine.default_personalizer()
    data = await services.avatars.features_for(avatar.id, personalizer)
    assert same_features(data, fresh)  # the same photos through the same encoder
    async with services.database.begin(readonly=True) as session:
        ids = sorted((await session.scalars(select(Feature.encoder_id))).all())
    assert ids == sorted(["some-older-encoder", services.engine.encoder_id(personalizer)])
    assert (await services.avatars.get(7, "Mia")).features_ready


async def _feature_bytes(services: Services) -> bytes:
    async with services.database.begin(readonly=True) as session:
        rows = (await session.scalars(select(Feature))).all()
    assert len(rows) == 1
    return services.cipher.open(rows[0].data, b"features")
