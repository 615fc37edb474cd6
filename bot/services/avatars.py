"""Avatars: create from photos (with consent), list, show, rename, delete, add/remove photos.

An avatar belongs to one Discord user; every lookup is by ``(owner_id, name)``, so another
member's avatar is simply not found. Photos and features are sealed with the data key when one
is configured (bot/services/crypto.py) and are only ever returned to their owner.

Engine work (inspect, encode) runs outside database transactions: on SQLite a transaction holds
the only write lock, and encoding takes seconds. The write transaction then re-checks what the
read checked (name free, avatar count), so a concurrent creation cannot slip past a limit.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import PhotoLimits
from bot.errors import ConsentRequired, InvalidInput, NotFound, QuotaExceeded
from bot.services.crypto import DataCipher
from bot.services.names import name_key, normalize_name
from bot.services.photo_intake import NormalizedPhoto, display_name
from bot.services.ports import SUBJECT_KINDS, EnginePort, EngineUnavailable, SubjectKind
from bot.services.quotas import QuotaService
from bot.services.results import (
    AvatarCreated,
    AvatarView,
    PhotosAdded,
)
from bot.services.screening import NoUsablePhotos, decode_all, screen_photos
from db.models import Avatar
from db.repositories import avatars as repo
from db.repositories.avatars import NewPhoto
from db.repositories.common import checkpoint, lock_scope, scrub_deletes
from db.session import Database
from db.types import utcnow

logger = logging.getLogger(__name__)

# The statement a member accepts when creating an avatar; its version is stored with the
# consent record, so a later change of wording is traceable.
CONSENT_VERSION = "2026-11-v1"
CONSENT_TEXT = (
    "These are photos of me, or of a person, pet or object I have permission to use. "
    "I understand they are stored to render images of this subject for me only, and that "
    "I can delete them at any time with /avatar forget-me."
)

PHOTO_PURPOSE = b"photo"
FEATURES_PURPOSE = b"features"


class AvatarService:
    def __init__(
        self,
        database: Database,
        engine: EnginePort,
        cipher: DataCipher,
        quotas: QuotaService,
        photo_limits: PhotoLimits,
    ) -> None:
        self._db = database
        self._engine = engine
        self._cipher = cipher
        self._quotas = quotas
        self._limits = photo_limits

    # -- reading ---------------------------------------------------------------------------

    async def list(self, owner_id: int) -> builtins.list[AvatarView]:
        """The owner's avatars, sorted by name."""
        async with self._db.begin(readonly=True) as session:
            avatars = await repo.list_for_owner(session, owner_id)
            return await self._views(session, avatars)

    async def get(self, owner_id: int, name: str) -> AvatarView:
        """One of the owner's avatars by name (case-insensitive); ``NotFound`` otherwise."""
        async with self._db.begin(readonly=True) as session:
            avatar = await self._require(session, owner_id, name)
            return (await self._views(session, [avatar]))[0]

    async def photos(self, owner_id: int, name: str) -> builtins.list[bytes]:
        """The avatar's normalised photos (JPEG/PNG bytes) in order, for its owner only."""
        async with self._db.begin(readonly=True) as session:
            avatar = await self._require(session, owner_id, name)
            rows = await repo.photos_of(session, avatar.id)
            return [self._cipher.open(p.data, PHOTO_PURPOSE) for p in rows]

    async def names(self, owner_id: int, prefix: str = "", limit: int = 25) -> builtins.list[str]:
        """The owner's avatar names starting with ``prefix`` (case-insensitive), for
        autocomplete; at most ``limit`` (Discord shows 25)."""
        async with self._db.begin(readonly=True) as session:
            return await repo.names_with_prefix(
                session, owner_id, name_key(prefix.strip()), max(1, min(limit, 25))
            )

    # -- creating --------------------------------------------------------------------------

    async def create(
        self,
        owner_id: int,
        guild_id: int | None,
        name: str,
        kind: str,
        files: Sequence[tuple[str, bytes]],
        consent: bool,
    ) -> AvatarCreated:
        """Create an avatar from ``(filename, bytes)`` photos.

        Refuses (raising) a bad name or kind, a name the owner already uses, missing consent,
        too many avatars or photos for the guild, and a batch where no photo is usable
        (``NoUsablePhotos``). Otherwise keeps the usable photos, refuses the others with a
        reason each (intake: format, size, duplicates; for a person, the engine's checks: no
        face, several faces, face too small, too blurry...) and stores photos, features and
        the consent record in one transaction.
        """
        clean = normalize_name(name)
        subject = _kind(kind)
        if not consent:
            raise ConsentRequired("Please confirm you have the right to use these photos.")
        async with self._db.begin(readonly=True) as session:
            quotas = await self._quotas.quotas_in(session, guild_id)
            await self._check_new(session, owner_id, clean, quotas.avatars_per_member)
        self._check_count(len(files), 0, quotas.photos_per_avatar)

        screened = await screen_photos(self._engine, self._limits, files, subject)
        kept = screened.kept
        if not kept:
            raise NoUsablePhotos(screened.refused)
        personalizer = quotas.personalizer or self._engine.default_personalizer()
        encoded = await self._engine.encode(
            await decode_all([p.data for _, p in kept]), subject, personalizer
        )
        now = utcnow()
        try:
            async with self._db.begin() as session:
                # Serialise this member's creations (the avatar count is theirs, across
                # guilds). Discord ids are unique across users and guilds: no lock collides.
                await lock_scope(session, owner_id)
                await self._check_new(session, owner_id, clean, quotas.avatars_per_member)
                avatar = await repo.insert_avatar(
                    session,
                    owner_id=owner_id,
                    guild_id=guild_id,
                    name=clean,
                    name_key=name_key(clean),
                    kind=subject,
                )
                await repo.add_photos(
                    session, avatar.id, [self._seal_photo(p) for _, p in kept], first_position=1
                )
                await repo.replace_features(
                    session, avatar.id, encoded.encoder_id, *self._seal_features(encoded.data)
                )
                await repo.add_consent(
                    session,
                    user_id=owner_id,
                    avatar_id=avatar.id,
                    guild_id=guild_id,
                    text_version=CONSENT_VERSION,
                    now=now,
                )
                view = (await self._views(session, [avatar]))[0]
        except IntegrityError as exc:  # the unique (owner, name) index: a concurrent create
            raise InvalidInput(f"You already have an avatar named “{clean}”.") from exc
        logger.info("user %s created avatar %s (%s photos)", owner_id, view.id, len(kept))
        return AvatarCreated(
            avatar=view,
            kept=tuple(f for f, _ in kept),
            refused=tuple(screened.refused),
            warnings=tuple(screened.warnings),
        )

    async def add_photos(
        self, owner_id: int, name: str, files: Sequence[tuple[str, bytes]]
    ) -> PhotosAdded:
        """Add photos to an avatar and re-encode it from all of its photos."""
        async with self._db.begin(readonly=True) as session:
            avatar = await self._require(session, owner_id, name)
            quotas = await self._quotas.quotas_in(session, avatar.guild_id)
            stored = await repo.photos_of(session, avatar.id)
        self._check_count(len(files), len(stored), quotas.photos_per_avatar)
        subject = _kind(avatar.kind)
        screened = await screen_photos(
            self._engine, self._limits, files, subject, existing=[p.sha256 for p in stored]
        )
        kept = screened.kept
        if not kept:
            raise NoUsablePhotos(screened.refused)
        old = [self._cipher.open(p.data, PHOTO_PURPOSE) for p in stored]
        personalizer = quotas.personalizer or self._engine.default_personalizer()
        encoded = await self._engine.encode(
            await decode_all([*old, *(p.data for _, p in kept)]), subject, personalizer
        )
        async with self._db.begin() as session:
            current = await self._require(session, owner_id, name)
            now_stored = await repo.photos_of(session, current.id)
            if [p.id for p in now_stored] != [p.id for p in stored]:
                raise InvalidInput("The avatar changed meanwhile; please try again.")
            self._check_count(len(kept), len(now_stored), quotas.photos_per_avatar)
            await repo.add_photos(
                session,
                current.id,
                [self._seal_photo(p) for _, p in kept],
                first_position=len(now_stored) + 1,
            )
            await repo.replace_features(
                session, current.id, encoded.encoder_id, *self._seal_features(encoded.data)
            )
            await repo.touch(session, current.id)
            view = (await self._views(session, [current]))[0]
        return PhotosAdded(
            avatar=view,
            kept=tuple(f for f, _ in kept),
            refused=tuple(screened.refused),
            warnings=tuple(screened.warnings),
        )

    async def remove_photo(self, owner_id: int, name: str, number: int) -> AvatarView:
        """Remove photo ``number`` (1-based, as shown to the owner) and re-encode the rest.

        The last photo cannot be removed: delete the avatar instead.
        """
        async with self._db.begin(readonly=True) as session:
            avatar = await self._require(session, owner_id, name)
            quotas = await self._quotas.quotas_in(session, avatar.guild_id)
            stored = await repo.photos_of(session, avatar.id)
        if not 1 <= number <= len(stored):
            raise InvalidInput(f"There is no photo {number}; this avatar has {len(stored)}.")
        if len(stored) == 1:
            raise InvalidInput("An avatar needs at least one photo; delete the avatar instead.")
        removed = stored[number - 1]
        rest = [self._cipher.open(p.data, PHOTO_PURPOSE) for p in stored if p.id != removed.id]
        personalizer = quotas.personalizer or self._engine.default_personalizer()
        encoded = await self._engine.encode(
            await decode_all(rest), _kind(avatar.kind), personalizer
        )
        async with self._db.begin() as session:
            current = await self._require(session, owner_id, name)
            if [p.id for p in await repo.photos_of(session, current.id)] != [p.id for p in stored]:
                raise InvalidInput("The avatar changed meanwhile; please try again.")
            await scrub_deletes(session)
            await repo.delete_photo(session, removed.id)
            await repo.renumber_photos(session, current.id)
            await repo.replace_features(
                session, current.id, encoded.encoder_id, *self._seal_features(encoded.data)
            )
            await repo.touch(session, current.id)
            view = (await self._views(session, [current]))[0]
        await checkpoint(self._db)
        return view

    # -- renaming, deleting ----------------------------------------------------------------

    async def rename(self, owner_id: int, name: str, new_name: str) -> AvatarView:
        clean = normalize_name(new_name)
        try:
            async with self._db.begin() as session:
                avatar = await self._require(session, owner_id, name)
                other = await repo.by_name(session, owner_id, name_key(clean))
                if other is not None and other.id != avatar.id:
                    raise InvalidInput(f"You already have an avatar named “{clean}”.")
                avatar.name = clean
                avatar.name_key = name_key(clean)
                avatar.updated_at = utcnow()
                await session.flush()
                return (await self._views(session, [avatar]))[0]
        except IntegrityError as exc:
            raise InvalidInput(f"You already have an avatar named “{clean}”.") from exc

    async def delete(self, owner_id: int, name: str) -> None:
        """Delete an avatar with its photos, features and consent record (bytes scrubbed).

        Its past jobs stay (their ``avatar_id`` becomes NULL) until their retention ends.
        """
        async with self._db.begin() as session:
            avatar = await self._require(session, owner_id, name)
            await scrub_deletes(session)
            await repo.delete_avatar(session, avatar.id)
        await checkpoint(self._db)
        logger.info("user %s deleted avatar %s", owner_id, avatar.id)

    # -- features for rendering ------------------------------------------------------------

    async def features_for(self, avatar_id: int, personalizer: str) -> bytes:
        """The avatar's features for the running engine, re-encoded from its photos when the
        cached ones come from another encoder (lazy re-encoding). Plain bytes, never sealed."""
        encoder_id = self._engine.encoder_id(personalizer)
        async with self._db.begin(readonly=True) as session:
            avatar = await repo.by_id(session, avatar_id)
            if avatar is None:
                raise NotFound("This avatar no longer exists.")
            cached = await repo.feature_for(session, avatar_id, encoder_id)
            if cached is not None:
                return self._cipher.open(cached.data, FEATURES_PURPOSE)
            photos = [
                self._cipher.open(p.data, PHOTO_PURPOSE)
                for p in await repo.photos_of(session, avatar_id)
            ]
            kind = _kind(avatar.kind)
        if not photos:
            raise NotFound("This avatar has no photos left.")
        logger.info("re-encoding avatar %s for %s", avatar_id, encoder_id)
        encoded = await self._engine.encode(await decode_all(photos), kind, personalizer)
        try:
            async with self._db.begin() as session:
                if await repo.by_id(session, avatar_id) is not None:
                    data, key_id = self._seal_features(encoded.data)
                    await repo.add_features(session, avatar_id, encoded.encoder_id, data, key_id)
        except IntegrityError:  # a concurrent job re-encoded the same avatar first: fine
            logger.debug("features of avatar %s were stored concurrently", avatar_id)
        return encoded.data

    # -- helpers ---------------------------------------------------------------------------

    async def _require(self, session: AsyncSession, owner_id: int, name: str) -> Avatar:
        avatar = await repo.by_name(session, owner_id, name_key(" ".join(str(name).split())))
        if avatar is None:
            raise NotFound(f"You have no avatar named “{display_name(str(name))}”.")
        return avatar

    async def _check_new(
        self, session: AsyncSession, owner_id: int, name: str, max_avatars: int
    ) -> None:
        if await repo.by_name(session, owner_id, name_key(name)) is not None:
            raise InvalidInput(f"You already have an avatar named “{name}”.")
        count = await repo.count_for_owner(session, owner_id)
        if count >= max_avatars:
            raise QuotaExceeded(
                f"You have {count} avatars, the most this server allows; delete one first."
            )

    @staticmethod
    def _check_count(adding: int, stored: int, limit: int) -> None:
        if adding < 1:
            raise InvalidInput("Send at least one photo.")
        if stored + adding > limit:
            room = max(limit - stored, 0)
            raise InvalidInput(
                f"An avatar can have at most {limit} photos here; you can add {room} more."
            )

    def _seal_photo(self, photo: NormalizedPhoto) -> NewPhoto:
        data = self._cipher.seal(photo.data, PHOTO_PURPOSE)
        key_id = self._cipher.current.key_id if self._cipher.current else None
        return NewPhoto(data, key_id, photo.sha256, photo.width, photo.height, photo.format)

    def _seal_features(self, data: bytes) -> tuple[bytes, str | None]:
        key_id = self._cipher.current.key_id if self._cipher.current else None
        return self._cipher.seal(data, FEATURES_PURPOSE), key_id

    async def _views(
        self, session: AsyncSession, avatars: Sequence[Avatar]
    ) -> builtins.list[AvatarView]:
        ids = [a.id for a in avatars]
        counts = await repo.photo_counts(session, ids)
        encoders = await repo.encoders_present(session, ids)
        try:
            current = {self._engine.encoder_id(self._engine.default_personalizer())}
        except EngineUnavailable:  # a data-only process: any cached encoding counts
            current = set().union(*encoders.values()) if encoders else set()
        return [
            AvatarView(
                id=a.id,
                owner_id=a.owner_id,
                guild_id=a.guild_id,
                name=a.name,
                kind=_kind(a.kind),
                photo_count=counts.get(a.id, 0),
                created_at=a.created_at,
                updated_at=a.updated_at,
                features_ready=bool(encoders.get(a.id, set()) & current),
            )
            for a in avatars
        ]


def _kind(kind: str) -> SubjectKind:
    for known in SUBJECT_KINDS:
        if kind == known:
            return known
    raise InvalidInput(f"The kind must be one of {', '.join(SUBJECT_KINDS)}.")


__all__ = ["CONSENT_TEXT", "CONSENT_VERSION", "AvatarService", "NoUsablePhotos"]
