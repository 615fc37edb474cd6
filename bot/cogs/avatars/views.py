"""The avatar creation form and the messages that summarise a creation."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable

import discord

from bot.app import AvatarBot
from bot.cogs.interactions import is_avatarbot
from bot.services.avatars import CONSENT_TEXT
from bot.services.results import AvatarCreated, AvatarView, InteractionRef
from bot.ui.errors import report_error
from bot.ui.images import contact_sheet, fit_to_filesize
from bot.ui.webhooks import interaction_ref
from kinds import SubjectKind

logger = logging.getLogger(__name__)

MAX_PHOTOS = 10
CONSENT_VALUE = "accepted"
KIND_CHOICES = (
    (SubjectKind.PERSON.value, "A person", "Yourself, or someone who agreed"),
    (SubjectKind.PET.value, "A pet", "A cat, a dog, a horse…"),
    (SubjectKind.OBJECT.value, "An object", "A mug, a car, a plush toy…"),
)

# What the submitted form carries once its attachments are read. (AvatarBot is imported at
# run time: this alias is evaluated when the module loads.)
Uploaded = list[tuple[str, bytes]]
CreateHandler = Callable[
    [discord.Interaction[AvatarBot], InteractionRef, str, str, Uploaded, bool], Awaitable[None]
]


class CreateAvatarModal(discord.ui.Modal, title="Create an avatar"):
    """Name, kind, 1–10 photos and the consent statement, in one form."""

    def __init__(self, on_create: CreateHandler, *, max_photos: int, max_bytes: int) -> None:
        # Discord keeps a form open 15 minutes at most; drop ours then too.
        super().__init__(timeout=15 * 60)
        self._on_create = on_create
        self._max_bytes = max_bytes
        self.name_input: discord.ui.TextInput[CreateAvatarModal] = discord.ui.TextInput(
            custom_id="name", placeholder="e.g. me, Rex, grandma's teapot", max_length=32
        )
        self.kind_select: discord.ui.Select[CreateAvatarModal] = discord.ui.Select(
            custom_id="kind",
            options=[
                discord.SelectOption(label=label, value=value, description=description)
                for value, label, description in KIND_CHOICES
            ],
            min_values=1,
            max_values=1,
        )
        self.photos_input: discord.ui.FileUpload[CreateAvatarModal] = discord.ui.FileUpload(
            custom_id="photos",
            min_values=1,
            max_values=max(1, min(MAX_PHOTOS, max_photos)),
            required=True,
        )
        self.consent_input: discord.ui.CheckboxGroup[CreateAvatarModal] = discord.ui.CheckboxGroup(
            custom_id="consent",
            options=[
                discord.CheckboxGroupOption(
                    label="These are photos of me, or I have permission",
                    value=CONSENT_VALUE,
                )
            ],
            min_values=1,
            max_values=1,
            required=True,
        )
        self.add_item(discord.ui.Label(text="Name", component=self.name_input))
        self.add_item(discord.ui.Label(text="What is it?", component=self.kind_select))
        self.add_item(
            discord.ui.Label(
                text="Photos",
                description="1–10 clear photos; for a person, one face per photo.",
                component=self.photos_input,
            )
        )
        self.add_item(discord.ui.TextDisplay(CONSENT_TEXT))
        self.add_item(discord.ui.Label(text="Consent", component=self.consent_input))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if not is_avatarbot(interaction):
            raise RuntimeError("the avatar form reached a client that is not avatarbot's bot")
        response = await interaction.response.defer(ephemeral=True, thinking=True)
        ref = interaction_ref(interaction, response)
        files = await read_attachments(self.photos_input.values, self._max_bytes)
        kind = self.kind_select.values[0] if self.kind_select.values else ""
        consent = CONSENT_VALUE in self.consent_input.values
        await self._on_create(interaction, ref, self.name_input.value, kind, files, consent)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception, /
    ) -> None:
        await report_error(interaction, error)


async def read_attachments(attachments: list[discord.Attachment], max_bytes: int) -> Uploaded:
    """Download the uploaded photos. Oversized ones are not downloaded: they travel as empty
    bytes, which intake refuses with its "too large" reason under the same filename."""

    async def one(attachment: discord.Attachment) -> tuple[str, bytes]:
        if attachment.size > max_bytes:
            # File names often carry people's names: never above DEBUG (docs/security.md).
            logger.info("not downloading an attachment of %d bytes", attachment.size)
            logger.debug("the attachment not downloaded was %r", attachment.filename)
            return attachment.filename, b""
        return attachment.filename, await attachment.read()

    return list(await asyncio.gather(*(one(a) for a in attachments)))


def creation_summary(created: AvatarCreated) -> str:
    avatar = created.avatar
    lines = [
        f"**{discord.utils.escape_markdown(avatar.name)}** is ready "
        f"({avatar.kind}, {len(created.kept)} photo{'s' if len(created.kept) != 1 else ''} kept)."
    ]
    if created.refused:
        lines.append("\nNot kept:")
        lines += [f"- {r.message}" for r in created.refused]
    if created.warnings:
        lines.append("\nWorth knowing:")
        lines += [f"- {w.message}" for w in created.warnings]
    lines.append(
        f"\nNext: `/avatar render avatar:{avatar.name} prompt:…` — e.g. "
        "“as an astronaut on the moon”. Only you can use this avatar."
    )
    return "\n".join(lines)[:2000]


def sheet_file(photos: list[bytes], captions: list[str] | None, limit: int) -> discord.File:
    fitted = fit_to_filesize(contact_sheet(photos, captions), limit)
    return discord.File(io.BytesIO(fitted.data), filename=f"photos.{fitted.extension}")


def avatar_embed(avatar: AvatarView, image: discord.File | None = None) -> discord.Embed:
    embed = discord.Embed(title=avatar.name, colour=discord.Colour.blurple())
    embed.add_field(name="Kind", value=avatar.kind)
    embed.add_field(name="Photos", value=str(avatar.photo_count))
    embed.add_field(
        name="Ready to render",
        value="yes" if avatar.features_ready else "after a quick re-encode",
    )
    embed.add_field(name="Created", value=discord.utils.format_dt(avatar.created_at, "D"))
    if image is not None:
        embed.set_image(url=f"attachment://{image.filename}")
    return embed
