"""Answering an interaction later, through its token: what every job's messages use.

A job remembers the interaction that asked for it (``InteractionRef``: application id, token,
expiry, the private message that shows its progress). For 15 minutes the bot can edit that
message and send follow-ups through the interaction's webhook; after that, only other routes
(a channel message, a DM) remain, and each feature decides which are acceptable.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import discord

from bot.services.results import INTERACTION_TOKEN_LIFETIME, InteractionRef
from bot.ui.errors import NO_MENTIONS

logger = logging.getLogger(__name__)

# Do not start a follow-up that may land after the token died mid-upload.
TOKEN_MARGIN = timedelta(seconds=30)


def interaction_ref(
    interaction: discord.Interaction, response: discord.InteractionCallbackResponse | None
) -> InteractionRef:
    """What a job needs to answer this interaction later (its token lives 15 min)."""
    message_id = getattr(response, "message_id", None) if response is not None else None
    return InteractionRef(
        application_id=interaction.application_id,
        token=interaction.token,
        # Discord's clock: the token's lifetime is counted on Discord's side.
        expires_at=interaction.created_at + INTERACTION_TOKEN_LIFETIME,
        message_id=message_id,
    )


def ref_usable(ref: InteractionRef | None) -> bool:
    """True while the token still works for edits and follow-ups (with a margin)."""
    return ref is not None and discord.utils.utcnow() < ref.expires_at - TOKEN_MARGIN


def webhook(client: discord.Client, ref: InteractionRef) -> discord.Webhook:
    hook = discord.Webhook.partial(ref.application_id, ref.token, client=client)
    # An interaction's webhook: ephemeral follow-ups are allowed on it.
    hook.type = discord.WebhookType.application
    return hook


async def edit_ref(
    client: discord.Client, ref: InteractionRef | None, content: str, **kwargs: Any
) -> bool:
    """Edit the interaction's progress message while its token lives; False when that is not
    possible (no message, token expired, Discord refused)."""
    if ref is None or ref.message_id is None or not ref_usable(ref):
        return False
    kwargs.setdefault("allowed_mentions", NO_MENTIONS)
    try:
        await webhook(client, ref).edit_message(ref.message_id, content=content, **kwargs)
    except discord.HTTPException as exc:
        logger.info("edit of message %s failed: %s", ref.message_id, exc)
        return False
    return True


def is_transient(error: BaseException) -> bool:
    """True for Discord failures worth trying again later: rate limits and server errors.

    discord.py already retries these inside each request (several tries with backoff); when
    it gives up, the job stays undelivered and the next sweep tries again, so nothing here
    retries on top of it."""
    if isinstance(error, discord.RateLimited):
        return True
    return isinstance(error, discord.HTTPException) and (error.status == 429 or error.status >= 500)
