"""Privacy: forget-me, a member purge, a guild's removal, and re-encryption at rest.

Each storage module implements ``delete_user_data(session, user_id)``
(db/repositories/{avatars,jobs,ledger}.py); ``forget_me`` runs them all in one transaction.

What forget-me removes: every avatar of the member with its photos, features and consent
records, every render job (prompt, settings, interaction token) and output image, the renders
other members made with the member's avatars (jobs, outputs, and the posted messages, which the
bot deletes), every grant and request between the member and others (bot/services/friends.py),
and their id from the audit log (as the acting admin, or as the member an action concerned: the
entries stay without it). What it keeps: the member's usage ledger rows **without their user
id** (set to NULL), so a guild's usage report stays true (shown as "erased members"). The rows
of the current UTC day carry instead a keyed hash of (guild, member, day)
(bot/services/usage_keys.py), so what the member used today still counts against them: erasing
one's data is not a fresh quota. The hash is meaningless to anyone without both the member id
and the installation's secret, and it is cleared the next day (``JobService.purge_expired``),
after which the rows keep only counts. Nothing else stores user ids.

A guild's removal erases its settings, jobs, prompts and images at once and keeps only its
usage counts of that day and its audit log for a retention period (bot/services/departed.py).

On SQLite the deletions run with ``secure_delete`` on and are followed by a WAL checkpoint
that truncates the WAL, so the erased bytes are gone from the database files (a test scans
them); a checkpoint that a reader blocks is retried by the job loop's maintenance. Guilds that
removed the bot while it was offline are treated so at its next start (``purge_absent_guilds``).
On PostgreSQL deleted tuples stay on disk until VACUUM reclaims their space and the WAL
segments are recycled: deploy with a data key (then only ciphertext lingers) and encrypted
disks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from bot.services import audit, crypto
from bot.services.crypto import DataCipher
from bot.services.jobs import SEALED_JOB_TEXTS
from bot.services.ledger import day_bounds, refund
from bot.services.results import ErasureReport, GuildErasure, ReencryptReport
from bot.services.usage_keys import UsageKeys, user_key
from db.models import AvatarAsk, Feature, JobOutput, Photo, RenderJob
from db.queue import lock_jobs
from db.repositories import audit as audit_repo
from db.repositories import avatars as avatars_repo
from db.repositories import counted as counted_repo
from db.repositories import friends as friends_repo
from db.repositories import guilds as guilds_repo
from db.repositories import jobs as jobs_repo
from db.repositories import ledger as ledger_repo
from db.repositories.common import checkpoint, scrub_deletes
from db.session import Database
from db.types import utcnow
from kinds import JobStatus

logger = logging.getLogger(__name__)

REENCRYPT_BATCH = 100


@dataclass(frozen=True)
class JointErasure:
    """Joint renders erased: how many, and their posted messages (channel, message)."""

    jobs: int
    outputs: int
    posted: tuple[tuple[int, int], ...]


async def erase_joint_renders(
    session: AsyncSession, condition: ColumnElement[bool], now: datetime, erasing: int
) -> JointErasure:
    """Delete the joint renders matching ``condition`` (their jobs, prompts and outputs);
    one still queued gives its requester the unit back, as a delete would (``erasing``: the
    member whose erasure this is, whose own queued jobs the caller refunds)."""
    held = await lock_jobs(session, condition)
    for job in held:
        if job.status == JobStatus.QUEUED and job.user_id != erasing:
            await refund(session, job, now, note="erased with the other member's avatar")
    posted = await friends_repo.posted_messages(session, condition)
    erased = await jobs_repo.delete_matching(session, condition)
    return JointErasure(erased.jobs, erased.outputs, tuple(posted))


class PrivacyService:
    def __init__(
        self, database: Database, cipher: DataCipher, keys: UsageKeys | None = None
    ) -> None:
        self._db = database
        self._cipher = cipher
        self._keys = keys or UsageKeys(cipher)

    async def forget_me(self, user_id: int) -> ErasureReport:
        """Erase everything stored about ``user_id`` (see the module docstring)."""
        now = utcnow()
        async with self._db.begin() as session:
            await scrub_deletes(session)
            # The member's jobs first (the lock order: db/queue.py ``lock_jobs``): a worker
            # finishing one has committed, and what it wrote is keyed or erased below, or it
            # waits and then finds the job gone.
            # Joint renders others asked for with the member's avatars are locked in the same
            # id-ordered statement: two members erasing at once would otherwise each hold their
            # own jobs and wait for the other's (a deadlock on PostgreSQL).
            joint_jobs = friends_repo.joint_jobs_of_user(user_id)
            held = await jobs_repo.lock_user_jobs(session, user_id, also=joint_jobs)
            # A job that never started gives its unit back, as deleting it would; keyed below
            # with the rest, so the day's usage counts net of it.
            for job in held:
                if job.status == JobStatus.QUEUED and job.user_id == user_id:
                    await refund(session, job, now, note="erased by forget-me")
            # Renders of the member's avatars with another member's go too, whoever asked
            # (bot/services/friends.py); while the avatars still say whose they are.
            joint = await erase_joint_renders(session, joint_jobs, now, user_id)
            friends = await friends_repo.delete_user_data(session, user_id)
            # Today's usage stays the member's under a keyed hash; first, while the jobs that
            # attribute refunds to their day still exist.
            secret = await self._keys.writing_secret(session)
            start = day_bounds(now)[0]

            def key_for(guild_id: int | None) -> str:
                return user_key(secret, guild_id, user_id, now)

            keyed = await ledger_repo.key_rows_of_day(
                session, user_id, start=start, key_for=key_for
            )
            # The same for what the abuse limits count (withheld renders, creations).
            await counted_repo.key_rows_of_day(session, user_id, start=start, key_for=key_for)
            await counted_repo.delete_user_data(session, user_id)
            jobs = await jobs_repo.delete_user_data(session, user_id)
            avatars = await avatars_repo.delete_user_data(session, user_id)
            ledger = keyed + await ledger_repo.delete_user_data(session, user_id)
            await audit_repo.delete_user_data(session, user_id)
        await checkpoint(self._db)
        report = ErasureReport(
            user_id=user_id,
            avatars=avatars.avatars,
            photos=avatars.photos,
            features=avatars.features,
            consents=avatars.consents,
            jobs=jobs.jobs,
            outputs=jobs.outputs,
            ledger_rows_anonymised=ledger,
            joint_jobs=joint.jobs,
            grants=friends.grants,
            asks=friends.asks,
            posted=joint.posted,
        )
        # The counts only: the erased member's id does not go to the logs either.
        logger.info(
            "forget-me: %s avatar(s), %s job(s), %s ledger row(s) anonymised",
            report.avatars,
            report.jobs,
            report.ledger_rows_anonymised,
        )
        return report

    async def purge_member(
        self, guild_id: int, user_id: int, *, actor_is_admin: bool, actor_id: int | None = None
    ) -> ErasureReport:
        """An admin removes a member's renders in their guild (jobs, prompts, images; active
        ones are stopped, unrefunded). The member's avatars are theirs and are not touched.
        The purge goes to the audit log (``member.purge``: member and counts)."""
        audit.require_admin(actor_is_admin)
        async with self._db.begin() as session:
            await scrub_deletes(session)
            jobs = await jobs_repo.delete_member_in_guild(session, guild_id, user_id)
            await audit.record(
                session,
                guild_id,
                actor_id,
                "member.purge",
                {"member_id": str(user_id), "renders": jobs.jobs, "images": jobs.outputs},
            )
        await checkpoint(self._db)
        logger.info("guild %s purged a member: %s jobs", guild_id, jobs.jobs)
        return ErasureReport(user_id=user_id, jobs=jobs.jobs, outputs=jobs.outputs)

    async def guild_removed(self, guild_id: int) -> GuildErasure:
        """The bot left (or was removed from) a guild: its settings, jobs, prompts and images
        go now; its usage of the current day and its audit log are kept for a while
        (bot/services/departed.py), so removing and re-inviting the bot resets nothing."""
        now = utcnow()
        async with self._db.begin() as session:
            await scrub_deletes(session)
            await jobs_repo.lock_guild_jobs(session, guild_id)  # the lock order: jobs first
            # First, while the jobs that attribute refunds to their day still exist.
            start = day_bounds(now)[0]
            ledger = await ledger_repo.delete_guild_before(session, guild_id, start)
            await counted_repo.delete_guilds_before(session, [guild_id], start)
            jobs = await jobs_repo.delete_guild(session, guild_id)
            settings = await guilds_repo.delete_guild(session, guild_id)
            await guilds_repo.mark_departed(session, guild_id, now)
        await checkpoint(self._db)
        result = GuildErasure(guild_id, settings, jobs.jobs, jobs.outputs, ledger)
        logger.info("guild %s removed: %s", guild_id, result)
        return result

    async def guild_returned(self, guild_ids: Collection[int]) -> int:
        """Guilds that added the bot (again): what they kept is theirs again, never erased by
        the departed guilds' maintenance. Returns how many were departed."""
        async with self._db.begin() as session:
            back = await guilds_repo.returned(session, guild_ids)
        if back:
            logger.info("%d departed guild(s) added the bot again", back)
        return back

    async def purge_absent_guilds(
        self, present: Collection[int], covers: Callable[[int], bool] | None = None
    ) -> list[GuildErasure]:
        """Erase, as ``guild_removed`` does, every guild with stored data that is not in
        ``present``: guilds that removed the bot while it was offline (it never saw their
        ``GUILD_DELETE``). ``present`` must be every guild the gateway reported once all of
        this process's shards were ready, unavailable ones (an outage) included; ``covers``
        says which guild ids those shards serve (default: all). Departed guilds in
        ``present`` came back (``guild_returned``); departed ones still absent are left to
        the maintenance pass.

        An empty ``present`` erases nothing: a bot that sees no guild at all is far more
        likely to be looking at an outage or a wrong token than to have been removed
        everywhere, and this cannot be undone."""
        if not present:
            logger.warning("the bot sees no guild: not purging stored guild data")
            return []
        known = set(present)
        async with self._db.begin(readonly=True) as session:
            stored = await guilds_repo.stored_guild_ids(session)
            gone = set(await guilds_repo.departed(session))
        await self.guild_returned(sorted(gone & known))
        absent = sorted(g for g in stored - known - gone if covers is None or covers(g))
        if absent:
            logger.info("erasing the data of %d guild(s) the bot left while offline", len(absent))
        return [await self.guild_removed(guild_id) for guild_id in absent]

    async def reencrypt(self, batch_size: int = REENCRYPT_BATCH) -> ReencryptReport:
        """Rewrite every photo, feature and output blob, and every job's prompt, negative
        prompt and interaction token, not sealed with the current key in the current format
        (bound to its table, row and owner; bot/services/crypto.py). A photo's stored digest
        is recomputed under the current key with it.

        Run after changing ``AVATARBOT_DATA_KEY`` (old key in ``AVATARBOT_OLD_DATA_KEYS``),
        after setting a key for the first time (plaintext blobs get sealed), and after an
        upgrade from the old sealed format; then ``AVATARBOT_ENCRYPTION_STRICT=true`` refuses
        anything unsealed. Works in batches of short transactions, so the bot can keep
        running; safe to interrupt and rerun.
        """
        cipher = self._cipher
        if not cipher.enabled:
            raise ValueError("AVATARBOT_DATA_KEY is not set: nothing to encrypt with")
        key_id = cipher.current.key_id if cipher.current else None
        counts = {"photos": 0, "features": 0, "outputs": 0, "jobs": 0, "asks": 0, "unchanged": 0}

        def reseal_photo(row: Photo, owner: int) -> None:
            plain = cipher.open(row.data, crypto.photo_binding(row.id, owner), lenient=True)
            row.data = cipher.seal(plain, crypto.photo_binding(row.id, owner))
            row.sha256 = crypto.keyed_digest(cipher, plain)
            row.key_id = key_id

        def reseal_features(row: Feature, owner: int) -> None:
            binding = crypto.features_binding(row.id, owner)
            row.data = cipher.seal(cipher.open(row.data, binding, lenient=True), binding)
            row.key_id = key_id

        def reseal_output(row: JobOutput, owner: int) -> None:
            binding = crypto.output_binding(row.id, owner)
            row.data = cipher.seal(cipher.open(row.data, binding, lenient=True), binding)

        async def walk(name: str, page: Any, stale: Any, reseal: Any) -> None:
            after = 0
            while True:
                async with self._db.begin() as session:
                    await scrub_deletes(session)  # the old ciphertext must not linger either
                    rows = await page(session, after, batch_size)
                    for item in rows:
                        if stale(item):
                            reseal(*item) if isinstance(item, tuple) else reseal(item)
                            counts[name] += 1
                        else:
                            counts["unchanged"] += 1
                if not rows:
                    break
                last = rows[-1]
                after = (last[0] if isinstance(last, tuple) else last).id

        def blob_stale(item: tuple[Photo | Feature | JobOutput, int]) -> bool:
            return cipher.needs_reseal(item[0].data)

        def texts_stale(row: RenderJob | AvatarAsk) -> bool:
            return any(
                cipher.text_needs_reseal(getattr(row, name) or "") for name in SEALED_JOB_TEXTS
            )

        def reseal_texts(
            row: RenderJob | AvatarAsk, binding: Callable[[bytes], crypto.Binding]
        ) -> None:
            for name, purpose in SEALED_JOB_TEXTS.items():
                value = getattr(row, name)
                if value:
                    plain = cipher.open_text(value, binding(purpose), lenient=True)
                    setattr(row, name, cipher.seal_text(plain, binding(purpose)))

        def reseal_job(job: RenderJob) -> None:
            reseal_texts(job, lambda purpose: crypto.job_binding(purpose, job.id, job.user_id))

        def reseal_ask(ask: AvatarAsk) -> None:
            # A request's texts are sealed as a job's, bound to it and its requester.
            reseal_texts(ask, lambda purpose: crypto.ask_binding(purpose, ask.id, ask.requester_id))

        await walk("photos", avatars_repo.photos_page, blob_stale, reseal_photo)
        await walk("features", avatars_repo.features_page, blob_stale, reseal_features)
        await walk("outputs", jobs_repo.outputs_page, blob_stale, reseal_output)
        await walk("jobs", jobs_repo.jobs_page, texts_stale, reseal_job)
        await walk("asks", friends_repo.asks_page, texts_stale, reseal_ask)
        await checkpoint(self._db)
        report = ReencryptReport(**counts)
        logger.info("re-encryption under key %s: %s", key_id, report)
        return report
