"""Renders with another member's avatar: its owner's grants ("always allow this member"),
the requests waiting for an answer, and the joint renders an erasure must find."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from db.models import AskStatus, Avatar, AvatarAsk, AvatarGrant, RenderJob
from db.repositories.common import affected


async def grant_for(session: AsyncSession, avatar_id: int, grantee_id: int) -> AvatarGrant | None:
    return await session.scalar(
        select(AvatarGrant).where(
            AvatarGrant.avatar_id == avatar_id, AvatarGrant.grantee_id == grantee_id
        )
    )


async def add_grant(
    session: AsyncSession, avatar_id: int, owner_id: int, grantee_id: int, now: datetime
) -> AvatarGrant:
    """The grant, added unless it exists."""
    existing = await grant_for(session, avatar_id, grantee_id)
    if existing is not None:
        return existing
    grant = AvatarGrant(avatar_id=avatar_id, owner_id=owner_id, grantee_id=grantee_id)
    grant.created_at = now
    session.add(grant)
    await session.flush()
    return grant


@dataclass(frozen=True)
class GrantRow:
    id: int
    avatar_name: str
    owner_id: int
    grantee_id: int


async def grants_involving(session: AsyncSession, user_id: int) -> list[GrantRow]:
    """Grants on the member's avatars and grants others gave the member, oldest first."""
    rows = await session.execute(
        select(AvatarGrant, Avatar.name)
        .join(Avatar, Avatar.id == AvatarGrant.avatar_id)
        .where(or_(AvatarGrant.owner_id == user_id, AvatarGrant.grantee_id == user_id))
        .order_by(AvatarGrant.id)
    )
    return [GrantRow(g.id, name, g.owner_id, g.grantee_id) for g, name in rows.all()]


async def delete_grant(session: AsyncSession, user_id: int, avatar_id: int, other_id: int) -> int:
    """Revoke a grant between ``user_id`` and ``other_id`` on ``avatar_id``, whichever of the
    two owns the avatar."""
    result = await session.execute(
        delete(AvatarGrant).where(
            AvatarGrant.avatar_id == avatar_id,
            or_(
                and_(AvatarGrant.owner_id == user_id, AvatarGrant.grantee_id == other_id),
                and_(AvatarGrant.owner_id == other_id, AvatarGrant.grantee_id == user_id),
            ),
        )
    )
    return affected(result)


async def add_ask(session: AsyncSession, ask: AvatarAsk) -> None:
    """Insert ``ask``; its id is set when this returns."""
    session.add(ask)
    await session.flush()


async def get_ask(session: AsyncSession, ask_id: int) -> AvatarAsk | None:
    """The request, locked for its answer (one answer wins)."""
    return await session.scalar(
        select(AvatarAsk)
        .where(AvatarAsk.id == ask_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def asks_page(session: AsyncSession, after_id: int, limit: int) -> list[AvatarAsk]:
    """A page of requests by id (re-encryption of their prompts and interaction tokens)."""
    rows = await session.scalars(
        select(AvatarAsk).where(AvatarAsk.id > after_id).order_by(AvatarAsk.id).limit(limit)
    )
    return list(rows)


async def pending_for(session: AsyncSession, owner_id: int, now: datetime) -> list[AvatarAsk]:
    """The requests waiting for ``owner_id``'s answer, oldest first."""
    rows = await session.scalars(
        select(AvatarAsk)
        .where(
            AvatarAsk.owner_id == owner_id,
            AvatarAsk.status == AskStatus.PENDING,
            AvatarAsk.expires_at > now,
        )
        .order_by(AvatarAsk.id)
    )
    return list(rows)


async def delete_expired(session: AsyncSession, now: datetime) -> int:
    """Requests past their expiry, answered or not: the prompt they hold goes."""
    result = await session.execute(delete(AvatarAsk).where(AvatarAsk.expires_at <= now))
    return affected(result)


@dataclass(frozen=True)
class FriendsErasure:
    grants: int
    asks: int


async def delete_user_data(session: AsyncSession, user_id: int) -> FriendsErasure:
    """Every grant and request the member is part of, on either side."""
    grants = await session.execute(
        delete(AvatarGrant).where(
            or_(AvatarGrant.owner_id == user_id, AvatarGrant.grantee_id == user_id)
        )
    )
    asks = await session.execute(
        delete(AvatarAsk).where(
            or_(AvatarAsk.owner_id == user_id, AvatarAsk.requester_id == user_id)
        )
    )
    return FriendsErasure(grants=affected(grants), asks=affected(asks))


def joint_jobs_of_user(user_id: int) -> ColumnElement[bool]:
    """Jobs that show one of ``user_id``'s avatars and another member's together: those the
    member asked for with someone else's avatar, and those others made with theirs."""
    second = aliased(Avatar)
    theirs = select(Avatar.id).where(Avatar.owner_id == user_id).scalar_subquery()
    with_someone_else = (
        select(second.id)
        .where(second.id == RenderJob.with_avatar_id, second.owner_id != RenderJob.user_id)
        .exists()
    )
    return or_(
        and_(RenderJob.user_id == user_id, with_someone_else),
        and_(
            RenderJob.user_id != user_id,
            or_(RenderJob.avatar_id.in_(theirs), RenderJob.with_avatar_id.in_(theirs)),
        ),
    )


def joint_jobs_of_avatar(avatar_id: int, owner_id: int) -> ColumnElement[bool]:
    """Jobs another member made with the avatar."""
    return and_(
        RenderJob.user_id != owner_id,
        or_(RenderJob.avatar_id == avatar_id, RenderJob.with_avatar_id == avatar_id),
    )


@dataclass(frozen=True)
class JointRender:
    """One render of a member's with another member's avatar, as either of them lists it."""

    job_id: int
    requester_id: int
    owner_id: int  # of ``avatar_name``, the avatar the requester borrowed
    avatar_name: str
    status: str
    created_at: datetime


async def joint_history(session: AsyncSession, user_id: int, limit: int) -> list[JointRender]:
    """The newest renders (still kept) that ``user_id`` made with another member's avatar, or
    that another member made with one of theirs."""
    borrowed = aliased(Avatar)
    rows = await session.execute(
        select(
            RenderJob.id,
            RenderJob.user_id,
            borrowed.owner_id,
            borrowed.name,
            RenderJob.status,
            RenderJob.created_at,
        )
        .join(borrowed, borrowed.id == RenderJob.with_avatar_id)
        .where(
            borrowed.owner_id != RenderJob.user_id,
            or_(RenderJob.user_id == user_id, borrowed.owner_id == user_id),
        )
        .order_by(RenderJob.created_at.desc(), RenderJob.id.desc())
        .limit(limit)
    )
    return [JointRender(*row) for row in rows.all()]


async def posted_messages(
    session: AsyncSession, condition: ColumnElement[bool]
) -> list[tuple[int, int]]:
    """The (channel, message) of each posted result among the jobs matching ``condition``."""
    rows = await session.execute(
        select(RenderJob.posted_channel_id, RenderJob.posted_message_id).where(
            condition,
            RenderJob.posted_channel_id.is_not(None),
            RenderJob.posted_message_id.is_not(None),
        )
    )
    return [(int(c), int(m)) for c, m in rows.all() if c is not None and m is not None]
