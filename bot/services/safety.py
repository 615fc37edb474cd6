"""Output safety in the services: what happens to flagged images, and the admin's policy.

Every rendered image passes the output check on the worker (engine/safety.py through the
engine port) before it is stored; ``RenderWork.commit`` stores each image's ``flagged`` and
the verdicts (scores and checkers, never images) in the job's ``result`` under ``"safety"``.

Who sees a flagged image:

- in a channel not marked age-restricted: nobody; it is never posted;
- in an age-restricted channel: the guild's ``nsfw_policy`` decides: ``block`` (the default,
  also for a guild that never chose) or ``spoiler`` (posted behind Discord's spoiler cover);
- in a render of a person avatar (either subject of a two-avatar render; a subject whose
  avatar was deleted meanwhile counts as a person): nobody, in any channel under any policy.
  Real people are never shown sexualised: spoilers are for pets and objects only. Delivery
  checks the avatars again (``render_shows_a_person``), so a record written before this rule
  cannot post a person's flagged image either.

The member is told privately when images were withheld. The decision is taken once, in the
transaction that finishes the job (with the guild's policy at that moment), and recorded with
the verdicts; delivery follows the recorded decision, so what is posted and what is counted
always agree.

Quota rule (see bot/services/withheld.py for its bound): a render whose every image was
withheld is refunded, in that same transaction (the
member got nothing, and the prompt already passed the prompt policy before any work: the model,
not the member, produced what was withheld). A render with at least one image posted counts in
full, like any render (the member got a result; the withheld ones are part of its cost). The
refund is recorded with the verdicts (``"refunded": true``) and in the ledger's note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import SafetySettings
from bot.errors import InvalidInput
from bot.services import audit
from bot.services.ports import OutputPolicy, OutputVerdict
from db.models import Avatar, RenderJob
from db.repositories import guilds as guilds_repo
from db.session import Database
from db.types import utcnow
from kinds import JobKind, SubjectKind

logger = logging.getLogger(__name__)

NSFW_POLICIES = ("block", "spoiler")
DEFAULT_NSFW_POLICY = "block"
# The key of the render job's ``result`` that holds the output check's record.
SAFETY_KEY = "safety"
MAX_SUMMARY_DAYS = 30


def output_policy(settings: SafetySettings) -> OutputPolicy:
    return OutputPolicy(threshold=settings.threshold, classes=tuple(settings.classes))


def flagged_posting(age_restricted: bool, nsfw_policy: str | None, *, person: bool) -> str:
    """What happens to flagged images of a job: ``spoiler`` only for a render of no person in
    an age-restricted channel of a guild that chose it; ``block`` everywhere else."""
    if age_restricted and nsfw_policy == "spoiler" and not person:
        return "spoiler"
    return "block"


# The kinds whose flagged images may ever be posted (as spoilers); anything else is a person.
SPOILER_KINDS = frozenset({SubjectKind.PET.value, SubjectKind.OBJECT.value})


async def render_shows_a_person(session: AsyncSession, avatar_ids: Sequence[int | None]) -> bool:
    """Whether a render of these subjects (``None``: an avatar deleted meanwhile) may show a
    person: fail safe, a subject that cannot be looked up counts as one."""
    if not avatar_ids or any(i is None for i in avatar_ids):
        return True
    rows = await session.execute(
        select(Avatar.id, Avatar.kind).where(Avatar.id.in_([i for i in avatar_ids if i]))
    )
    kinds = {int(avatar_id): str(kind) for avatar_id, kind in rows.all()}
    return any(kinds.get(int(i or 0)) not in SPOILER_KINDS for i in avatar_ids)


async def guild_nsfw_policy(session: AsyncSession, guild_id: int | None) -> str:
    row = await guilds_repo.get(session, guild_id) if guild_id is not None else None
    policy = row.nsfw_policy if row is not None else None
    return policy if policy in NSFW_POLICIES else DEFAULT_NSFW_POLICY


async def guild_live_previews(session: AsyncSession, guild_id: int | None) -> bool:
    """Whether renders in the guild show live previews (on unless its admins turned them off)."""
    row = await guilds_repo.get(session, guild_id) if guild_id is not None else None
    return row is None or row.live_previews is not False


def safety_record(
    verdicts: Sequence[OutputVerdict], flagged_as: str, *, person: bool
) -> dict[str, Any]:
    """The job's ``result["safety"]``: per image its verdict and scores; what was decided and
    whether a person was rendered (why flagged images were blocked)."""
    images = [
        {
            "index": i,
            "flagged": v.flagged,
            "scores": {str(k): round(float(s), 4) for k, s in v.scores.items()},
            "checkers": list(v.checkers),
        }
        for i, v in enumerate(verdicts)
    ]
    withheld = [i for i, v in enumerate(verdicts) if v.flagged and flagged_as == "block"]
    return {"flagged_as": flagged_as, "person": person, "withheld": withheld, "images": images}


@dataclass(frozen=True)
class CheckedOutput:
    """One stored image as delivery needs it."""

    index: int
    png: bytes
    flagged: bool


@dataclass(frozen=True)
class DeliveryPlan:
    """What delivery posts of a finished render: ``(index, png, as_spoiler)`` in order, and the
    indices withheld."""

    posted: tuple[tuple[int, bytes, bool], ...]
    withheld: tuple[int, ...]


def delivery_plan(outputs: Sequence[CheckedOutput], flagged_as: str) -> DeliveryPlan:
    posted = []
    withheld = []
    for out in outputs:
        if not out.flagged:
            posted.append((out.index, out.png, False))
        elif flagged_as == "spoiler":
            posted.append((out.index, out.png, True))
        else:
            withheld.append(out.index)
    return DeliveryPlan(tuple(posted), tuple(withheld))


def recorded_posting(result: dict[str, Any] | None) -> str:
    """The decision recorded with the job (``block`` when none was: the strict one)."""
    record = (result or {}).get(SAFETY_KEY)
    if isinstance(record, dict) and record.get("flagged_as") in NSFW_POLICIES:
        return str(record["flagged_as"])
    return DEFAULT_NSFW_POLICY


@dataclass(frozen=True)
class SafetySummary:
    """``/avatar-admin safety show``: the guild's policy, the check's settings, and what the
    check saw in the guild's recent renders (those still kept)."""

    nsfw_policy: str
    threshold: float
    classes: tuple[str, ...]
    days: int
    renders_checked: int
    images_checked: int
    images_flagged: int
    images_withheld: int
    renders_refunded: int
    live_previews: bool = True


class SafetyService:
    def __init__(self, database: Database, settings: SafetySettings) -> None:
        self._db = database
        self._settings = settings

    async def policy(self, guild_id: int | None) -> str:
        async with self._db.begin(readonly=True) as session:
            return await guild_nsfw_policy(session, guild_id)

    async def set_policy(
        self, guild_id: int, policy: str, *, actor_id: int | None, actor_is_admin: bool
    ) -> str:
        """Choose what happens to flagged images in age-restricted channels (admins only);
        recorded in the audit log in the same transaction."""
        audit.require_admin(actor_is_admin)
        if policy not in NSFW_POLICIES:
            raise InvalidInput(f"The policy must be one of {', '.join(NSFW_POLICIES)}.")
        await audit.set_guild_setting(
            self._db,
            guild_id,
            "nsfw_policy",
            policy,
            current=guild_nsfw_policy,
            actor_id=actor_id,
            action="safety_policy",
            detail_key="nsfw_policy",
        )
        logger.info("guild %s: flagged images in age-restricted channels: %s", guild_id, policy)
        return policy

    async def set_previews(
        self, guild_id: int, on: bool, *, actor_id: int | None, actor_is_admin: bool
    ) -> bool:
        """Turn live previews in progress messages on or off (admins only; audited)."""
        audit.require_admin(actor_is_admin)
        await audit.set_guild_setting(
            self._db,
            guild_id,
            "live_previews",
            on,
            current=guild_live_previews,
            actor_id=actor_id,
            action="live_previews",
            detail_key="on",
        )
        logger.info("guild %s: live previews %s", guild_id, "on" if on else "off")
        return on

    async def summary(self, guild_id: int, *, actor_is_admin: bool, days: int = 7) -> SafetySummary:
        audit.require_admin(actor_is_admin)
        if not 1 <= days <= MAX_SUMMARY_DAYS:
            raise InvalidInput(f"days must be between 1 and {MAX_SUMMARY_DAYS}.")
        since = utcnow() - timedelta(days=days)
        async with self._db.begin(readonly=True) as session:
            policy = await guild_nsfw_policy(session, guild_id)
            previews = await guild_live_previews(session, guild_id)
            results = await session.scalars(
                select(RenderJob.result).where(
                    RenderJob.guild_id == guild_id,
                    RenderJob.kind == JobKind.RENDER,
                    RenderJob.finished_at >= since,
                    RenderJob.result.is_not(None),
                )
            )
            records = [r.get(SAFETY_KEY) for r in results if isinstance(r, dict)]
        checked = [r for r in records if isinstance(r, dict)]
        images = [i for r in checked for i in r.get("images", [])]
        return SafetySummary(
            nsfw_policy=policy,
            threshold=self._settings.threshold,
            classes=tuple(self._settings.classes),
            days=days,
            renders_checked=len(checked),
            images_checked=len(images),
            images_flagged=sum(1 for i in images if i.get("flagged")),
            images_withheld=sum(len(r.get("withheld", [])) for r in checked),
            renders_refunded=sum(1 for r in checked if r.get("refunded")),
            live_previews=previews,
        )
