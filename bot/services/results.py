"""The plain values the services take and return: frozen dataclasses, never ORM objects.

The bot and the CLI only ever see these, so a change of schema stays inside the services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from kinds import FINAL_STATUSES, JobKind, JobStatus, LikenessScore, SubjectKind

Aspect = Literal["square", "portrait", "landscape"]
ASPECTS: tuple[Aspect, ...] = ("square", "portrait", "landscape")

# Discord interaction tokens live 15 minutes; past that the bot answers in the channel.
INTERACTION_TOKEN_LIFETIME = timedelta(minutes=15)


@dataclass(frozen=True)
class AvatarView:
    """An avatar as its owner sees it (photos are fetched separately, owner only)."""

    id: int
    owner_id: int
    guild_id: int | None
    name: str
    kind: SubjectKind
    photo_count: int
    created_at: datetime
    updated_at: datetime
    # True when cached features exist for the render workers' encoder (else the next render
    # re-encodes from the stored photos first). With no worker known yet: True when features
    # exist for any encoder.
    features_ready: bool
    # True until its encode job (avatar creation's checks and encoding) has finished.
    pending: bool = False
    # Other members may ask to render with it (bot/services/friends.py).
    others_may_ask: bool = False


@dataclass(frozen=True)
class PhotoRefusal:
    """A photo that was not kept: ``reason`` is a stable code, ``message`` user-safe."""

    filename: str
    reason: str
    message: str


@dataclass(frozen=True)
class PhotoWarning:
    """A kept photo worth a remark (near-duplicate, dark, face check unavailable...)."""

    filename: str
    code: str
    message: str


@dataclass(frozen=True)
class AvatarCreated:
    """The summary of ``avatars.create``: filenames kept (in stored order), refusals, warnings."""

    avatar: AvatarView
    kept: tuple[str, ...]
    refused: tuple[PhotoRefusal, ...]
    warnings: tuple[PhotoWarning, ...]


@dataclass(frozen=True)
class CreationTicket:
    """An avatar stored as pending, with its encode job queued; ``refused`` are the photos
    intake refused before anything was stored."""

    avatar: AvatarView
    job_id: int
    refused: tuple[PhotoRefusal, ...]


@dataclass(frozen=True)
class RenderOptions:
    """What a member may choose for a render; bounded by the guild's settings on request.

    ``identity_strength`` is 0..1 (the bot maps its 0..100 slider); ``seed`` None picks one.
    ``steps``/``guidance`` None take the engine's defaults (capped by the guild's max steps).
    """

    negative_prompt: str = ""
    style: str = "none"
    aspect: Aspect = "square"
    count: int = 1
    seed: int | None = None
    identity_strength: float = 0.7
    steps: int | None = None
    guidance: float | None = None
    # Candidates to pick the ``count`` images from by likeness; None: the guild's default.
    best_of: int | None = None


@dataclass(frozen=True)
class InteractionRef:
    """The Discord interaction to answer when a job finishes (stored with the job)."""

    application_id: int
    token: str
    # When the token stops working (Discord: 15 minutes after the interaction was created).
    expires_at: datetime
    # The message showing the job's progress, when the bot posted one.
    message_id: int | None = None


RefineKind = Literal["upscale", "vary_subtle", "vary_strong"]


@dataclass(frozen=True)
class Refine:
    """What a refinement job re-renders: image ``source_index`` (1-based) of its source job."""

    kind: RefineKind
    source_job_id: int
    source_index: int


@dataclass(frozen=True)
class RenderSettings:
    """The effective, validated settings of a job (stored with it; reroll starts from them)."""

    negative_prompt: str
    style: str
    aspect: Aspect
    width: int
    height: int
    steps: int
    guidance: float
    count: int
    seed: int
    identity_strength: float
    personalizer: str
    # Asked for in an age-restricted (NSFW) channel: the guild's policy for such channels
    # applies to its prompt and to flagged images.
    age_restricted: bool = False
    # Candidates rendered in one batch, of which the ``count`` most like the avatar are kept
    # (1: no choice; never below ``count``).
    best_of: int = 1
    # An Upscale or Vary of one image of another job (None: a render from the prompt).
    refine: Refine | None = None


@dataclass(frozen=True)
class JobTicket:
    """A job accepted into the queue; ``position`` is 1 for the next job to run (0: a worker
    already picked it up)."""

    job_id: int
    position: int


@dataclass(frozen=True)
class JobView:
    """A job as the bot needs it to report progress and deliver results. ``settings`` are a
    render's (an encode job carries placeholder values there)."""

    id: int
    kind: JobKind
    user_id: int
    guild_id: int | None
    channel_id: int | None
    avatar_id: int | None
    avatar_name: str
    prompt: str
    settings: RenderSettings
    status: JobStatus
    progress: float
    attempts: int
    seeds: tuple[int, ...]
    output_count: int
    # A user-safe reason when failed (with a reference id for operators), else None.
    error: str | None
    interaction: InteractionRef | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    delivered_at: datetime | None
    parent_job_id: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # A two-subject render's second avatar ("image 2"): its id (None once deleted) and its
    # name (kept after a rename or deletion). Both None for a one-subject render.
    with_avatar_id: int | None = None
    with_avatar_name: str | None = None
    # Each output's likeness to the avatar, in order (None: not measured; engine/likeness.py).
    likeness: tuple[LikenessScore | None, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def avatar_names(self) -> tuple[str, ...]:
        """The names of the avatars in the picture, first ("image 1") first."""
        if self.with_avatar_name is None:
            return (self.avatar_name,)
        return (self.avatar_name, self.with_avatar_name)


@dataclass(frozen=True)
class AttemptView:
    """One attempt of a job (``avatarbot job show``)."""

    number: int
    worker_id: str
    claimed_at: datetime
    ended_at: datetime | None
    outcome: str | None
    error: str | None


@dataclass(frozen=True)
class JobHistory:
    job: JobView
    attempts: tuple[AttemptView, ...]
    worker_id: str | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class GuildQuotas:
    """A guild's quota settings (defaults from ``Settings.quotas`` until an admin sets one).

    ``guild_id`` None stands for "no guild" (CLI use).
    """

    guild_id: int | None
    renders_per_day: int
    avatars_per_member: int
    photos_per_avatar: int
    queued_per_member: int
    queued_per_guild: int
    images_per_render: int
    max_steps: int
    max_side: int
    renders_per_minute: int
    creates_per_hour: int
    # Renders a day the safety checks may withhold before new ones are refused (built from
    # ``QuotaDefaults``, which holds the real default).
    withheld_per_day: int = 3
    # Best of k by default (candidates per render; 1: no choice).
    best_of: int = 1
    # None: the engine's default personalizer.
    personalizer: str | None = None
    # Flagged images in age-restricted channels: "block" (default) or "spoiler".
    nsfw_policy: str = "block"
    # The guild's changes to the default prompt blocklist.
    blocked_terms: tuple[str, ...] = ()
    allowed_terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class UsageView:
    """A member's renders today (UTC day) in a guild and when the count resets."""

    used: int
    limit: int
    remaining: int
    resets_at: datetime


@dataclass(frozen=True)
class UsageRow:
    """One line of an admin usage report: a member's ledger totals for one UTC day.

    ``user_id`` is None for usage kept after a member's forget-me (counts stay, ids go).
    """

    day: date
    user_id: int | None
    reserved: int
    refunded: int
    granted: int
    # Renders the safety checks withheld entirely or refused on the worker (counted apart).
    withheld: int = 0
    # The mean face likeness of the day's person renders still kept (None: none), and how
    # many of their images lost the face (bot/services/likeness.py).
    likeness: float | None = None
    lost_faces: int = 0

    @property
    def net(self) -> int:
        return self.reserved - self.refunded - self.granted


@dataclass(frozen=True)
class UsageReport:
    guild_id: int
    days: int
    rows: tuple[UsageRow, ...]


@dataclass(frozen=True)
class ErasureReport:
    """What a forget-me (or a member purge) removed, counted per kind of row."""

    user_id: int
    avatars: int = 0
    photos: int = 0
    features: int = 0
    consents: int = 0
    jobs: int = 0
    outputs: int = 0
    ledger_rows_anonymised: int = 0
    # Renders with another member's avatar that went too (either member's erasure takes
    # them), and the grants and requests between members.
    joint_jobs: int = 0
    grants: int = 0
    asks: int = 0
    # The posted messages of those joint renders (channel, message), for the bot to delete.
    posted: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class GuildErasure:
    """What removing a guild deleted (members' avatars are theirs and stay)."""

    guild_id: int
    settings: int = 0
    jobs: int = 0
    outputs: int = 0
    ledger_rows: int = 0


@dataclass(frozen=True)
class ReencryptReport:
    """Blobs rewritten under the current data key (or found already sealed with it); ``jobs``
    counts jobs whose prompts or interaction token were re-sealed, ``asks`` the same of
    requests to render with another member's avatar."""

    photos: int = 0
    features: int = 0
    outputs: int = 0
    jobs: int = 0
    asks: int = 0
    unchanged: int = 0
