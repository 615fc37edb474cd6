"""The ORM models: one class per table, SQLAlchemy 2 typed declarative.

Every schema change here needs an Alembic revision in ``migrations/versions`` (a test compares
the two). Constraint names come from ``NAMING_CONVENTION`` so migrations are deterministic and
the same on SQLite and PostgreSQL.

Relationships load with ``lazy="raise_on_sql"``: under asyncio an implicit lazy load would fail
deep inside a template anyway; this way the mistake fails at the line that made it (use
``selectinload(...)`` or ``await obj.awaitable_attrs.photos``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.types import BigIntPK, UTCDateTime, utcnow

# The kinds every layer shares (job status and kind, avatar status, subject kind) live below db
# in kinds/, so Discord code can name them without the ORM; import them from there.
from kinds import AvatarStatus, JobKind, JobStatus, SubjectKind

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (compact, comparable); JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class AttemptOutcome(StrEnum):
    """How one attempt of a job ended (NULL while it runs)."""

    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the member cancelled (or deleted) it meanwhile
    LOST = "lost"  # its lease expired: the worker died or hung; reaped by another loop
    HANDED_BACK = "handed_back"  # a graceful stop put it back; not counted as an attempt


class LedgerEntry(StrEnum):
    RESERVE = "reserve"  # quota units taken when a job is accepted
    REFUND = "refund"  # given back when a job fails or is cancelled before running
    GRANT = "grant"  # an admin's gift of extra units


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class GuildSettings(Base):
    """A guild's overrides of ``Settings.quotas``; NULL means "use the default"."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    renders_per_day: Mapped[int | None] = mapped_column(Integer)
    avatars_per_member: Mapped[int | None] = mapped_column(Integer)
    photos_per_avatar: Mapped[int | None] = mapped_column(Integer)
    queued_per_member: Mapped[int | None] = mapped_column(Integer)
    queued_per_guild: Mapped[int | None] = mapped_column(Integer)
    images_per_render: Mapped[int | None] = mapped_column(Integer)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    max_side: Mapped[int | None] = mapped_column(Integer)
    # Abuse limits per member (rate of work-costing commands).
    renders_per_minute: Mapped[int | None] = mapped_column(Integer)
    creates_per_hour: Mapped[int | None] = mapped_column(Integer)
    withheld_per_day: Mapped[int | None] = mapped_column(Integer)  # migration 0006
    # Candidates a render picks its images from by likeness (migration 0007; NULL: one).
    best_of: Mapped[int | None] = mapped_column(Integer)
    personalizer: Mapped[str | None] = mapped_column(String(32))
    # What happens to a flagged image in an age-restricted channel: "block" (the default, as
    # everywhere else) or "spoiler".
    nsfw_policy: Mapped[str | None] = mapped_column(String(16))
    # Live previews in the progress message (migration 0008; NULL: on).
    live_previews: Mapped[bool | None] = mapped_column(Boolean)
    # Whether members may render with another member's avatar here (migration 0009; NULL:
    # allowed, each avatar's owner still deciding).
    cross_member_renders: Mapped[bool | None] = mapped_column(Boolean)
    # The guild's changes to the default prompt blocklist: entries added, defaults lifted.
    blocked_terms: Mapped[list[str] | None] = mapped_column(JSONType)
    allowed_terms: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )


class Avatar(Base):
    """A concept (person, pet, object) owned by one Discord user."""

    __tablename__ = "avatars"
    __table_args__ = (
        # Also serves lookups by owner_id alone (leftmost column), so no separate index.
        UniqueConstraint("owner_id", "name_key"),
        CheckConstraint(_in("kind", SubjectKind), name="kind"),
        CheckConstraint(_in("status", AvatarStatus), name="status"),
        # Ids are never reused (a deleted avatar's id never names another's): migration 0004.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(32), nullable=False)
    # casefold()ed name: uniqueness per owner regardless of case (ß == SS too).
    name_key: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # Pending while its encode job checks and encodes the photos; deleted if none is usable.
    status: Mapped[str] = mapped_column(
        String(16),
        nullable=False,
        default=AvatarStatus.READY,
        server_default=AvatarStatus.READY,
    )
    # Whether other members may ask to render with this avatar (migration 0009; off by
    # default: the owner turns it on with ``/avatar sharing``).
    others_may_ask: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )

    photos: Mapped[list[Photo]] = relationship(
        back_populates="avatar",
        order_by="Photo.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise_on_sql",
    )
    features: Mapped[list[Feature]] = relationship(
        back_populates="avatar",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise_on_sql",
    )


class Photo(Base):
    """A normalised reference photo (possibly encrypted: ``key_id`` names the key)."""

    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("avatar_id", "sha256"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    avatar_id: Mapped[int] = mapped_column(
        ForeignKey("avatars.id", ondelete="CASCADE"), nullable=False
    )
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(32))
    # Of the normalised plaintext bytes, so duplicates are found whatever the key.
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    format: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _created()

    avatar: Mapped[Avatar] = relationship(back_populates="photos", lazy="raise_on_sql")


class Feature(Base):
    """Cached encoder output for an avatar; stale when ``encoder_id`` differs from the engine's."""

    __tablename__ = "features"
    __table_args__ = (UniqueConstraint("avatar_id", "encoder_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    avatar_id: Mapped[int] = mapped_column(
        ForeignKey("avatars.id", ondelete="CASCADE"), nullable=False
    )
    encoder_id: Mapped[str] = mapped_column(String(200), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = _created()

    avatar: Mapped[Avatar] = relationship(back_populates="features", lazy="raise_on_sql")


class Consent(Base):
    """Who accepted which consent text, when, for which avatar."""

    __tablename__ = "consents"
    __table_args__ = (
        Index(None, "user_id"),
        Index(None, "avatar_id"),  # the cascade from avatars looks rows up by it
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    avatar_id: Mapped[int | None] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"))
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    text_version: Mapped[str] = mapped_column(String(32), nullable=False)
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class RenderJob(Base):
    """One job (a render, or an avatar's encoding): a row of the queue (see db/queue.py) and
    its whole lifecycle. The table keeps its first name; ``kind`` says what the job does."""

    __tablename__ = "render_jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint(_in("kind", JobKind), name="kind"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        CheckConstraint("reserved >= 0", name="reserved_nonnegative"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        Index("ix_render_jobs_status_id", "status", "id"),  # the claim: oldest queued
        Index("ix_render_jobs_status_lease", "status", "lease_expires_at"),  # expired leases
        Index("ix_render_jobs_user_status", "user_id", "status"),  # per-user queue limits
        Index("ix_render_jobs_guild_status", "guild_id", "status"),  # per-guild queue limits
        Index("ix_render_jobs_status_delivered", "status", "delivered_at"),  # to deliver
        # The claim's fairness key: max(started_at) of a user's jobs, an index-only lookup.
        Index("ix_render_jobs_user_started", "user_id", "started_at"),
        Index(None, "avatar_id"),  # ON DELETE SET NULL from avatars
        Index(None, "with_avatar_id"),  # ON DELETE SET NULL from avatars (migration 0005)
        Index(None, "parent_job_id"),  # ON DELETE SET NULL from render_jobs
        # Ids are never reused: they travel in the custom_ids of posted buttons, which must
        # never reach another member's job after a forget-me (migration 0004).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[str] = mapped_column(
        String(16), nullable=False, default=JobKind.RENDER, server_default=JobKind.RENDER
    )
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    avatar_id: Mapped[int | None] = mapped_column(ForeignKey("avatars.id", ondelete="SET NULL"))
    # A render's second avatar in the same picture ("image 2"; the same member's), NULL for
    # one subject. Like ``avatar_id`` it becomes NULL when that avatar is deleted; the job's
    # ``settings["with_avatar_name"]`` still says the render had one, so it is never
    # rendered or rerolled as a one-subject render.
    with_avatar_id: Mapped[int | None] = mapped_column(
        ForeignKey("avatars.id", ondelete="SET NULL")
    )
    # The job this one rerolls or varies (its buttons keep working after the parent is purged).
    parent_job_id: Mapped[int | None] = mapped_column(
        ForeignKey("render_jobs.id", ondelete="SET NULL")
    )
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    negative_prompt: Mapped[str] = mapped_column(
        Text, nullable=False, default="", server_default=text("''")
    )
    # steps, guidance, width, height, count, scheduler, personalizer, identity strength, style...
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=JobStatus.QUEUED, server_default=JobStatus.QUEUED
    )
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    attempts: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker_id: Mapped[str | None] = mapped_column(String(128))
    progress: Mapped[float] = mapped_column(
        Float, nullable=False, default=0.0, server_default=text("0")
    )
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # What a finished job reports beyond its outputs (an encode job: photos kept and refused).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # The interaction to answer (follow-ups work for 15 minutes after it was created).
    interaction_app_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(Text)
    interaction_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress_message_id: Mapped[int | None] = mapped_column(BigInteger)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Quota units reserved for this job (= images); refunds give back exactly this.
    reserved: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    # The posted result message (migration 0009), so an erasure can delete it: a joint
    # render goes when either member erases their data or that avatar.
    posted_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    posted_message_id: Mapped[int | None] = mapped_column(BigInteger)

    outputs: Mapped[list[JobOutput]] = relationship(
        back_populates="job",
        order_by="JobOutput.index",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise_on_sql",
    )


class AskStatus(StrEnum):
    """Where a request to render with another member's avatar stands (migration 0009)."""

    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"


class AvatarGrant(Base):
    """Always allow this member: ``grantee_id`` may render with ``avatar_id`` without asking
    (migration 0009). Revocable by either member; goes with the avatar and with either
    member's forget-me."""

    __tablename__ = "avatar_grants"
    __table_args__ = (
        UniqueConstraint("avatar_id", "grantee_id"),
        Index(None, "grantee_id"),
        Index(None, "owner_id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    avatar_id: Mapped[int] = mapped_column(
        ForeignKey("avatars.id", ondelete="CASCADE"), nullable=False
    )
    owner_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    grantee_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = _created()


class AvatarAsk(Base):
    """A member's request to render with another member's avatar, waiting for the owner's
    answer (migration 0009). Holds the prompt sealed (bound to the row and the requester, as
    a job's) and the settings the render service validated; nothing is queued or charged
    until the owner approves. Deleted with either avatar, either member's forget-me, and by
    the maintenance pass once expired."""

    __tablename__ = "avatar_asks"
    __table_args__ = (
        CheckConstraint(_in("status", AskStatus), name="status"),
        Index(None, "requester_id"),
        Index(None, "owner_id"),
        Index(None, "avatar_id"),
        Index(None, "requester_avatar_id"),
        Index(None, "expires_at"),
        Index(None, "job_id"),
        {"sqlite_autoincrement": True},  # ids travel in buttons' custom_ids
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    requester_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    owner_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The owner's avatar asked for ("image 2") and the requester's own ("image 1").
    avatar_id: Mapped[int] = mapped_column(
        ForeignKey("avatars.id", ondelete="CASCADE"), nullable=False
    )
    requester_avatar_id: Mapped[int] = mapped_column(
        ForeignKey("avatars.id", ondelete="CASCADE"), nullable=False
    )
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    negative_prompt: Mapped[str] = mapped_column(
        Text, nullable=False, default="", server_default=text("''")
    )
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=AskStatus.PENDING, server_default=AskStatus.PENDING
    )
    # The requester's interaction, so the approved job answers it (sealed like a job's).
    interaction_app_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(Text)
    interaction_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    interaction_message_id: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("render_jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobAttempt(Base):
    """One attempt of a job: which worker claimed it, when, and how it ended (the history an
    operator reads with ``avatarbot job show``). Removed with its job."""

    __tablename__ = "job_attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        CheckConstraint(_in("outcome", AttemptOutcome), name="outcome"),
        # The open attempt of a job is found by (job_id, ended_at IS NULL): the unique index's
        # leftmost column serves it.
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("render_jobs.id", ondelete="CASCADE"), nullable=False
    )
    # 1, 2, ... in claim order (handed-back attempts included).
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    worker_id: Mapped[str] = mapped_column(String(128), nullable=False)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    """A process that runs the job loop (a worker, or the bot): who it is, what its engine can
    do (``facts``, published so a bot without the model can validate and size requests), and
    when it was last seen. Holds nothing about members."""

    __tablename__ = "workers"
    __table_args__ = (Index(None, "seen_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    # Engine facts (profile, personalizers and encoder ids, sizes, steps, prompt length);
    # NULL for a loop without an engine (a bot that only reaps and delivers).
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The text encoder's tokenizer (tokenizers' JSON), so prompts are measured without torch.
    tokenizer: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobOutput(Base):
    """One image of a finished job (PNG bytes), kept until delivered and the retention ends."""

    __tablename__ = "job_outputs"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("render_jobs.id", ondelete="CASCADE"), nullable=False
    )
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    # The output check flagged it (its scores are in the job's ``result``).
    flagged: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # How much it looks like its avatar (migration 0007; engine/likeness.py): a LikenessKind
    # and a figure 0..1 (NULL for ``no_face``); both NULL when it was not measured.
    likeness_kind: Mapped[str | None] = mapped_column(String(16))
    likeness: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _created()

    job: Mapped[RenderJob] = relationship(back_populates="outputs", lazy="raise_on_sql")


class UsageLedger(Base):
    """Append-only quota ledger: what is left is computed from it in SQL.

    Rows are never updated or deleted by the application, with three exceptions that keep
    totals intact: forget-me sets ``user_id`` to NULL (anonymised usage; the rows of the
    current UTC day get ``user_key`` instead, see bot/services/usage_keys.py), the daily
    maintenance clears ``user_key`` on rows of earlier days, and deleting a job sets
    ``job_id`` to NULL.
    """

    __tablename__ = "usage_ledger"
    __table_args__ = (
        CheckConstraint(_in("entry", LedgerEntry), name="entry"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_usage_ledger_guild_user_created", "guild_id", "user_id", "created_at"),
        Index("ix_usage_ledger_guild_key_created", "guild_id", "user_key", "created_at"),
        Index(None, "job_id"),  # ON DELETE SET NULL from render_jobs
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    entry: Mapped[str] = mapped_column(String(16), nullable=False)
    amount: Mapped[int] = mapped_column(Integer, nullable=False)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("render_jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created()
    note: Mapped[str | None] = mapped_column(String(200))
    # After forget-me, today's rows keep a keyed hash of (guild, member, day) instead of the
    # member id, so erasing one's data does not reset one's usage; meaningless the next day.
    user_key: Mapped[str | None] = mapped_column(String(64))


class AuditEntry(Base):
    """An admin action in a guild (quota changes, purges, policy and blocklist changes)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_guild_created", "guild_id", "created_at"),
        Index(None, "actor_id"),  # forget-me of an admin
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # NULL after the acting admin's forget-me (the action stays, the person goes).
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = _created()


class CountedKind(StrEnum):
    """What ``counted_events`` counts (migration 0006)."""

    # A render the safety checks withheld entirely, or the worker's prompt screen refused: the
    # daily allowance and cool-down of bot/services/withheld.py (per guild).
    WITHHELD = "withheld"
    # An avatar creation, for ``creates_per_hour`` (``guild_id`` NULL: counted across guilds).
    CREATE = "create"


class CountedEvent(Base):
    """Events a member's abuse limits count (withheld renders, avatar creations), kept apart
    from the jobs a forget-me deletes and from the quota ledger's units.

    Like ``usage_ledger``: forget-me sets ``user_id`` to NULL and gives the rows of the current
    UTC day the keyed hash of (guild, member, day) in ``user_key`` (bot/services/usage_keys.py),
    so erasing one's data resets no limit; the daily maintenance clears earlier days' keys."""

    __tablename__ = "counted_events"
    __table_args__ = (
        CheckConstraint(_in("kind", CountedKind), name="kind"),
        Index("ix_counted_events_guild_user_created", "guild_id", "user_id", "created_at"),
        Index("ix_counted_events_guild_key_created", "guild_id", "user_key", "created_at"),
        Index(None, "job_id"),  # ON DELETE SET NULL from render_jobs
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    user_key: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("render_jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _created()
    note: Mapped[str | None] = mapped_column(String(200))


class DepartedGuild(Base):
    """A guild that removed the bot (migration 0006): its usage ledger and counted events of
    that day and its audit log are kept (counts and the admins' trail, no prompts or images),
    so that removing and re-inviting the bot resets nothing; the maintenance pass erases the
    counts once the day is over and the audit log after ``Settings.audit_retention_days``.
    The row goes when the guild adds the bot again."""

    __tablename__ = "departed_guilds"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    removed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class BotState(Base):
    """Small key/value facts the bot keeps across restarts (e.g. the synced commands' hash)."""

    __tablename__ = "bot_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )
