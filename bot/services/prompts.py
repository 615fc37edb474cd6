"""Prompt rules: cleaning, style presets, and the render size of an aspect. The blocklist
lives in bot/services/blocklist_match.py (matching) and bot/services/prompt_text.py
(normalisation); ``PromptBlocklist`` and ``compile_entry`` are re-exported here.

All of this runs before a job is queued, so a refused prompt never costs GPU time or quota.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

from bot.errors import InvalidInput
from bot.services.blocklist_match import PromptBlocklist, compile_entry
from bot.services.prompt_text import evasion_forms
from bot.services.results import Aspect

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000
MAX_EXPANDED_CHARS = 2 * MAX_PROMPT_CHARS
# The engine refuses smaller renders (engine/types.py MIN_SIDE).
MIN_RENDER_SIDE = 64


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


def clean_prompt(raw: str, *, what: str = "prompt", allow_empty: bool = False) -> str:
    """Trim, refuse control characters and absurd lengths (tokens are checked separately)."""
    text = " ".join(unicodedata.normalize("NFC", raw).split())
    if not text and not allow_empty:
        raise InvalidInput(f"The {what} cannot be empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"The {what} is too long ({len(text)} > {MAX_PROMPT_CHARS} characters).")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InvalidInput(f"The {what} contains control characters.")
    # The screening reads the NFKC form, where one ligature can become 18 letters ("ﷺ"):
    # bounded so that a check stays a few milliseconds on the event loop.
    if len(unicodedata.normalize("NFKC", text)) > MAX_EXPANDED_CHARS:
        raise InvalidInput(f"The {what} is too long once its ligatures are spelled out.")
    return text


def styled_prompt(prompt: str, negative: str, style: str) -> tuple[str, str]:
    """Apply a style preset; unknown styles are an ``InvalidInput``."""
    preset = STYLE_PRESETS.get(style)
    if preset is None:
        raise InvalidInput(f"Unknown style {style!r}; choose one of {', '.join(STYLE_PRESETS)}.")
    full = f"{prompt}, {preset.suffix}" if preset.suffix else prompt
    neg = ", ".join(p for p in (negative, preset.negative) if p)
    return full, neg


def size_for(aspect: Aspect, native: int, max_side: int, multiple: int = 8) -> tuple[int, int]:
    """Width and height for an aspect, as multiples of ``multiple`` (what the model needs:
    the VAE's factor 8 for Stable Diffusion, 16 for FLUX.2's 2x2 patches of its latents).

    Square is the model's native side; portrait and landscape keep the native side as the
    short one and make the long one 4/3 of it (SD1.5 composes best near its training size).
    The guild's ``max_side`` caps the long side, scaling the short one with it, never below
    ``MIN_RENDER_SIDE``.
    """
    if aspect not in ("square", "portrait", "landscape"):
        raise InvalidInput(f"Unknown aspect {aspect!r}.")
    m = max(1, multiple)

    def floor(side: int) -> int:
        return max(MIN_RENDER_SIDE, side // m * m)

    cap = floor(max_side)
    short = floor(native)
    long = short if aspect == "square" else floor(short * 4 // 3)
    if long > cap:
        short = floor(short * cap // long)
        long = cap
    if aspect == "portrait":
        return short, long
    if aspect == "landscape":
        return long, short
    return long, long


__all__ = [
    "MAX_PROMPT_CHARS",
    "STYLE_PRESETS",
    "PromptBlocklist",
    "StylePreset",
    "clean_prompt",
    "compile_entry",
    "evasion_forms",
    "size_for",
    "styled_prompt",
]
