"""Sharing avatars with other members (issue 26; the rules: bot/services/friends.py): what
``/avatar list`` adds about who may use whose avatars, and deleting the posted messages of
joint renders an erasure took with it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from bot.services.friends import GrantRow, JointRender
from bot.ui.errors import discord_time

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)


def grants_text(user_id: int, grants: Sequence[GrantRow]) -> str:
    """Who may use the member's avatars without asking, and whose the member may use."""
    given = [g for g in grants if g.owner_id == user_id]
    received = [g for g in grants if g.grantee_id == user_id]
    lines: list[str] = []
    if given:
        lines.append("Members who may render with your avatars without asking:")
        lines += [f"- **{_escape(g.avatar_name)}** — <@{g.grantee_id}>" for g in given]
    if received:
        lines.append("Other members' avatars you may render with without asking:")
        lines += [f"- **{_escape(g.avatar_name)}** of <@{g.owner_id}>" for g in received]
    if lines:
        lines.append("Either member ends one with `/avatar revoke`.")
    return "\n".join(lines)


def history_text(user_id: int, renders: Sequence[JointRender]) -> str:
    """``/avatar usage``'s list of joint renders: each shows to both members (charged to
    the one who asked)."""
    if not renders:
        return ""
    lines = ["Renders with another member's avatar (while kept):"]
    for r in renders:
        name = _escape(r.avatar_name)
        if r.requester_id == user_id:
            who = f"you with **{name}** of <@{r.owner_id}> (charged to you)"
        else:
            who = f"<@{r.requester_id}> with your **{name}**"
        lines.append(f"- render #{r.job_id}: {who}, {r.status}, {discord_time(r.created_at)}")
    return "\n".join(lines)


async def delete_posted(bot: AvatarBot, posted: Sequence[tuple[int, int]]) -> int:
    """Delete the bot's own posted result messages (channel, message) of erased joint
    renders; returns how many went (one already gone or unreachable is skipped)."""
    deleted = 0
    for channel_id, message_id in posted:
        message = bot.get_partial_messageable(channel_id).get_partial_message(message_id)
        try:
            await message.delete()
            deleted += 1
        except discord.NotFound:
            deleted += 1  # someone deleted it already
        except discord.HTTPException as exc:
            logger.warning("could not delete an erased render's message: %s", exc)
    return deleted


def _escape(text: str) -> str:
    return discord.utils.escape_markdown(text)
