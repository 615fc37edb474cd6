"""Renders with another member's avatar, with their consent (issue 26).

Alice asks to render her avatar with Bob's. Before Bob is asked anything, everything that
could refuse the render is checked: Bob's avatar allows asking (``others_may_ask``, off by
default) or Bob always allows Alice (a grant), the guild allows cross-member renders, both
are members of the guild, the prompt policy with both subjects (a sexual prompt with a person
avatar is refused everywhere, whatever the consent), the options and Alice's quota and
queues (nothing reserved). Then a grant queues the render at once, charged to Alice;
otherwise a request waits for Bob's answer until it expires (``ask_minutes``): Approve once
queues it and charges Alice, Always allow also records the grant, Decline ends it; an expired
or declined request charges nothing. Either member revokes a grant at any time.

The request holds Alice's prompt sealed like a job's (bound to the row and to Alice), the
validated settings and Alice's interaction, so the approved job answers her own command. Bob
sees the prompt, the channel and the name of Alice's avatar; Alice sees only the name of
Bob's avatar, never its photos or features (the job's worker opens them bound to Bob).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Forbidden, InvalidInput, NotFound, NotOwner
from bot.services import audit, crypto
from bot.services.crypto import DataCipher
from bot.services.job_settings import StoredRender, read_render, render_column
from bot.services.jobs import SEALED_JOB_TEXTS
from bot.services.names import name_key
from bot.services.render_subjects import PreparedRender, Subject
from bot.services.renders import RenderService
from bot.services.results import InteractionRef, JobTicket, RenderOptions
from db.models import AskStatus, Avatar, AvatarAsk
from db.repositories import avatars as avatars_repo
from db.repositories import friends as repo
from db.repositories import guilds as guilds_repo
from db.repositories.common import checkpoint, scrub_deletes
from db.repositories.friends import GrantRow, JointRender
from db.session import Database
from db.types import utcnow

logger = logging.getLogger(__name__)

ASK_MINUTES = 15
# How many joint renders ``/avatar usage`` lists (the newest).
HISTORY_LIMIT = 10

# Whether a member belongs to a guild, ``(guild_id, user_id)`` (the bot asks Discord).
MemberCheck = Callable[[int, int], Awaitable[bool]]


@dataclass(frozen=True)
class AskView:
    """A request as the two members see it: names and the prompt, never photos."""

    id: int
    requester_id: int
    owner_id: int
    avatar_name: str  # the owner's avatar asked for
    requester_avatar_name: str
    prompt: str
    guild_id: int | None
    channel_id: int | None
    status: AskStatus
    expires_at: datetime
    interaction: InteractionRef | None


@dataclass(frozen=True)
class Asked:
    """What asking did: queued at once (a grant) or a request waiting for the owner."""

    ticket: JobTicket | None = None
    waiting: AskView | None = None


@dataclass(frozen=True)
class Answered:
    """The owner's answer: the request, and the job when approved."""

    ask: AskView
    ticket: JobTicket | None = None


class FriendService:
    def __init__(
        self,
        database: Database,
        renders: RenderService,
        cipher: DataCipher,
        *,
        ask_minutes: int = ASK_MINUTES,
    ) -> None:
        self._db = database
        self._renders = renders
        self._cipher = cipher
        self._ttl = timedelta(minutes=ask_minutes)

    # -- asking ----------------------------------------------------------------------------

    async def ask(
        self,
        requester_id: int,
        guild_id: int | None,
        channel_id: int | None,
        avatar_name: str,
        friend_id: int,
        friend_avatar: str,
        prompt: str,
        options: RenderOptions = RenderOptions(),
        interaction: InteractionRef | None = None,
        *,
        age_restricted: bool = False,
        is_member: MemberCheck,
    ) -> Asked:
        """Render ``avatar_name`` (the requester's) with ``friend_avatar`` (``friend_id``'s):
        queued at once when the friend always allows it, else a request for their answer.
        Raises what :meth:`RenderService.request` raises, ``Forbidden`` (not shared, the
        guild forbids it, not both members) and ``NotFound``; nothing is queued, charged or
        sent to the friend then."""
        if guild_id is None:
            raise InvalidInput("Renders with another member's avatar work in a server.")
        if friend_id == requester_id:
            raise InvalidInput("That is you: name your own avatar in “with” without “friend”.")
        async with self._db.begin(readonly=True) as session:
            avatar = await _shared_avatar(session, friend_id, friend_avatar, requester_id)
            granted = await repo.grant_for(session, avatar.id, requester_id) is not None
            await _require_guild_allows(session, guild_id)
        await _require_members(is_member, guild_id, requester_id, friend_id)
        prepared = await self._renders.prepare(
            requester_id,
            guild_id,
            avatar_name,
            prompt,
            options,
            age_restricted=age_restricted,
            with_avatar=avatar.name,
            with_owner=friend_id,
        )
        if granted:
            ticket = await self._renders.enqueue(
                requester_id, guild_id, channel_id, prepared, interaction
            )
            return Asked(ticket=ticket)
        await self._renders.check_admission(requester_id, guild_id, prepared)
        now = utcnow()
        async with self._db.begin() as session:
            first, second = prepared.subjects
            stored = StoredRender(
                prepared.settings, avatar_name=first.name, with_avatar_name=second.name
            )
            texts = {
                "prompt": prepared.prompt,
                "negative_prompt": prepared.settings.negative_prompt,
                "interaction_token": interaction.token if interaction is not None else None,
            }
            row = AvatarAsk(
                requester_id=requester_id,
                owner_id=friend_id,
                avatar_id=second.id,
                requester_avatar_id=first.id,
                guild_id=guild_id,
                channel_id=channel_id,
                prompt="",
                negative_prompt="",
                settings=render_column(stored),
                seed=prepared.settings.seed,
                created_at=now,
                expires_at=now + self._ttl,
            )
            if interaction is not None:
                row.interaction_app_id = interaction.application_id
                row.interaction_expires_at = interaction.expires_at
                row.interaction_message_id = interaction.message_id
            await repo.add_ask(session, row)
            for name, value in texts.items():
                if value:
                    binding = crypto.ask_binding(SEALED_JOB_TEXTS[name], row.id, requester_id)
                    setattr(row, name, self._cipher.seal_text(value, binding))
            await session.flush()
            view = self._view(row, second.name, first.name)
        logger.info("ask %s waits for the avatar owner's answer", view.id)
        return Asked(waiting=view)

    async def approve(
        self, owner_id: int, ask_id: int, *, always: bool, is_member: MemberCheck
    ) -> Answered:
        """The owner approves: the render is queued and charged to the requester (``always``:
        and the requester may render with this avatar without asking from now on). An
        expired or answered request is refused, and nothing is charged."""
        now = utcnow()
        async with self._db.begin() as session:
            row = await self._open(session, owner_id, ask_id, now)
            await _require_guild_allows(session, row.guild_id)
            row.status = AskStatus.APPROVED
            row.decided_at = now
            avatar_id = row.avatar_id
            theirs = await avatars_repo.by_id(session, row.avatar_id)
            mine = await avatars_repo.by_id(session, row.requester_avatar_id)
            if theirs is None or mine is None:  # cascades delete the row first; belt and braces
                raise NotFound("An avatar of this request was deleted.")
            view = self._view(row, theirs.name, mine.name)
            stored = read_render(row.settings, self._open_text(row, "negative_prompt"), row.seed)
            prepared = PreparedRender(
                (Subject.of(mine), Subject.of(theirs)), view.prompt, stored.settings
            )
        try:
            if view.guild_id is not None:
                await _require_members(is_member, view.guild_id, view.requester_id, owner_id)
            ticket = await self._renders.enqueue(
                view.requester_id, view.guild_id, view.channel_id, prepared, view.interaction
            )
        except BaseException:
            # Nothing queued: the request waits again (it may still expire).
            async with self._db.begin() as session:
                again = await repo.get_ask(session, ask_id)
                if again is not None and again.status == AskStatus.APPROVED:
                    again.status, again.decided_at = AskStatus.PENDING, None
            raise
        async with self._db.begin() as session:
            again = await repo.get_ask(session, ask_id)
            if again is not None:
                again.job_id = ticket.job_id
            if always:  # once the render is queued: a refused approval grants nothing
                await repo.add_grant(session, avatar_id, owner_id, view.requester_id, now)
        logger.info(
            "ask %s approved (%s): job %s", ask_id, "always" if always else "once", ticket.job_id
        )
        return Answered(view, ticket)

    async def decline(self, owner_id: int, ask_id: int) -> Answered:
        """The owner declines: nothing is queued or charged."""
        now = utcnow()
        async with self._db.begin() as session:
            row = await self._open(session, owner_id, ask_id, now)
            row.status = AskStatus.DECLINED
            row.decided_at = now
            view = await self._view_of(session, row)
        logger.info("ask %s declined", ask_id)
        return Answered(view)

    async def pending(self, owner_id: int) -> list[AskView]:
        """The requests waiting for the member's answer."""
        async with self._db.begin(readonly=True) as session:
            rows = await repo.pending_for(session, owner_id, utcnow())
            return [await self._view_of(session, row) for row in rows]

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete requests past their expiry (answered or not), with the prompts they hold."""
        async with self._db.begin() as session:
            await scrub_deletes(session)
            gone = await repo.delete_expired(session, now or utcnow())
        if gone:
            await checkpoint(self._db)
        return gone

    # -- sharing ---------------------------------------------------------------------------

    async def set_others_may_ask(self, owner_id: int, name: str, on: bool) -> str:
        """Let other members ask to render with the avatar, or not; returns its name."""
        async with self._db.begin() as session:
            avatar = await avatars_repo.by_name(session, owner_id, name_key(_spaced(name)))
            if avatar is None:
                raise NotFound(f"You have no avatar named “{_spaced(name)[:40]}”.")
            avatar.others_may_ask = on
            return avatar.name

    async def grants(self, user_id: int) -> list[GrantRow]:
        """Who may use the member's avatars without asking, and whose the member may."""
        async with self._db.begin(readonly=True) as session:
            return await repo.grants_involving(session, user_id)

    async def history(self, user_id: int, limit: int = HISTORY_LIMIT) -> list[JointRender]:
        """The member's newest renders with another member's avatar and others' renders with
        theirs, while kept (``output_retention_hours``): both members see each one."""
        async with self._db.begin(readonly=True) as session:
            return await repo.joint_history(session, user_id, limit)

    async def revoke(self, user_id: int, other_id: int, avatar_name: str) -> str:
        """End "always allow" between the two members on the avatar named ``avatar_name``
        (the member's own, or the other's that the member may use); returns its name."""
        key = name_key(_spaced(avatar_name))
        async with self._db.begin() as session:
            for owner in (user_id, other_id):
                avatar = await avatars_repo.by_name(session, owner, key)
                if avatar is not None and await repo.delete_grant(
                    session, user_id, avatar.id, other_id
                ):
                    return avatar.name
        raise NotFound("There is no “always allow” between you two on an avatar by that name.")

    async def shared_names(self, requester_id: int, owner_id: int, prefix: str) -> list[str]:
        """The owner's avatars the requester may ask for (for autocomplete)."""
        async with self._db.begin(readonly=True) as session:
            avatars = await avatars_repo.list_for_owner(session, owner_id)
            granted = {g.avatar_name for g in await repo.grants_involving(session, requester_id)}
        start = name_key(prefix)
        return [
            a.name
            for a in avatars
            if (a.others_may_ask or a.name in granted) and name_key(a.name).startswith(start)
        ][:25]

    async def set_cross_member_renders(
        self, guild_id: int, allowed: bool, *, actor_id: int | None, actor_is_admin: bool
    ) -> bool:
        """Allow or forbid renders with another member's avatar in the guild (admins only;
        audited). Requests waiting then are refused when approved."""
        audit.require_admin(actor_is_admin)
        await audit.set_guild_setting(
            self._db,
            guild_id,
            "cross_member_renders",
            allowed,
            current=guild_cross_member_renders,
            actor_id=actor_id,
            action="cross_member_renders",
            detail_key="allowed",
        )
        logger.info("guild %s: cross-member renders %s", guild_id, allowed)
        return allowed

    # -- internals -------------------------------------------------------------------------

    async def _open(
        self, session: AsyncSession, owner_id: int, ask_id: int, now: datetime
    ) -> AvatarAsk:
        row = await repo.get_ask(session, ask_id)
        if row is None:
            raise NotFound("This request has expired or was withdrawn; nothing was rendered.")
        if row.owner_id != owner_id:
            raise NotOwner("Only the avatar's owner can answer this request.")
        if row.status != AskStatus.PENDING:
            raise InvalidInput(f"This request was already answered ({row.status}).")
        if row.expires_at <= now:
            raise InvalidInput("This request has expired; nothing was rendered or charged.")
        return row

    async def _view_of(self, session: AsyncSession, row: AvatarAsk) -> AskView:
        theirs = await avatars_repo.by_id(session, row.avatar_id)
        mine = await avatars_repo.by_id(session, row.requester_avatar_id)
        return self._view(row, theirs.name if theirs else "", mine.name if mine else "")

    def _view(self, row: AvatarAsk, avatar_name: str, requester_avatar_name: str) -> AskView:
        token = self._open_text(row, "interaction_token")
        interaction = None
        if token and row.interaction_app_id is not None and row.interaction_expires_at:
            interaction = InteractionRef(
                row.interaction_app_id,
                token,
                row.interaction_expires_at,
                row.interaction_message_id,
            )
        return AskView(
            id=row.id,
            requester_id=row.requester_id,
            owner_id=row.owner_id,
            avatar_name=avatar_name,
            requester_avatar_name=requester_avatar_name,
            prompt=self._open_text(row, "prompt"),
            guild_id=row.guild_id,
            channel_id=row.channel_id,
            status=AskStatus(row.status),
            expires_at=row.expires_at,
            interaction=interaction,
        )

    def _open_text(self, row: AvatarAsk, name: str) -> str:
        value: str | None = getattr(row, name)
        if not value:
            return ""
        return self._cipher.open_text(
            value, crypto.ask_binding(SEALED_JOB_TEXTS[name], row.id, row.requester_id)
        )


def _spaced(name: str) -> str:
    return " ".join(str(name).split())


async def _shared_avatar(
    session: AsyncSession, owner_id: int, name: str, requester_id: int
) -> Avatar:
    """The owner's avatar by name, if the requester may ask for it (one message for "none by
    that name" and "not shared": which avatars a member has is not told to others)."""
    avatar = await avatars_repo.by_name(session, owner_id, name_key(_spaced(name)))
    shared = avatar is not None and (
        avatar.others_may_ask or await repo.grant_for(session, avatar.id, requester_id)
    )
    if avatar is None or not shared:
        raise Forbidden(
            f"That member has no avatar named “{_spaced(name)[:40]}” that others may ask for "
            "(its owner turns that on with /avatar sharing)."
        )
    return avatar


async def guild_cross_member_renders(session: AsyncSession, guild_id: int | None) -> bool:
    """Whether the guild allows renders with another member's avatar (yes unless its admins
    turned that off)."""
    row = await guilds_repo.get(session, guild_id) if guild_id is not None else None
    return row is None or row.cross_member_renders is not False


async def _require_guild_allows(session: AsyncSession, guild_id: int | None) -> None:
    if not await guild_cross_member_renders(session, guild_id):
        raise Forbidden("This server does not allow renders with another member's avatar.")


async def _require_members(is_member: MemberCheck, guild_id: int, *user_ids: int) -> None:
    for user_id in user_ids:
        if not await is_member(guild_id, user_id):
            raise Forbidden("Both members must belong to this server.")


__all__ = [
    "ASK_MINUTES",
    "Answered",
    "AskView",
    "Asked",
    "FriendService",
    "GrantRow",
    "JointRender",
    "MemberCheck",
]
