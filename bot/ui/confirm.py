"""A yes/no question in an ephemeral message, answered by the member who asked.

The command awaits ``ask`` and gets the question's message when the member confirmed, None
when they cancelled or nobody answered in time. The answer is acknowledged by editing the
question (the view's buttons vanish), so a second click is impossible and the member sees what
they chose.
"""

from __future__ import annotations

import logging

import discord

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0


class ConfirmView(discord.ui.View):
    def __init__(
        self, owner_id: int, *, confirm_label: str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(timeout=timeout)
        self.owner_id = owner_id
        self.value: bool | None = None
        self.confirm.label = confirm_label

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message("This question isn't for you.", ephemeral=True)
            return False
        return True

    @discord.ui.button(label="Confirm", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.value = True
        await interaction.response.edit_message(content="Working on it…", view=None)
        self.stop()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.value = False
        await interaction.response.edit_message(content="Cancelled, nothing changed.", view=None)
        self.stop()


async def ask(
    interaction: discord.Interaction,
    question: str,
    *,
    confirm_label: str,
    seconds: float = DEFAULT_TIMEOUT,
) -> discord.WebhookMessage | None:
    """Ask ``question`` as an ephemeral follow-up (the interaction must be acknowledged).

    Returns the question's message when the member confirmed (the caller edits it with the
    outcome), None otherwise.
    """
    view = ConfirmView(interaction.user.id, confirm_label=confirm_label, timeout=seconds)
    message = await interaction.followup.send(
        question,
        view=view,
        ephemeral=True,
        wait=True,
        allowed_mentions=discord.AllowedMentions.none(),
    )
    if await view.wait():  # timed out
        try:
            await message.edit(content="No answer in time, nothing changed.", view=None)
        except discord.HTTPException as exc:
            logger.info("could not close an unanswered question: %s", exc)
        return None
    return message if view.value else None
