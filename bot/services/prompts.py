"""Prompt rules: the blocklist, token length, style presets, and the render size of an aspect.

All of this runs before a job is queued, so a refused prompt never costs GPU time or quota.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from bot.errors import InvalidInput, PromptRefused
from bot.services.results import Aspect

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class StylePreset:
    """A named look: text appended to the prompt and to the negative prompt."""

    label: str
    suffix: str
    negative: str = ""


# The bot offers these as choices (value = key). "none" leaves the prompt untouched.
STYLE_PRESETS: dict[str, StylePreset] = {
    "none": StylePreset("No style", ""),
    "photo": StylePreset(
        "Photo", "professional photograph, natural light, sharp focus", "cartoon, drawing"
    ),
    "portrait": StylePreset("Studio portrait", "studio portrait, soft lighting, 85mm"),
    "anime": StylePreset("Anime", "anime style, cel shading, vibrant colors", "photo"),
    "oil": StylePreset("Oil painting", "oil painting, visible brush strokes, canvas texture"),
    "watercolor": StylePreset("Watercolor", "watercolor painting, soft washes, paper texture"),
    "3d": StylePreset("3D render", "3d render, octane, subsurface scattering"),
    "pixel": StylePreset("Pixel art", "pixel art, 16-bit, limited palette", "blurry"),
}


class PromptBlocklist:
    """Words (matched as whole words, case-insensitively) and ``/regex/`` patterns.

    Matching runs on a normalised prompt (NFKC, casefolded, zero-width characters removed) so
    full-width letters or invisible joiners cannot smuggle a blocked word through.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        patterns: list[re.Pattern[str]] = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
                try:
                    patterns.append(re.compile(entry[1:-1], re.IGNORECASE))
                except re.error as exc:
                    raise ValueError(f"invalid prompt_blocklist pattern {entry!r}: {exc}") from exc
            else:
                word = re.escape(_normalise(entry))
                patterns.append(re.compile(rf"(?<!\w){word}(?!\w)"))
        self._patterns = tuple(patterns)

    def check(self, *texts: str) -> None:
        """Raise ``PromptRefused`` if any text matches an entry."""
        for text in texts:
            norm = _normalise(text)
            for pattern in self._patterns:
                if pattern.search(norm):
                    logger.info("prompt refused by blocklist entry %r", pattern.pattern)
                    raise PromptRefused(
                        "This prompt contains something this server does not allow. "
                        "Please rephrase it."
                    )


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.casefold()


def clean_prompt(raw: str, *, what: str = "prompt", allow_empty: bool = False) -> str:
    """Trim, refuse control characters and absurd lengths (tokens are checked separately)."""
    text = " ".join(unicodedata.normalize("NFC", raw).split())
    if not text and not allow_empty:
        raise InvalidInput(f"The {what} cannot be empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"The {what} is too long ({len(text)} > {MAX_PROMPT_CHARS} characters).")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InvalidInput(f"The {what} contains control characters.")
    return text


def styled_prompt(prompt: str, negative: str, style: str) -> tuple[str, str]:
    """Apply a style preset; unknown styles are an ``InvalidInput``."""
    preset = STYLE_PRESETS.get(style)
    if preset is None:
        raise InvalidInput(f"Unknown style {style!r}; choose one of {', '.join(STYLE_PRESETS)}.")
    full = f"{prompt}, {preset.suffix}" if preset.suffix else prompt
    neg = ", ".join(p for p in (negative, preset.negative) if p)
    return full, neg


def size_for(aspect: Aspect, native: int, max_side: int) -> tuple[int, int]:
    """Width and height for an aspect: the native square, or 3:4 / 4:3 around it.

    The long side is the native side (capped by the guild's ``max_side``); sizes are rounded
    down to multiples of 8, as the VAE needs.
    """
    long_side = max(8, min(native, max_side) // 8 * 8)
    short_side = max(8, (long_side * 3 // 4) // 8 * 8)
    if aspect == "square":
        return long_side, long_side
    if aspect == "portrait":
        return short_side, long_side
    if aspect == "landscape":
        return long_side, short_side
    raise InvalidInput(f"Unknown aspect {aspect!r}.")
