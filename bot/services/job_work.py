"""What a claimed job does on a worker, per kind: the GPU work, then what it writes.

The dispatcher (bot/services/dispatcher.py) owns the lifecycle (claim, lease, outcome, events);
a ``JobWork`` owns one kind's content:

- ``run`` does the work outside any transaction (on SQLite a transaction holds the only write
  lock, and rendering takes seconds) and returns an outcome;
- ``commit`` writes that outcome in the transaction that marks the job done.

``RenderWork`` renders an avatar, or two in one picture (re-encoding each first when its
cached features come from another encoder). ``EncodeWork`` is avatar creation's GPU half: it
runs the subject checks on the photos the bot stored (faces for a person), drops the refused
ones, encodes the rest and makes the avatar ready; with no usable photo the job fails and the
pending avatar goes. Photos are decrypted only here, by the worker that claimed the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import SafetySettings
from bot.errors import AvatarbotError, NotFound, PromptScreened
from bot.services import crypto, likeness, withheld
from bot.services.crypto import DataCipher
from bot.services.events import JobEvents
from bot.services.job_settings import EncodeSettings, StoredRender, read_encode, read_render
from bot.services.jobs import JobTexts
from bot.services.ledger import refund
from bot.services.likeness import keep_best
from bot.services.ports import (
    EncodedFeatures,
    EnginePort,
    OutputPolicy,
    PreviewCallback,
    ProgressCallback,
    RenderOutput,
    RenderSpec,
)
from bot.services.prompts import styled_prompt
from bot.services.results import PhotoRefusal, PhotoWarning
from bot.services.safety import (
    SAFETY_KEY,
    flagged_posting,
    guild_live_previews,
    guild_nsfw_policy,
    output_policy,
    render_shows_a_person,
    safety_record,
)
from bot.services.screening import NoUsablePhotos, decode_all, inspect_photos
from bot.services.semantic_screen import ScreenUnavailable, SemanticScreen
from bot.services.usage_keys import UsageKeys
from db.models import RenderJob
from db.repositories import avatars as avatars_repo
from db.repositories import jobs as jobs_repo
from db.repositories.common import scrub_deletes
from db.repositories.jobs import NewOutput
from db.session import Database
from kinds import AvatarStatus, LikenessScore, SubjectKind

logger = logging.getLogger(__name__)


S = TypeVar("S")


@dataclass(frozen=True)
class ClaimedJob(Generic[S]):
    """A job as its worker sees it: plain values copied from the claimed row, with its
    settings read back typed (bot/services/job_settings.py)."""

    id: int
    user_id: int
    guild_id: int | None
    avatar_id: int | None
    prompt: str
    stored: S
    # A two-subject render's second avatar (None: one subject, or that avatar was deleted;
    # ``StoredRender.two_subjects`` tells the two apart).
    with_avatar_id: int | None = None

    @classmethod
    def of(cls, job: RenderJob, prompt: str, stored: S) -> ClaimedJob[S]:
        return cls(
            id=job.id,
            user_id=job.user_id,
            guild_id=job.guild_id,
            avatar_id=job.avatar_id,
            prompt=prompt,
            stored=stored,
            with_avatar_id=job.with_avatar_id,
        )


class Outcome(Protocol):
    """A job's finished work, waiting to be written."""

    def timings(self) -> dict[str, float]: ...

    def flagged(self) -> Sequence[bool] | None:
        """The output check's flag on each rendered image (None: the kind renders none)."""
        ...

    async def commit(self, session: AsyncSession, now: datetime) -> None:
        """Write the outcome, in the transaction that marks the job done."""
        ...


# One claimed job's work: run outside any transaction (on SQLite a transaction holds the only
# write lock, and rendering takes seconds), with a progress callback.
Claim = Callable[[ProgressCallback], Awaitable[Outcome]]


class JobWork(Protocol):
    def claim(self, job: RenderJob, texts: JobTexts) -> Claim:
        """The claimed row's work, its settings read typed (in the claim's transaction);
        raises ``CorruptJobSettings`` when they cannot be read."""
        ...

    async def failed(
        self, session: AsyncSession, job: RenderJob, code: str, now: datetime
    ) -> None: ...


class RenderWork:
    """Renders an avatar with the stored settings; every image passes the output check
    (``safety``'s policy) before it is sealed and stored with its verdict (see
    bot/services/safety.py for what is posted and the quota rule)."""

    def __init__(
        self,
        database: Database,
        engine: EnginePort,
        cipher: DataCipher,
        *,
        safety: SafetySettings | None = None,
        events: JobEvents | None = None,
    ) -> None:
        self._db = database
        self._engine = engine
        # Where live previews go (to the job's progress message); None: no previews.
        self._events = events
        self._cipher = cipher
        # Judges each prompt as rendered, on this worker, before any GPU work.
        self._screen = SemanticScreen(engine, (safety or SafetySettings()).semantic)
        self._safety = safety or SafetySettings()
        self._policy: OutputPolicy = output_policy(self._safety)
        # The same secrets as forget-me's keys (derived from the data key, or the stored one).
        self._keys = UsageKeys(cipher)

    def claim(self, job: RenderJob, texts: JobTexts) -> Claim:
        claimed = ClaimedJob.of(
            job, texts.prompt, read_render(job.settings, texts.negative_prompt, int(job.seed))
        )
        return lambda progress: self.run(claimed, progress)

    async def run(self, job: ClaimedJob[StoredRender], progress: ProgressCallback) -> Rendered:
        if job.avatar_id is None:
            raise AvatarbotError("The avatar of this render was deleted.", code="avatar_deleted")
        if job.with_avatar_id is None and job.stored.two_subjects:
            # Never a picture of the first avatar alone instead of the two asked for.
            raise AvatarbotError(
                "The second avatar of this render was deleted.", code="avatar_deleted"
            )
        s = job.stored.settings
        started = time.perf_counter()
        prompt, negative = styled_prompt(job.prompt, s.negative_prompt, s.style)
        # Before any GPU work (a stale avatar's re-encoding included).
        await self.screen(job, prompt)
        # Shielded: a cancellation (the member cancels, the lease is lost) must not cut a
        # database transaction in half; it takes effect at the render. Each avatar's features
        # are re-encoded here when they are stale.
        features = await asyncio.shield(self.features_for(job.avatar_id, s.personalizer))
        source = None if s.refine is None else await asyncio.shield(self.source_png(job))
        preview = await asyncio.shield(self.previews_for(job))
        if job.with_avatar_id is None:
            # One subject: scored against the avatar's enrolled identity, best of k kept (two
            # subjects in one picture are not scored: whose likeness would the figure be?).
            reference = await asyncio.shield(self.likeness_for(job.avatar_id))
            candidates = s.best_of if reference is not None else s.count
            spec = RenderSpec(
                prompt,
                negative,
                dataclasses.replace(s, count=max(candidates, s.count)),
                self._policy,
                likeness_reference=reference,
                source_png=source,
            )
            # The port's plain call (ports that predate two subjects serve it).
            output = keep_best(
                await self._engine.render(spec, features, progress, preview=preview), s.count
            )
        else:
            spec = RenderSpec(prompt, negative, s, self._policy, source_png=source)
            second = await asyncio.shield(self.features_for(job.with_avatar_id, s.personalizer))
            output = await self._engine.render(
                spec, features, progress, extra_subjects=(second,), preview=preview
            )
        if len(output.verdicts) != len(output.pngs):
            # Fail closed: an image without the output check's verdict is never stored.
            raise AvatarbotError(
                "The safety check of rendered images did not run, so nothing was posted. "
                "Your render was refunded.",
                code="safety_check_unavailable",
            )
        logger.info("job %s rendered in %.2f s", job.id, time.perf_counter() - started)
        return Rendered(self, job, output)

    async def previews_for(self, job: ClaimedJob[StoredRender]) -> PreviewCallback | None:
        """Where the render's live previews go: published with the job's events, never
        stored; None when there are no events here or the guild turned previews off."""
        events = self._events
        if events is None:
            return None
        async with self._db.begin(readonly=True) as session:
            if not await guild_live_previews(session, job.guild_id):
                return None

        def publish(image: bytes) -> None:
            if not events.show_preview(job.id, image):
                logger.debug("job %s: a preview too large for a notification dropped", job.id)

        return publish

    async def source_png(self, job: ClaimedJob[StoredRender]) -> bytes:
        """The image a refinement re-renders, opened (sealed to the member like any output);
        fails the job (refunded) when its render was deleted or purged meanwhile."""
        refine = job.stored.settings.refine
        assert refine is not None  # the caller's condition
        async with self._db.begin(readonly=True) as session:
            source = await jobs_repo.get(session, refine.source_job_id)
            rows = [] if source is None else await jobs_repo.outputs(session, source.id)
            row = next((r for r in rows if r.index == refine.source_index - 1), None)
            if source is None or source.user_id != job.user_id or row is None:
                raise AvatarbotError(
                    "The image to upscale or vary was deleted before it could be re-rendered. "
                    "Your render was refunded.",
                    code="refine_source_gone",
                )
            return self._cipher.open(row.data, crypto.output_binding(row.id, job.user_id))

    async def screen(self, job: ClaimedJob[StoredRender], prompt: str) -> None:
        """The semantic prompt screen (bot/services/semantic_screen.py) on ``prompt`` as it will
        be rendered, with the avatars' kinds and the channel the job was asked in. Raises
        ``PromptScreened`` (code ``prompt_screened``) or, failing closed,
        ``ScreenUnavailable``; the log names the job and the category, never the prompt."""
        person = await asyncio.shield(self._shows_a_person(job))
        age_restricted = job.stored.settings.age_restricted
        try:
            await self._screen.check(prompt, person=person, age_restricted=age_restricted)
        except PromptScreened as exc:
            logger.info("job %s: the semantic screen refused the prompt (%s)", job.id, exc.category)
            raise
        except ScreenUnavailable as exc:
            logger.error(
                "job %s: semantic screen unavailable, not rendered: %s", job.id, exc.reason
            )
            raise

    async def _shows_a_person(self, job: ClaimedJob[StoredRender]) -> bool:
        """Whether any avatar of the render is a person (fail safe: one that cannot be read
        counts as a person)."""
        ids = [job.avatar_id]
        if job.stored.two_subjects:
            ids.append(job.with_avatar_id)
        async with self._db.begin(readonly=True) as session:
            # The same rule as the posting decision (bot/services/safety.py).
            return await render_shows_a_person(session, ids)

    async def commit(
        self,
        session: AsyncSession,
        job: ClaimedJob[StoredRender],
        outcome: RenderOutput,
        now: datetime,
    ) -> None:
        width, height = job.stored.settings.width, job.stored.settings.height
        verdicts = outcome.verdicts
        likeness: Sequence[LikenessScore | None] = outcome.likeness or [None] * len(verdicts)
        await jobs_repo.add_outputs(
            session,
            job.id,
            [
                NewOutput(png, seed, width, height, v.flagged, score)
                for png, seed, v, score in zip(
                    outcome.pngs, outcome.seeds, verdicts, likeness, strict=True
                )
            ],
            now,
            seal=lambda row_id, data: self._cipher.seal(
                data, crypto.output_binding(row_id, job.user_id)
            ),
        )
        # Decided once, here, with the guild's policy now and the subjects' kinds as they are
        # now (an avatar deleted during the render counts as a person): delivery follows the
        # record, and the refund below matches what is posted.
        row = await jobs_repo.get(session, job.id)
        subjects = [row.avatar_id if row is not None else None]
        if job.stored.two_subjects:
            subjects.append(row.with_avatar_id if row is not None else None)
        person = await render_shows_a_person(session, subjects)
        age_restricted = job.stored.settings.age_restricted
        policy = await guild_nsfw_policy(session, job.guild_id)
        flagged_as = flagged_posting(age_restricted, policy, person=person)
        record = safety_record(verdicts, flagged_as, person=person)
        if verdicts and len(record["withheld"]) == len(verdicts) and row is not None:
            await refund(session, row, now, note="every image withheld by the output check")
            record["refunded"] = True
            # Refunded, but not free: it counts against the member's allowance of withheld
            # renders and may start a cool-down (bot/services/withheld.py).
            await withheld.record(
                session, row, now, settings=self._safety, keys=self._keys, reason="output check"
            )
        await jobs_repo.set_result(session, job.id, {SAFETY_KEY: record})
        if record["withheld"]:
            logger.info(
                "job %s: output check withheld %s of %s image(s)",
                job.id,
                len(record["withheld"]),
                len(verdicts),
            )

    async def failed(self, session: AsyncSession, job: RenderJob, code: str, now: datetime) -> None:
        """A failed render's part beyond the refund: one the worker's prompt screen refused
        counts as withheld (bot/services/withheld.py)."""
        if code == withheld.PROMPT_SCREENED:
            await withheld.record(
                session, job, now, settings=self._safety, keys=self._keys, reason=code
            )

    async def features_for(self, avatar_id: int, personalizer: str) -> bytes:
        """The avatar's features for this engine, re-encoded from its photos when the cached
        ones come from another encoder (lazy re-encoding). Plain bytes, never sealed."""
        encoder_id = self._engine.facts().encoder_id(personalizer)
        cached = await self._cached(avatar_id, lambda _: encoder_id)
        if cached.data is not None:
            return cached.data
        if not cached.photos:
            raise NotFound("This avatar has no photos left.")
        logger.info("re-encoding avatar %s for %s", avatar_id, encoder_id)
        images = await decode_all(cached.photos)
        encoded = await self._engine.encode(images, cached.kind, personalizer)
        await self._store(avatar_id, encoded.encoder_id, encoded, cached.owner)
        return encoded.data

    async def likeness_for(self, avatar_id: int) -> bytes | None:
        """The avatar's enrolled identity for scoring its renders (engine/likeness.py), made
        from its photos once when it has none under this engine's method (an avatar created
        before likeness was measured); None when this engine does not measure its kind."""
        facts = self._engine.facts()

        def stored(kind: SubjectKind) -> str | None:
            method = facts.likeness_method(kind)
            return None if method is None else likeness.stored_id(method)

        cached = await self._cached(avatar_id, stored)
        if cached.data is not None or cached.stored_id is None or not cached.photos:
            return cached.data
        images = await decode_all(cached.photos)
        faces: tuple[tuple[float, ...], ...] = ()
        if cached.kind == SubjectKind.PERSON:
            reports = await self._engine.inspect(images, cached.kind)
            faces = tuple(r.embedding for r in reports if r.embedding is not None)
        reference = await self._engine.likeness_reference(images, cached.kind, faces)
        if reference is None:
            return None
        logger.info("enrolled avatar %s's identity for likeness (%s)", avatar_id, cached.stored_id)
        await self._store(avatar_id, cached.stored_id, reference, cached.owner)
        return reference.data

    async def _cached(
        self, avatar_id: int, stored_id: Callable[[SubjectKind], str | None]
    ) -> _Cached:
        """The avatar's cached row ``stored_id(kind)`` opened, or (when there is none) its
        photos opened, in one read."""
        async with self._db.begin(readonly=True) as session:
            avatar = await avatars_repo.by_id(session, avatar_id)
            if avatar is None:
                raise NotFound("This avatar no longer exists.")
            owner, kind = avatar.owner_id, SubjectKind(avatar.kind)
            wanted = stored_id(kind)
            if wanted is None:
                return _Cached(owner, kind, None, None, ())
            row = await avatars_repo.feature_for(session, avatar_id, wanted)
            if row is not None:
                data = self._cipher.open(row.data, crypto.features_binding(row.id, owner))
                return _Cached(owner, kind, wanted, data, ())
            photos = tuple(
                self._cipher.open(p.data, crypto.photo_binding(p.id, owner))
                for p in await avatars_repo.photos_of(session, avatar_id)
            )
            return _Cached(owner, kind, wanted, None, photos)

    async def _store(
        self, avatar_id: int, stored_id: str, encoded: EncodedFeatures, owner: int
    ) -> None:
        """Cache a lazily made row, sealed, unless the avatar went meanwhile."""
        try:
            async with self._db.begin() as session:
                if await avatars_repo.by_id(session, avatar_id) is not None:
                    data, key_id, seal = _sealed(self._cipher, encoded, owner)
                    await avatars_repo.add_features(
                        session, avatar_id, stored_id, data, key_id, seal
                    )
        except IntegrityError:  # a concurrent job made the same row first: fine
            logger.debug("%s of avatar %s was stored concurrently", stored_id, avatar_id)


@dataclass(frozen=True)
class _Cached:
    """An avatar's owner and kind, and either its cached row's data or its photos."""

    owner: int
    kind: SubjectKind
    stored_id: str | None
    data: bytes | None
    photos: tuple[bytes, ...]


def _sealed(
    cipher: DataCipher, encoded: EncodedFeatures, owner_id: int
) -> tuple[bytes, str | None, Callable[[int, bytes], bytes]]:
    """Features' data, key id and sealer (bound to the row id once it is inserted)."""
    key_id = cipher.current.key_id if cipher.current else None

    def seal(row_id: int, data: bytes) -> bytes:
        return cipher.seal(data, crypto.features_binding(row_id, owner_id))

    return encoded.data, key_id, seal


@dataclass(frozen=True)
class Rendered:
    """A render job's outcome: the images with their verdicts, written by ``commit``."""

    work: RenderWork
    job: ClaimedJob[StoredRender]
    output: RenderOutput

    def timings(self) -> dict[str, float]:
        return dict(self.output.timings)

    def flagged(self) -> Sequence[bool]:
        return [v.flagged for v in self.output.verdicts]

    async def commit(self, session: AsyncSession, now: datetime) -> None:
        await self.work.commit(session, self.job, self.output, now)


@dataclass(frozen=True)
class Encoded:
    """An encode job's outcome: the photos kept (ids), the refused ones, remarks, features."""

    work: EncodeWork
    job: ClaimedJob[EncodeSettings]
    kept: tuple[tuple[int, str], ...]  # (photo id, filename)
    refused: tuple[tuple[int, PhotoRefusal], ...]
    warnings: tuple[PhotoWarning, ...]
    features: EncodedFeatures
    # The avatar's enrolled identity for likeness (None: this engine does not measure it).
    likeness: EncodedFeatures | None
    seconds: float

    def timings(self) -> dict[str, float]:
        return {"total": self.seconds}

    def flagged(self) -> None:
        return None

    async def commit(self, session: AsyncSession, now: datetime) -> None:
        await self.work.commit(session, self, now)


class EncodeWork:
    """Avatar creation on the worker: subject checks, then one encoding of the kept photos."""

    def __init__(self, database: Database, engine: EnginePort, cipher: DataCipher) -> None:
        self._db = database
        self._engine = engine
        self._cipher = cipher

    def claim(self, job: RenderJob, texts: JobTexts) -> Claim:
        claimed = ClaimedJob.of(job, texts.prompt, read_encode(job.settings))
        return lambda progress: self.run(claimed, progress)

    async def run(self, job: ClaimedJob[EncodeSettings], progress: ProgressCallback) -> Encoded:
        started = time.perf_counter()
        if job.avatar_id is None:
            raise NotFound("This avatar was deleted before its photos were checked.")
        # Shielded like RenderWork's read: a cancellation never cuts a transaction in half.
        kind, photos = await asyncio.shield(self._photos(job.avatar_id))
        named = [(pid, job.stored.photo_name(position), data) for pid, position, data in photos]
        checked = await inspect_photos(self._engine, [(n, d) for _, n, d in named], kind)
        progress(0.5)
        kept = tuple((named[i][0], named[i][1]) for i in checked.kept)
        refused = tuple((named[i][0], r) for i, r in checked.refused)
        if not kept:
            raise NoUsablePhotos([*job.stored.intake_refused, *(r for _, r in refused)])
        images = await decode_all([named[i][2] for i in checked.kept])
        features = await self._engine.encode(images, kind, job.stored.personalizer)
        reference = None
        if self._engine.facts().likeness_method(kind) is not None:
            # A person's from the descriptors the checks just computed, never a second pass.
            reference = await self._engine.likeness_reference(images, kind, checked.face_embeddings)
        progress(1.0)
        return Encoded(
            work=self,
            job=job,
            kept=kept,
            refused=refused,
            warnings=tuple(checked.warnings),
            features=features,
            likeness=reference,
            seconds=time.perf_counter() - started,
        )

    async def _photos(self, avatar_id: int) -> tuple[SubjectKind, list[tuple[int, int, bytes]]]:
        """The avatar's kind and its photos (id, position, decrypted bytes)."""
        async with self._db.begin(readonly=True) as session:
            avatar = await avatars_repo.by_id(session, avatar_id)
            if avatar is None:
                raise NotFound("This avatar was deleted before its photos were checked.")
            rows = await avatars_repo.photos_of(session, avatar.id)
            photos = [
                (
                    p.id,
                    p.position,
                    self._cipher.open(p.data, crypto.photo_binding(p.id, avatar.owner_id)),
                )
                for p in rows
            ]
            return SubjectKind(avatar.kind), photos

    async def failed(self, session: AsyncSession, job: RenderJob, code: str, now: datetime) -> None:
        """Nothing beyond ``release_failed`` (the pending avatar goes there)."""

    async def commit(self, session: AsyncSession, outcome: Encoded, now: datetime) -> None:
        job = outcome.job
        assert job.avatar_id is not None  # ``run`` refused a job without one
        avatar = await avatars_repo.by_id(session, job.avatar_id)
        if avatar is None:
            raise NotFound("This avatar was deleted before its photos were checked.")
        if outcome.refused:
            await scrub_deletes(session)
            for photo_id, _ in outcome.refused:
                await avatars_repo.delete_photo(session, photo_id)
            await avatars_repo.renumber_photos(session, avatar.id)
        await avatars_repo.replace_features(
            session,
            avatar.id,
            outcome.features.encoder_id,
            *_sealed(self._cipher, outcome.features, avatar.owner_id),
        )
        if outcome.likeness is not None:
            await avatars_repo.add_features(
                session,
                avatar.id,
                likeness.stored_id(outcome.likeness.encoder_id),
                *_sealed(self._cipher, outcome.likeness, avatar.owner_id),
            )
        avatar.status = AvatarStatus.READY
        avatar.updated_at = now
        refusals = (*job.stored.intake_refused, *(r for _, r in outcome.refused))
        await jobs_repo.set_result(
            session,
            job.id,
            {
                "kept": [name for _, name in outcome.kept],
                "refused": [dataclasses.asdict(r) for r in refusals],
                "warnings": [dataclasses.asdict(w) for w in outcome.warnings],
            },
        )
