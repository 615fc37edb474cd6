"""The avatars in a render and what may be in one picture: the subjects a render names, a
render validated but not yet queued, the personalizer's limit on subjects, and the consent
another member's avatar needs (bot/services/friends.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Forbidden, InvalidInput
from bot.services.ports import EngineFacts
from bot.services.quotas import PERSONALIZERS
from bot.services.results import RenderSettings
from db.models import Avatar
from db.repositories import friends as friends_repo


@dataclass(frozen=True)
class Subject:
    """An avatar in a render, as the checks and the job row need it."""

    id: int
    name: str
    kind: str

    @classmethod
    def of(cls, avatar: Avatar) -> Subject:
        return cls(avatar.id, avatar.name, avatar.kind)


@dataclass(frozen=True)
class PreparedRender:
    """A render validated by :meth:`RenderService.prepare`, not yet queued or charged."""

    subjects: tuple[Subject, ...]
    prompt: str
    settings: RenderSettings


def check_subjects(facts: EngineFacts, personalizer: str, count: int) -> None:
    """Refuse more avatars in one picture than the personalizer shows (before any job)."""
    most = facts.subjects_for(personalizer)
    if count <= most:
        return
    # Only what an admin can pick (``/avatar-admin quota personalizer``) is worth naming.
    able = sorted(
        p for p in PERSONALIZERS if p in facts.encoders and facts.subjects_for(p) >= count
    )
    hint = (
        f" A server admin can switch to {' or '.join(able)} with "
        "`/avatar-admin quota personalizer`."
        if able
        else ""
    )
    shows = "one avatar" if most == 1 else f"at most {most} avatars"
    raise InvalidInput(
        f"This server renders with {personalizer}, which shows {shows} per picture, so "
        f"“with” cannot be used here. Render each avatar on its own.{hint}"
    )


async def require_grant(session: AsyncSession, avatar: Avatar, user_id: int) -> None:
    """Refuse rendering another member's avatar again (a reroll, variations, a refinement)
    unless its owner always allows ``user_id``: approving once was for one render."""
    if avatar.owner_id == user_id:
        return
    if await friends_repo.grant_for(session, avatar.id, user_id) is None:
        raise Forbidden(
            f"“{avatar.name}” is another member's avatar and they approved one render only: "
            "ask them again with /avatar render."
        )
