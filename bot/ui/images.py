"""Images for Discord messages: a contact sheet of an avatar's photos, and fitting files to
the upload limit an interaction (or guild) allows.

Pillow only; pure functions over bytes so they are easy to test and to run in a thread.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

logger = logging.getLogger(__name__)

# Discord's default upload limit (per file) for guilds without boosts.
DEFAULT_FILESIZE_LIMIT = 10 * 1024 * 1024

_SHEET_CELL = 192
_SHEET_GAP = 8
_SHEET_CAPTION = 22
_SHEET_MAX_COLUMNS = 5
_SHEET_BACKGROUND = (43, 45, 49)  # Discord's dark theme, so the sheet sits well in a message
_SHEET_TEXT = (219, 222, 225)


@dataclass(frozen=True)
class FittedImage:
    """Encoded bytes ready to upload, with the file extension matching the encoding."""

    data: bytes
    extension: str
    width: int
    height: int
    # True when the original bytes were kept as they were.
    original: bool


def contact_sheet(photos: Sequence[bytes], captions: Sequence[str] | None = None) -> bytes:
    """One PNG showing every photo as a square-ish thumbnail with its caption (e.g. a number).

    Photos are EXIF-rotated and letterboxed into equal cells so a member can check at a glance
    which photos were kept. Undecodable entries are drawn as an empty cell rather than
    failing the whole sheet (the caller already reported why a photo was refused).
    """
    if not photos:
        raise ValueError("a contact sheet needs at least one photo")
    labels = list(captions) if captions is not None else [str(i + 1) for i in range(len(photos))]
    if len(labels) != len(photos):
        raise ValueError("one caption per photo")
    columns = min(_SHEET_MAX_COLUMNS, len(photos))
    rows = math.ceil(len(photos) / columns)
    cell_h = _SHEET_CELL + _SHEET_CAPTION
    width = columns * _SHEET_CELL + (columns + 1) * _SHEET_GAP
    height = rows * cell_h + (rows + 1) * _SHEET_GAP
    sheet = Image.new("RGB", (width, height), _SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for index, (blob, label) in enumerate(zip(photos, labels, strict=True)):
        col, row = index % columns, index // columns
        x = _SHEET_GAP + col * (_SHEET_CELL + _SHEET_GAP)
        y = _SHEET_GAP + row * (cell_h + _SHEET_GAP)
        thumb = _thumbnail(blob)
        if thumb is not None:
            sheet.paste(
                thumb,
                (x + (_SHEET_CELL - thumb.width) // 2, y + (_SHEET_CELL - thumb.height) // 2),
            )
        text = _ellipsize(draw, label, font, _SHEET_CELL)
        draw.text((x + 2, y + _SHEET_CELL + 4), text, fill=_SHEET_TEXT, font=font)
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _thumbnail(blob: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(blob)) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
        img.thumbnail((_SHEET_CELL, _SHEET_CELL))
        return img
    except Exception:  # an undecodable photo: an empty cell, logged for operators
        logger.warning("contact sheet: could not decode a photo (%d bytes)", len(blob))
        return None


def _ellipsize(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    px: int,
) -> str:
    if draw.textlength(text, font=font) <= px - 4:
        return text
    while text and draw.textlength(text + "…", font=font) > px - 4:
        text = text[:-1]
    return text + "…"


def fit_to_filesize(data: bytes, limit: int) -> FittedImage:
    """Return ``data`` unchanged when it fits ``limit`` bytes, else a smaller encoding of it.

    Recompresses first (WebP at falling quality keeps detail far better than a downscale),
    then downscales by 3/4 steps. Never fails for a decodable image: a 16 px thumbnail always
    fits any limit Discord has.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    with Image.open(io.BytesIO(data)) as src:
        src.load()
        fmt = (src.format or "PNG").lower()
        image = src.convert("RGB") if src.mode not in ("RGB", "RGBA") else src.copy()
    if len(data) <= limit:
        return FittedImage(data, "jpg" if fmt == "jpeg" else fmt, image.width, image.height, True)
    current = image
    while True:
        for quality in (90, 80, 70, 55, 40):
            encoded = _encode_webp(current, quality)
            if len(encoded) <= limit:
                logger.info(
                    "fitted an image from %d to %d bytes (%dx%d, webp q%d)",
                    len(data),
                    len(encoded),
                    current.width,
                    current.height,
                    quality,
                )
                return FittedImage(encoded, "webp", current.width, current.height, False)
        if max(current.size) <= 16:
            # Nothing smaller is worth sending; the caller gets the best effort.
            return FittedImage(encoded, "webp", current.width, current.height, False)
        size = (max(1, current.width * 3 // 4), max(1, current.height * 3 // 4))
        current = current.resize(size, Image.Resampling.LANCZOS)


def fit_all(images: Sequence[bytes], limit: int) -> list[FittedImage]:
    """Fit several images that travel in one message: each gets an equal share of ``limit``.

    Discord checks each file against the limit and the request as a whole; sharing the budget
    keeps both true. A render's PNGs are far below any real limit, so this only bites when a
    guild's limit is tiny or the images are huge.
    """
    if not images:
        return []
    share = max(1024, limit // len(images))
    return [fit_to_filesize(blob, share) for blob in images]


def _encode_webp(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=quality, method=4)
    return out.getvalue()
