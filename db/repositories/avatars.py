"""Avatars, their photos, cached features and consent records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Avatar, Consent, Feature, Photo
from db.repositories.common import affected
from db.types import utcnow


@dataclass(frozen=True)
class NewPhoto:
    """A photo ready to store: ``data`` already sealed (or plaintext), ``sha256`` of the
    normalised plaintext."""

    data: bytes
    key_id: str | None
    sha256: str
    width: int
    height: int
    format: str


async def by_name(session: AsyncSession, owner_id: int, name_key: str) -> Avatar | None:
    return (
        await session.scalars(
            select(Avatar).where(Avatar.owner_id == owner_id, Avatar.name_key == name_key)
        )
    ).one_or_none()


async def by_id(session: AsyncSession, avatar_id: int) -> Avatar | None:
    return await session.get(Avatar, avatar_id)


async def list_for_owner(session: AsyncSession, owner_id: int) -> list[Avatar]:
    rows = await session.scalars(
        select(Avatar).where(Avatar.owner_id == owner_id).order_by(Avatar.name_key)
    )
    return list(rows)


async def count_for_owner(session: AsyncSession, owner_id: int) -> int:
    return int(await session.scalar(select(func.count()).where(Avatar.owner_id == owner_id)) or 0)


async def names_with_prefix(
    session: AsyncSession, owner_id: int, key_prefix: str, limit: int
) -> list[str]:
    """Names of the owner's avatars whose key starts with ``key_prefix`` (autocomplete)."""
    escaped = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = await session.scalars(
        select(Avatar.name)
        .where(Avatar.owner_id == owner_id, Avatar.name_key.like(escaped + "%", escape="\\"))
        .order_by(Avatar.name_key)
        .limit(limit)
    )
    return list(rows)


async def photo_counts(session: AsyncSession, avatar_ids: Sequence[int]) -> dict[int, int]:
    if not avatar_ids:
        return {}
    rows = await session.execute(
        select(Photo.avatar_id, func.count())
        .where(Photo.avatar_id.in_(avatar_ids))
        .group_by(Photo.avatar_id)
    )
    return {int(a): int(n) for a, n in rows.all()}


async def encoders_present(session: AsyncSession, avatar_ids: Sequence[int]) -> dict[int, set[str]]:
    """Which encoder ids have cached features, per avatar."""
    result: dict[int, set[str]] = {}
    if not avatar_ids:
        return result
    rows = await session.execute(
        select(Feature.avatar_id, Feature.encoder_id).where(Feature.avatar_id.in_(avatar_ids))
    )
    for avatar_id, encoder_id in rows.all():
        result.setdefault(int(avatar_id), set()).add(encoder_id)
    return result


async def insert_avatar(
    session: AsyncSession,
    *,
    owner_id: int,
    guild_id: int | None,
    name: str,
    name_key: str,
    kind: str,
    status: str,
) -> Avatar:
    avatar = Avatar(
        owner_id=owner_id,
        guild_id=guild_id,
        name=name,
        name_key=name_key,
        kind=kind,
        status=status,
    )
    session.add(avatar)
    await session.flush()
    return avatar


async def photos_of(session: AsyncSession, avatar_id: int) -> list[Photo]:
    rows = await session.scalars(
        select(Photo).where(Photo.avatar_id == avatar_id).order_by(Photo.position)
    )
    return list(rows)


async def add_photos(
    session: AsyncSession,
    avatar_id: int,
    photos: Sequence[NewPhoto],
    *,
    first_position: int,
    seal: Callable[[int, bytes], bytes],
) -> None:
    """Insert photos with an empty placeholder, then store ``seal(row_id, data)``: a sealed
    blob is bound to its row id (bot/services/crypto.py), known only after the insert."""
    rows = [
        Photo(
            avatar_id=avatar_id,
            position=first_position + offset,
            data=b"",
            key_id=p.key_id,
            sha256=p.sha256,
            width=p.width,
            height=p.height,
            format=p.format,
        )
        for offset, p in enumerate(photos)
    ]
    session.add_all(rows)
    await session.flush()
    for row, p in zip(rows, photos, strict=True):
        row.data = seal(row.id, p.data)
    await session.flush()


async def delete_photo(session: AsyncSession, photo_id: int) -> None:
    await session.execute(delete(Photo).where(Photo.id == photo_id))


async def renumber_photos(session: AsyncSession, avatar_id: int) -> None:
    """Make positions 1..n again after a removal (the order shown to the owner)."""
    photos = await photos_of(session, avatar_id)
    for number, photo in enumerate(photos, start=1):
        if photo.position != number:
            photo.position = number
    await session.flush()


async def feature_for(session: AsyncSession, avatar_id: int, encoder_id: str) -> Feature | None:
    return (
        await session.scalars(
            select(Feature).where(Feature.avatar_id == avatar_id, Feature.encoder_id == encoder_id)
        )
    ).one_or_none()


async def replace_features(
    session: AsyncSession,
    avatar_id: int,
    encoder_id: str,
    data: bytes,
    key_id: str | None,
    seal: Callable[[int, bytes], bytes],
) -> None:
    """Store the avatar's features for ``encoder_id``, dropping every other cached encoding:
    callers re-encode after the photos changed, which makes all older features wrong."""
    await session.execute(delete(Feature).where(Feature.avatar_id == avatar_id))
    await add_features(session, avatar_id, encoder_id, data, key_id, seal)


async def add_features(
    session: AsyncSession,
    avatar_id: int,
    encoder_id: str,
    data: bytes,
    key_id: str | None,
    seal: Callable[[int, bytes], bytes],
) -> None:
    """Add features for another encoder (lazy re-encoding); older encodings stay usable.
    Inserted with an empty placeholder, then ``seal(row_id, data)`` is stored."""
    row = Feature(avatar_id=avatar_id, encoder_id=encoder_id, data=b"", key_id=key_id)
    session.add(row)
    await session.flush()
    row.data = seal(row.id, data)
    await session.flush()


async def add_consent(
    session: AsyncSession,
    *,
    user_id: int,
    avatar_id: int,
    guild_id: int | None,
    text_version: str,
    now: datetime | None = None,
) -> None:
    session.add(
        Consent(
            user_id=user_id,
            avatar_id=avatar_id,
            guild_id=guild_id,
            text_version=text_version,
            accepted_at=now or utcnow(),
        )
    )
    await session.flush()


async def delete_avatar(session: AsyncSession, avatar_id: int) -> None:
    """Delete an avatar; photos, features and consents go with it (ON DELETE CASCADE)."""
    await session.execute(delete(Avatar).where(Avatar.id == avatar_id))


@dataclass(frozen=True)
class AvatarErasure:
    avatars: int
    photos: int
    features: int
    consents: int


async def delete_user_data(session: AsyncSession, user_id: int) -> AvatarErasure:
    """Delete every avatar, photo, feature and consent of ``user_id``."""
    avatar_ids = select(Avatar.id).where(Avatar.owner_id == user_id).scalar_subquery()
    photos = await session.scalar(select(func.count()).where(Photo.avatar_id.in_(avatar_ids)))
    features = await session.scalar(select(func.count()).where(Feature.avatar_id.in_(avatar_ids)))
    # Consents of the user (also those of avatars deleted earlier) and any on their avatars.
    consents = await session.execute(
        delete(Consent).where((Consent.user_id == user_id) | Consent.avatar_id.in_(avatar_ids))
    )
    # Explicit deletes of the children rather than trusting the cascade alone, so the counts
    # are exact and nothing depends on foreign keys being switched on.
    await session.execute(delete(Photo).where(Photo.avatar_id.in_(avatar_ids)))
    await session.execute(delete(Feature).where(Feature.avatar_id.in_(avatar_ids)))
    avatars = await session.execute(delete(Avatar).where(Avatar.owner_id == user_id))
    return AvatarErasure(
        avatars=affected(avatars),
        photos=int(photos or 0),
        features=int(features or 0),
        consents=affected(consents),
    )


async def photos_page(session: AsyncSession, after_id: int, limit: int) -> list[tuple[Photo, int]]:
    """A page of photos by id with their owner (re-encryption walks every blob)."""
    rows = await session.execute(
        select(Photo, Avatar.owner_id)
        .join(Avatar, Avatar.id == Photo.avatar_id)
        .where(Photo.id > after_id)
        .order_by(Photo.id)
        .limit(limit)
    )
    return [(photo, int(owner)) for photo, owner in rows.all()]


async def features_page(
    session: AsyncSession, after_id: int, limit: int
) -> list[tuple[Feature, int]]:
    """A page of cached features by id with their owner."""
    rows = await session.execute(
        select(Feature, Avatar.owner_id)
        .join(Avatar, Avatar.id == Feature.avatar_id)
        .where(Feature.id > after_id)
        .order_by(Feature.id)
        .limit(limit)
    )
    return [(feature, int(owner)) for feature, owner in rows.all()]
