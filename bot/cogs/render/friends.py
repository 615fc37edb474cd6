"""Rendering with another member's avatar: the request the owner answers, and its buttons
(bot/services/friends.py decides; this module only talks to Discord).

The owner gets the request by direct message: who asks, with which of their avatars, the
prompt and the channel, and Approve once / Always allow / Decline buttons (``DynamicItem``s
whose custom_id carries the request id, so they work after a restart). When the owner's DMs
are closed the request still waits, and ``/avatar requests`` shows it to them privately with
the same buttons; the requester is told which. The requester's own command message says the
render is waiting, then shows the render's progress once approved (the job answers that
interaction), or that it was declined.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Protocol, cast

import discord
from discord import app_commands

from bot.cogs.interactions import BotButton
from bot.errors import AvatarbotError, QueueFull, QuotaExceeded, RateLimited
from bot.services.friends import AskView, MemberCheck
from bot.services.results import InteractionRef, JobTicket, RenderOptions
from bot.ui.errors import NO_MENTIONS, discord_time
from bot.ui.images import DEFAULT_FILESIZE_LIMIT
from bot.ui.webhooks import edit_ref

from .progress import RenderMessages

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)


class RenderCog(Protocol):
    """What this module needs of the render cog (bot/cogs/render/cog.py), which imports this
    module: named by what it does, so this module does not import the cog back (a circle)."""

    bot: AvatarBot
    messages: RenderMessages

    async def queued(
        self, interaction: discord.Interaction[AvatarBot], ticket: JobTicket, ref: InteractionRef
    ) -> None: ...


ANSWERS = {"once": "Approve once", "always": "Always allow", "decline": "Decline"}


def member_check(bot: AvatarBot) -> MemberCheck:
    """Whether a member belongs to a guild, asked of Discord (never the member cache:
    without the members intent a leave or a kick is never seen, so a cached member may be
    long gone)."""

    async def is_member(guild_id: int, user_id: int) -> bool:
        guild = bot.get_guild(guild_id)
        if guild is None:  # the bot left it, or it is gone
            return False
        try:
            await guild.fetch_member(user_id)
        except discord.NotFound:
            return False
        return True

    return is_member


async def ask_friend(
    cog: RenderCog,
    interaction: discord.Interaction[AvatarBot],
    ref: InteractionRef,
    *,
    avatar: str,
    friend: discord.Member | discord.User,
    friend_avatar: str,
    prompt: str,
    options: RenderOptions,
    age_restricted: bool,
) -> None:
    """``/avatar render`` with ``friend``: queued at once when they always allow it, else a
    request they answer (the requester's message says which)."""
    bot = cog.bot
    asked = await bot.services.friends.ask(
        interaction.user.id,
        interaction.guild_id,
        interaction.channel_id,
        avatar,
        friend.id,
        friend_avatar,
        prompt,
        options,
        ref,
        age_restricted=age_restricted,
        is_member=member_check(bot),
    )
    if asked.ticket is not None:
        await cog.queued(interaction, asked.ticket, ref)
        return
    assert asked.waiting is not None
    waiting = asked.waiting
    where = "by direct message"
    if not await send_request(bot, waiting, interaction.user.display_name):
        where = "with `/avatar requests` (their direct messages are closed)"
    await interaction.edit_original_response(
        content=(
            f"Asked {friend.mention} to approve rendering with their avatar "
            f"**{_escape(waiting.avatar_name)}**; they can answer {where} until "
            f"{discord_time(waiting.expires_at)}. Nothing is rendered or counted unless they "
            "approve."
        ),
        allowed_mentions=NO_MENTIONS,
    )


def request_text(ask: AskView, requester_name: str) -> str:
    """What the owner reads: who asks, with what, the prompt and where (never more)."""
    channel = f"<#{ask.channel_id}>" if ask.channel_id is not None else "a server"
    return (
        f"**{_escape(requester_name)}** (<@{ask.requester_id}>) asks to render their avatar "
        f"**{_escape(ask.requester_avatar_name)}** with your avatar "
        f"**{_escape(ask.avatar_name)}** in {channel}:\n> {_escape(ask.prompt)}\n"
        f"The picture would be posted there. This request expires "
        f"{discord_time(ask.expires_at)}; nothing is rendered unless you approve. **Always "
        f"allow** lets them render with **{_escape(ask.avatar_name)}** without asking until "
        "either of you revokes it (`/avatar revoke`)."
    )


def request_view(ask_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for answer in ANSWERS:
        view.add_item(AnswerButton(ask_id, answer))
    # The buttons are DynamicItems the bot recognises after any restart; no state is kept.
    view.stop()
    return view


async def send_request(bot: AvatarBot, ask: AskView, requester_name: str) -> bool:
    """DM the owner the request; False when their DMs are closed (it still waits)."""
    try:
        user = bot.get_user(ask.owner_id) or await bot.fetch_user(ask.owner_id)
        await user.send(
            request_text(ask, requester_name),
            view=request_view(ask.id),
            allowed_mentions=NO_MENTIONS,
        )
    except discord.HTTPException as exc:
        logger.info("ask %s: the owner's direct messages are closed (%s)", ask.id, exc)
        return False
    return True


class AnswerButton(
    BotButton,
    template=r"avatarbot:ask:(?P<answer>once|always|decline):(?P<ask>[0-9]+)",
):
    """The owner's answer to one request (``avatarbot:ask:once:12``)."""

    def __init__(self, ask_id: int, answer: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=ANSWERS[answer],
                style=discord.ButtonStyle.danger
                if answer == "decline"
                else discord.ButtonStyle.success,
                custom_id=f"avatarbot:ask:{answer}:{ask_id}",
            )
        )
        self.ask_id = ask_id
        self.answer = answer

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> AnswerButton:
        return cls(int(match["ask"]), match["answer"])

    async def press(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await answer(interaction, self.ask_id, self.answer)


async def answer(interaction: discord.Interaction[AvatarBot], ask_id: int, choice: str) -> None:
    """Approve (once or always) or decline; the owner's message and the requester's follow."""
    await interaction.response.defer()
    bot = interaction.client
    friends = bot.services.friends
    if choice == "decline":
        declined = await friends.decline(interaction.user.id, ask_id)
        await interaction.edit_original_response(
            content=f"Declined: nothing was rendered with **{_escape(declined.ask.avatar_name)}**.",
            view=None,
        )
        await _tell_requester(
            bot,
            declined.ask,
            f"<@{declined.ask.owner_id}> declined rendering with their avatar "
            f"**{_escape(declined.ask.avatar_name)}**. Nothing was counted.",
        )
        return
    try:
        approved = await friends.approve(
            interaction.user.id, ask_id, always=choice == "always", is_member=member_check(bot)
        )
    except (QuotaExceeded, QueueFull, RateLimited):
        # The requester's limits, not the owner's doing: said so, and the request stays open.
        await interaction.followup.send(
            "The render cannot be queued right now: the member who asked has reached their "
            "renders or queue limit. The request stays open until it expires; try again later.",
            ephemeral=True,
        )
        return
    ask, ticket = approved.ask, approved.ticket
    assert ticket is not None
    always = (
        f" From now on they may render with **{_escape(ask.avatar_name)}** without asking "
        "(`/avatar revoke` ends it)."
        if choice == "always"
        else ""
    )
    await interaction.edit_original_response(
        content=f"Approved: the render with **{_escape(ask.avatar_name)}** is queued.{always}",
        view=None,
    )
    render_cog = bot.get_cog("RenderCog")
    if render_cog is not None and ask.interaction is not None:
        # The requester's own message shows the render's progress from here.
        messages = cast(RenderCog, render_cog).messages
        await messages.show_queued(ticket, ask.interaction, DEFAULT_FILESIZE_LIMIT)


async def _tell_requester(bot: AvatarBot, ask: AskView, text: str) -> None:
    """The requester learns the answer on their command's message, else by DM."""
    if await edit_ref(bot, ask.interaction, text):
        return
    try:
        user = bot.get_user(ask.requester_id) or await bot.fetch_user(ask.requester_id)
        await user.send(text, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as exc:
        logger.info("ask %s: could not tell the requester (%s)", ask.id, exc)


@app_commands.command(name="requests", description="Requests to render with your avatars")
async def requests_command(interaction: discord.Interaction[AvatarBot]) -> None:
    """The requests waiting for the member's answer, privately, with their buttons (for
    members whose direct messages are closed, or who lost the DM)."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    waiting = await interaction.client.services.friends.pending(interaction.user.id)
    if not waiting:
        await interaction.followup.send("No request is waiting for your answer.", ephemeral=True)
        return
    for ask in waiting[:5]:
        requester = interaction.client.get_user(ask.requester_id)
        await interaction.followup.send(
            request_text(ask, requester.display_name if requester else "A member"),
            view=request_view(ask.id),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


def _escape(text: str) -> str:
    return discord.utils.escape_markdown(discord.utils.escape_mentions(text))


async def friend_avatar_autocomplete(
    interaction: discord.Interaction[AvatarBot], current: str
) -> list[app_commands.Choice[str]]:
    """``with``: the friend's avatars shared with the member when ``friend`` is filled in,
    else the member's own."""
    friend = getattr(interaction.namespace, "friend", None)
    services = interaction.client.services
    try:
        if friend is None or friend.id == interaction.user.id:
            names = await services.avatars.names(interaction.user.id, current, 25)
        else:
            names = await services.friends.shared_names(interaction.user.id, friend.id, current)
    except AvatarbotError:
        return []
    return [app_commands.Choice(name=n, value=n) for n in names]
