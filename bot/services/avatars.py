"""Avatars: create from photos (with consent), list, show, rename, delete.

An avatar belongs to one Discord user; every lookup is by ``(owner_id, name)``, so another
member's avatar is simply not found. Photos and features are sealed with the data key when one
is configured (bot/services/crypto.py) and are only ever returned to their owner.

Creation is two-phase, because its GPU work is a job like a render: ``create`` runs intake
(format, size, duplicates; no engine), then in one transaction stores the avatar as
``pending`` with its photos, the consent record and an ``encode`` job. A worker claims that job
(bot/services/job_work.py ``EncodeWork``), runs the subject checks, drops refused photos,
encodes the rest and makes the avatar ``ready``; ``creation_result`` reads what it decided. A
pending avatar holds its name and counts against the member's limit; it cannot be rendered.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import PhotoLimits
from bot.errors import (
    AvatarbotError,
    ConsentRequired,
    InvalidInput,
    NotFound,
    QueueFull,
    QuotaExceeded,
)
from bot.services import crypto, limits
from bot.services.crypto import DataCipher
from bot.services.events import JobEventKind, JobEvents
from bot.services.job_settings import EncodeSettings, encode_column
from bot.services.jobs import FEATURES_PURPOSE, PHOTO_PURPOSE, JobService
from bot.services.names import name_key, normalize_name
from bot.services.photo_intake import NormalizedPhoto, display_name
from bot.services.privacy import JointErasure, erase_joint_renders
from bot.services.quotas import QuotaService
from bot.services.results import (
    AvatarCreated,
    AvatarView,
    CreationTicket,
    InteractionRef,
    PhotoRefusal,
    PhotoWarning,
)
from bot.services.screening import NoUsablePhotos, screen_uploads
from bot.services.workers import WorkerRegistry
from db.models import Avatar
from db.repositories import avatars as repo
from db.repositories import friends as friends_repo
from db.repositories import jobs as jobs_repo
from db.repositories.avatars import NewPhoto
from db.repositories.common import checkpoint, lock_scope, scrub_deletes
from db.session import Database
from db.types import utcnow
from kinds import SUBJECT_KINDS, AvatarStatus, JobKind, JobStatus, SubjectKind

logger = logging.getLogger(__name__)

# Avatar creations in intake at once per process (each decodes its photos one by one, through
# photo_intake's DECODE_SLOTS); more are refused with "try again" (INTAKE_RETRY).
MAX_INTAKES = 8
INTAKE_RETRY = timedelta(minutes=1)

# The statement a member accepts when creating an avatar; its version is stored with the
# consent record, so a later change of wording is traceable.
CONSENT_VERSION = "2026-11-v1"
CONSENT_TEXT = (
    "These are photos of me, or of a person, pet or object I have permission to use. "
    "I understand they are stored to render images of this subject for me only, and that "
    "I can delete them at any time with /avatar forget-me."
)


class AvatarService:
    def __init__(
        self,
        database: Database,
        cipher: DataCipher,
        quotas: QuotaService,
        photo_limits: PhotoLimits,
        registry: WorkerRegistry,
        events: JobEvents,
        jobs: JobService,
    ) -> None:
        self._db = database
        self._cipher = cipher
        self._quotas = quotas
        self._limits = photo_limits
        self._registry = registry
        self._events = events
        self._jobs = jobs
        # Creations in intake in this process (bot/services/photo_intake.py decodes at most
        # DECODE_SLOTS photos at a time; these bound how many wait): one per member, at most
        # MAX_INTAKES in all.
        self._in_intake: set[int] = set()

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
            return [
                self._cipher.open(p.data, crypto.photo_binding(p.id, avatar.owner_id)) for p in rows
            ]

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
        *,
        channel_id: int | None = None,
        interaction: InteractionRef | None = None,
    ) -> CreationTicket:
        """Store a new avatar from ``(filename, bytes)`` photos and queue its encode job.

        Refuses (raising) a bad name or kind, a name the owner already uses, missing consent,
        too many avatars or photos for the guild, too many creations this hour
        (``RateLimited``, bot/services/limits.py), and a batch where intake keeps no photo
        (``NoUsablePhotos``). Otherwise stores the avatar as pending with the photos intake
        kept, the consent record and the encode job, in one transaction; the photos intake
        refused are in the ticket (and, with the worker's refusals, in ``creation_result``).
        """
        clean = normalize_name(name)
        subject = _kind(kind)
        if not consent:
            raise ConsentRequired("Please confirm you have the right to use these photos.")
        async with self._db.begin(readonly=True) as session:
            quotas = await self._quotas.quotas_in(session, guild_id)
            await self._check_new(session, owner_id, clean, quotas.avatars_per_member)
            # Early, before intake's work; checked again below under the member's lock.
            await limits.check_create_rate(session, quotas, owner_id, utcnow(), self._quotas.keys)
        self._check_count(len(files), 0, quotas.photos_per_avatar)
        facts = await self._registry.current_facts()
        personalizer = quotas.personalizer or facts.default_personalizer
        facts.encoder_id(personalizer)  # refuses a personalizer the workers do not have

        with self._intake_slot(owner_id):
            screened = await screen_uploads(self._limits, files)
        kept = screened.kept
        if not kept:
            raise NoUsablePhotos(screened.refused)
        now = utcnow()
        try:
            async with self._db.begin() as session:
                # Serialise this member's creations (the avatar count is theirs, across
                # guilds). Discord ids are unique across users and guilds: no lock collides.
                await lock_scope(session, owner_id)
                await self._check_new(session, owner_id, clean, quotas.avatars_per_member)
                await limits.check_create_rate(session, quotas, owner_id, now, self._quotas.keys)
                avatar = await repo.insert_avatar(
                    session,
                    owner_id=owner_id,
                    guild_id=guild_id,
                    name=clean,
                    name_key=name_key(clean),
                    kind=subject,
                    status=AvatarStatus.PENDING,
                )
                await repo.add_photos(
                    session,
                    avatar.id,
                    [self._new_photo(p) for _, p in kept],
                    first_position=1,
                    seal=lambda row_id, data: self._cipher.seal(
                        data, crypto.photo_binding(row_id, owner_id)
                    ),
                )
                await repo.add_consent(
                    session,
                    user_id=owner_id,
                    avatar_id=avatar.id,
                    guild_id=guild_id,
                    text_version=CONSENT_VERSION,
                    now=now,
                )
                job = await self._jobs.insert(
                    session,
                    kind=JobKind.ENCODE,
                    user_id=owner_id,
                    guild_id=guild_id,
                    channel_id=channel_id,
                    avatar_id=avatar.id,
                    prompt="",
                    settings=encode_column(
                        EncodeSettings(
                            personalizer,
                            avatar_name=clean,
                            photo_names=tuple(display_name(f) for f, _ in kept),
                            intake_refused=tuple(screened.refused),
                        )
                    ),
                    seed=0,
                    reserved=0,
                    now=now,
                    interaction=interaction,
                )
                await limits.record_creation(session, owner_id, job.id, now)
                await self._events.publish(session, JobEventKind.ENQUEUED, job.id)
                view = (await self._views(session, [avatar]))[0]
                job_id = job.id
        except IntegrityError as exc:  # the unique (owner, name) index: a concurrent create
            raise InvalidInput(f"You already have an avatar named “{clean}”.") from exc
        logger.info("created avatar %s (%s photos, encode job %s)", view.id, len(kept), job_id)
        logger.debug("avatar %s is user %s's", view.id, owner_id)
        return CreationTicket(avatar=view, job_id=job_id, refused=tuple(screened.refused))

    async def creation_result(self, job_id: int) -> AvatarCreated:
        """What avatar creation's encode job decided. Raises the job's error when it failed
        (``NoUsablePhotos`` with every refusal, or another ``AvatarbotError``); ``NotFound``
        when it has not finished or no longer exists."""
        async with self._db.begin(readonly=True) as session:
            job = await jobs_repo.get(session, job_id)
            if job is None or job.kind != JobKind.ENCODE:
                raise NotFound("This avatar creation no longer exists.")
            if job.status == JobStatus.FAILED:
                # The worker's message names every refused photo and why.
                raise AvatarbotError(
                    job.error or "The avatar could not be created.", code=job.error_code
                )
            if job.status != JobStatus.DONE or job.avatar_id is None:
                raise NotFound("This avatar is not ready yet.")
            avatar = await repo.by_id(session, job.avatar_id)
            if avatar is None:
                raise NotFound("This avatar no longer exists.")
            view = (await self._views(session, [avatar]))[0]
            result = job.result or {}
        return AvatarCreated(
            avatar=view,
            kept=tuple(str(k) for k in result.get("kept", [])),
            refused=tuple(
                PhotoRefusal(str(r["filename"]), str(r["reason"]), str(r["message"]))
                for r in result.get("refused", [])
            ),
            warnings=tuple(
                PhotoWarning(str(w["filename"]), str(w["code"]), str(w["message"]))
                for w in result.get("warnings", [])
            ),
        )

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

    async def delete(self, owner_id: int, name: str) -> JointErasure:
        """Delete an avatar with its photos, features and consent record (bytes scrubbed).

        Its owner's past jobs stay (their ``avatar_id``, or ``with_avatar_id`` for renders it
        was the second avatar of, becomes NULL) until their retention ends; such a job cannot
        be rerolled, and one still queued fails, refunded, when a worker takes it. Renders
        other members made with it go now (bot/services/friends.py): returned with their
        posted messages, for the bot to delete.
        """
        async with self._db.begin() as session:
            avatar = await self._require(session, owner_id, name)
            await scrub_deletes(session)
            joint = await erase_joint_renders(
                session, friends_repo.joint_jobs_of_avatar(avatar.id, owner_id), utcnow(), owner_id
            )
            await repo.delete_avatar(session, avatar.id)
        await checkpoint(self._db)
        logger.info("avatar %s deleted by its owner", avatar.id)
        return joint

    # -- helpers ---------------------------------------------------------------------------

    async def _require(self, session: AsyncSession, owner_id: int, name: str) -> Avatar:
        avatar = await repo.by_name(session, owner_id, name_key(" ".join(str(name).split())))
        if avatar is None:
            raise NotFound(f"You have no avatar named “{display_name(str(name))}”.")
        return avatar

    @contextmanager
    def _intake_slot(self, owner_id: int) -> Iterator[None]:
        """Hold one of the process's intake places for the member's upload, or refuse: a
        member has at most one creation in intake, the process at most MAX_INTAKES."""
        if owner_id in self._in_intake:
            raise QueueFull(
                "You are already creating an avatar; wait until it is done, then try again."
            )
        if len(self._in_intake) >= MAX_INTAKES:
            raise QueueFull(
                "I am busy checking other members' photos; try again in a minute.",
                retry_at=utcnow() + INTAKE_RETRY,
            )
        self._in_intake.add(owner_id)
        try:
            yield
        finally:
            self._in_intake.discard(owner_id)

    async def _check_new(
        self, session: AsyncSession, owner_id: int, name: str, max_avatars: int
    ) -> None:
        # At most one creation in progress per member: none while one of theirs is pending.
        await limits.check_no_pending_creation(session, owner_id)
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

    def _new_photo(self, photo: NormalizedPhoto) -> NewPhoto:
        """The row of a photo: its plaintext (sealed by ``add_photos`` once the row id is
        known) and its keyed digest (never the plain SHA-256 of a normalised photo, which
        anyone holding the photo could look up)."""
        key_id = self._cipher.current.key_id if self._cipher.current else None
        digest = crypto.keyed_digest(self._cipher, photo.data)
        return NewPhoto(photo.data, key_id, digest, photo.width, photo.height, photo.format)

    async def _views(
        self, session: AsyncSession, avatars: Sequence[Avatar]
    ) -> builtins.list[AvatarView]:
        ids = [a.id for a in avatars]
        counts = await repo.photo_counts(session, ids)
        encoders = await repo.encoders_present(session, ids)
        try:
            facts = await self._registry.current_facts()
            current = {facts.encoder_id(facts.default_personalizer)}
        except AvatarbotError:  # no worker yet: any cached encoding counts
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
                pending=a.status == AvatarStatus.PENDING,
                others_may_ask=a.others_may_ask,
            )
            for a in avatars
        ]


def _kind(kind: str) -> SubjectKind:
    try:
        return SubjectKind(kind)
    except ValueError:
        raise InvalidInput(f"The kind must be one of {', '.join(SUBJECT_KINDS)}.") from None


__all__ = [
    "CONSENT_TEXT",
    "CONSENT_VERSION",
    "FEATURES_PURPOSE",
    "PHOTO_PURPOSE",
    "AvatarService",
    "NoUsablePhotos",
]
