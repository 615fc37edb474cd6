"""One error path for every interaction: user errors become short ephemeral messages, anything
else a generic message with a reference id that the log line carries too.

Commands get it through the tree's ``on_error``; buttons and modals call ``report_error``
from their own ``try/except`` (discord.py routes their errors elsewhere).
"""

from __future__ import annotations

import logging
from datetime import datetime

import discord
from discord import app_commands

from bot.errors import AvatarbotError, InternalError, QueueFull, QuotaExceeded, RateLimited

logger = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()


def discord_time(when: datetime, style: str = "R") -> str:
    """A Discord timestamp that each member sees in their own time zone (``<t:…:R>``)."""
    return discord.utils.format_dt(when, style=style)  # type: ignore[arg-type]


def user_message(error: BaseException, *, context: str = "") -> str:
    """The text a member sees for ``error``; unexpected errors are logged with a reference."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    elif isinstance(error, app_commands.TransformerError):
        if not isinstance(error.__cause__, AvatarbotError):
            return f"That value isn't valid for `{error.transformer._error_display_name}`."
        error = error.__cause__
    if isinstance(error, QuotaExceeded):
        if error.resets_at is not None:
            return f"{error.message} It resets {discord_time(error.resets_at)}."
        return error.message
    if isinstance(error, QueueFull | RateLimited) and error.retry_at is not None:
        return f"{error.message} Try again {discord_time(error.retry_at)}."
    if isinstance(error, InternalError):
        # Its cause's traceback, or (a bare InternalError, raised as a bug's marker) its own.
        logger.error(
            "internal error %s %s", error.reference, context, exc_info=error.__cause__ or error
        )
        return error.message
    if isinstance(error, AvatarbotError):
        return error.message
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in a server, not in direct messages."
    if isinstance(error, app_commands.MissingPermissions):
        missing = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"You need the {missing} permission to use this command."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    internal = InternalError()
    logger.error("unexpected error (reference %s) %s", internal.reference, context, exc_info=error)
    return internal.message


def _context(interaction: discord.Interaction) -> str:
    command = interaction.command.qualified_name if interaction.command else None
    custom_id = (interaction.data or {}).get("custom_id") if interaction.data else None
    # No user id: logs above DEBUG name jobs, avatars and guilds, never members (README).
    return f"guild={interaction.guild_id} command={command} custom_id={custom_id}"


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the member what went wrong, privately, whatever state the interaction is in."""
    text = user_message(error, context=_context(interaction))
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
    except discord.HTTPException as exc:
        # The token expired or Discord is down: the log line above is all we can do.
        logger.warning("could not report an error to the member: %s", exc)
        logger.debug("the member was user %s", interaction.user.id)


async def on_app_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """The tree's error handler (``bot.tree.on_error``)."""
    await report_error(interaction, error)
