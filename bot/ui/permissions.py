"""The channel permissions the bot uses, written once: the invite link asks for exactly these.

Most of what the bot says needs no channel permission at all: slash commands are answered
through the interaction (its response and its webhook's follow-ups), and direct messages are
outside any guild. Only the render result's fallback posts in a channel: when the interaction
token has expired (a long queue, a restart), ``bot/cogs/render/delivery.py`` sends the result to
the channel the command came from, with the member's mention, the result's embed, its images
and its buttons. That message needs each permission below; nothing else the bot does needs one
(``guild.fetch_member`` needs none; the buttons use plain emoji, so no external emojis; nothing
reads history or mentions roles).
"""

from __future__ import annotations

import discord

# Permission (discord.Permissions' attribute) -> why the bot needs it.
CHANNEL_PERMISSIONS: dict[str, str] = {
    "view_channel": "see the channel a render came from, to post its late result there",
    "send_messages": "post a late render result in that channel",
    "send_messages_in_threads": "the same when the render was asked for in a thread",
    "embed_links": "the result's embed (prompt, avatar, settings)",
    "attach_files": "the rendered images",
}


def bot_permissions() -> discord.Permissions:
    """The permissions the bot asks for when invited (``avatarbot invite``)."""
    return discord.Permissions(**dict.fromkeys(CHANNEL_PERMISSIONS, True))
