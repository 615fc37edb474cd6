"""``/avatar …``: create, list, show, rename, delete, forget-me, usage, help.

The ``/avatar`` group lives here; the render feature adds ``/avatar render`` to it from its
own package. Every command that touches the database acknowledges the interaction first
(``defer``), then calls the services; errors go to the tree's one error handler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.avatars.creation import CreationMessages
from bot.cogs.avatars.sharing import delete_posted, grants_text, history_text
from bot.cogs.avatars.views import CreateAvatarModal, Uploaded, avatar_embed, sheet_file
from bot.cogs.place import place_of
from bot.errors import AvatarbotError
from bot.services.container import Services
from bot.services.results import InteractionRef
from bot.ui.confirm import ask
from bot.ui.errors import NO_MENTIONS, discord_time
from bot.ui.images import DEFAULT_FILESIZE_LIMIT

if TYPE_CHECKING:
    from bot.app import AvatarBot

logger = logging.getLogger(__name__)

# The personal quota's scope, as members read it (bot/cogs/place.py).
OUTSIDE_SERVERS = "outside servers I'm in (DMs, and where you installed me yourself)"


HELP_TEXT = """\
**avatarbot** renders pictures of a person, pet or object from a few photos.

1. `/avatar create` — give it a name, pick what it is, upload 1–10 photos and confirm they are \
yours to use. You get a contact sheet of the photos kept.
2. `/avatar render` — pick your avatar, write a prompt (“as an astronaut on the moon”), \
optionally a style, an aspect, how many images and a seed. The images appear in the channel \
with **Reroll**, **Variations** and **Delete** buttons.
   **Two avatars in one picture**: add `with` (another of your avatars). The first avatar is \
“image 1”, the second “image 2”; say who is who, e.g. “the person from image 1 and the dog \
from image 2 on a beach”. Only some servers' renderers can do this; the others say so.
   **Likeness** under each image: how much the face looks like the faces in your photos \
(“likeness 82 %”). 50 % is the line the bot uses to decide that two photos show the same \
person; below it, the render drifted from you. “no face found” means the render lost the \
face. Pets and objects show how similar the picture is to their photos, where the server's \
renderer can measure it.
   **Best of**: `best_of: 4` renders four and posts the one(s) most like you; it counts as \
more renders (as the server's operator set it).
3. `/avatar list`, `show`, `rename`, `delete` — manage your avatars. Only you see your \
photos. Others render with your avatar only if you let them ask (`/avatar sharing`) and \
approve (DM or `/avatar requests`); `/avatar revoke` ends “always allow”. Ask for theirs: \
`/avatar render friend: @them with: <avatar>`.
4. `/avatar usage` — renders left today and when the count resets.
5. `/avatar forget-me` — erase everything the bot keeps about you.

In a DM with me, and anywhere once you add me to your own account (Add App → Add to My Apps), \
`/avatar` works too: renders there count against your personal quota, and only you see them.

Server managers: `/avatar-admin quota show|set`, `/avatar-admin usage`, `/avatar-admin purge`."""


async def avatar_name_autocomplete(
    interaction: discord.Interaction[AvatarBot], current: str
) -> list[app_commands.Choice[str]]:
    """The member's own avatars whose name starts with what they typed (no defer possible:
    autocomplete must answer directly, and this is one indexed read)."""
    bot = interaction.client
    try:
        names = await bot.services.avatars.names(interaction.user.id, current, 25)
    except AvatarbotError:
        return []
    return [app_commands.Choice(name=n, value=n) for n in names]


# Installable to a server and to a member's own account, usable in servers, in DMs with the
# bot and in other private channels (bot/cogs/place.py says which scope applies where).
@app_commands.allowed_installs(guilds=True, users=True)
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
class AvatarsCog(commands.GroupCog, group_name="avatar", group_description="Your avatars"):
    def __init__(self, bot: AvatarBot, creations: CreationMessages) -> None:
        self.bot = bot
        self.creations = creations

    @property
    def services(self) -> Services:
        return self.bot.services

    # -------------------------------------------------------------------- create

    @app_commands.command(name="create", description="Create an avatar from 1–10 photos")
    async def create(self, interaction: discord.Interaction[AvatarBot]) -> None:
        # A modal must be the first answer: no database work before it (the limits it shows
        # are the configured defaults; the service checks the guild's own on submit).
        modal = CreateAvatarModal(
            self._finish_create,
            max_photos=self.bot.settings.quotas.photos_per_avatar,
            max_bytes=self.bot.settings.photos.max_bytes,
        )
        await interaction.response.send_modal(modal)

    async def _finish_create(
        self,
        interaction: discord.Interaction[AvatarBot],
        ref: InteractionRef,
        name: str,
        kind: str,
        files: Uploaded,
        consent: bool,
    ) -> None:
        # Intake here; the subject checks and the encoding are a job a worker runs. The same
        # private message then shows the summary (creation.py).
        place = place_of(interaction)
        ticket = await self.services.avatars.create(
            interaction.user.id,
            place.guild_id,
            name,
            kind,
            files,
            consent,
            channel_id=place.channel_id,
            interaction=ref,
        )
        await self.creations.checking(ticket, ref)

    # -------------------------------------------------------------------- reading

    @app_commands.command(name="list", description="Your avatars")
    async def list_avatars(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        avatars = await self.services.avatars.list(interaction.user.id)
        shared = grants_text(
            interaction.user.id, await self.services.friends.grants(interaction.user.id)
        )
        if not avatars:
            text = "You have no avatar yet. Create one with `/avatar create`."
            await interaction.followup.send(
                "\n\n".join(t for t in (text, shared) if t),
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        lines = [
            f"- **{discord.utils.escape_markdown(a.name)}** — {a.kind}, "
            f"{a.photo_count} photo{'s' if a.photo_count != 1 else ''}"
            + (" — others may ask to render with it" if a.others_may_ask else "")
            for a in avatars
        ]
        await interaction.followup.send(
            "\n\n".join(t for t in ("Your avatars:\n" + "\n".join(lines), shared) if t),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="sharing", description="Whether others may ask for an avatar")
    @app_commands.describe(
        avatar="Which of your avatars",
        others_may_ask="Let other members ask to render with it (you approve each request)",
    )
    @app_commands.autocomplete(avatar=avatar_name_autocomplete)
    async def sharing(
        self, interaction: discord.Interaction[AvatarBot], avatar: str, others_may_ask: bool
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        name = await self.services.friends.set_others_may_ask(
            interaction.user.id, avatar, others_may_ask
        )
        shown = discord.utils.escape_markdown(name)
        await interaction.followup.send(
            f"Other members may now ask to render with **{shown}**; you approve each request."
            if others_may_ask
            else f"Nobody can ask for **{shown}** any more (members you always allow still "
            "may: `/avatar revoke` ends that).",
            ephemeral=True,
        )

    @app_commands.command(name="revoke", description="End “always allow” between you and a member")
    @app_commands.describe(
        member="The other member", avatar="The avatar (yours, or theirs you may use)"
    )
    async def revoke(
        self, interaction: discord.Interaction[AvatarBot], member: discord.User, avatar: str
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        name = await self.services.friends.revoke(interaction.user.id, member.id, avatar)
        await interaction.followup.send(
            f"Revoked: renders with **{discord.utils.escape_markdown(name)}** between you and "
            f"{member.mention} need an approval again.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="show", description="One of your avatars, with its photos")
    @app_commands.describe(avatar="Which avatar")
    @app_commands.autocomplete(avatar=avatar_name_autocomplete)
    async def show(self, interaction: discord.Interaction[AvatarBot], avatar: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = await self.services.avatars.get(interaction.user.id, avatar)
        photos = await self.services.avatars.photos(interaction.user.id, view.name)
        limit = getattr(interaction, "filesize_limit", DEFAULT_FILESIZE_LIMIT)
        # Numbered 1, 2, ... (contact_sheet's default captions).
        sheet = await asyncio.to_thread(sheet_file, photos, None, limit)
        await interaction.followup.send(embed=avatar_embed(view, sheet), file=sheet, ephemeral=True)

    # -------------------------------------------------------------------- changing

    @app_commands.command(name="rename", description="Rename one of your avatars")
    @app_commands.describe(avatar="Which avatar", new_name="Its new name")
    @app_commands.autocomplete(avatar=avatar_name_autocomplete)
    async def rename(
        self,
        interaction: discord.Interaction[AvatarBot],
        avatar: str,
        new_name: app_commands.Range[str, 1, 32],
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = await self.services.avatars.rename(interaction.user.id, avatar, new_name)
        await interaction.followup.send(
            f"Renamed to **{discord.utils.escape_markdown(view.name)}**.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="delete", description="Delete one of your avatars and its photos")
    @app_commands.describe(avatar="Which avatar")
    @app_commands.autocomplete(avatar=avatar_name_autocomplete)
    async def delete(self, interaction: discord.Interaction[AvatarBot], avatar: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        view = await self.services.avatars.get(interaction.user.id, avatar)
        name = discord.utils.escape_markdown(view.name)
        message = await ask(
            interaction,
            f"Delete **{name}** and its {view.photo_count} photos? This cannot be undone.",
            confirm_label="Delete",
        )
        if message is None:
            return
        erased = await self.services.avatars.delete(interaction.user.id, view.name)
        await delete_posted(self.bot, erased.posted)
        joint = (
            f" {erased.jobs} render(s) other members made with it are deleted too."
            if erased.jobs
            else ""
        )
        await message.edit(content=f"**{name}** is deleted, photos and all.{joint}", view=None)

    @app_commands.command(name="forget-me", description="Erase everything the bot keeps about you")
    async def forget_me(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        message = await ask(
            interaction,
            "Erase **everything** the bot keeps about you — every avatar, photo, consent, "
            "prompt and rendered image, in every server? This cannot be undone.",
            confirm_label="Erase everything",
        )
        if message is None:
            return
        report = await self.services.privacy.forget_me(interaction.user.id)
        # Renders with another member's avatar go from the channels too (both members').
        await delete_posted(self.bot, report.posted)
        await message.edit(
            content=(
                f"Done. Erased {report.avatars} avatar(s), {report.photos} photo(s), "
                f"{report.jobs} render(s) and {report.outputs} image(s)."
                + (
                    f" {report.joint_jobs} render(s) with another member's avatar went too, "
                    "their posted messages included."
                    if report.joint_jobs
                    else ""
                )
                + " Messages of your own renders already posted in channels stay until you "
                "delete them."
            ),
            view=None,
        )

    # -------------------------------------------------------------------- info

    @app_commands.command(name="usage", description="Your renders left today")
    async def usage(self, interaction: discord.Interaction[AvatarBot]) -> None:
        place = place_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        usage = await self.services.quotas.usage(place.guild_id, interaction.user.id)
        here = OUTSIDE_SERVERS if place.personal else "in this server"
        joint = history_text(
            interaction.user.id, await self.services.friends.history(interaction.user.id)
        )
        text = (
            f"You have used {usage.used} of {usage.limit} renders today {here}; "
            f"{usage.remaining} left. The count resets {discord_time(usage.resets_at)}."
        )
        await interaction.followup.send(
            f"{text}\n\n{joint}"[:2000] if joint else text,
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="help", description="How avatarbot works")
    async def help(self, interaction: discord.Interaction[AvatarBot]) -> None:
        await interaction.response.send_message(HELP_TEXT, ephemeral=True)
