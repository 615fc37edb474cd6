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


class PromptBlocklist:
    """Words (matched as whole words, case-insensitively) and ``/regex/`` patterns.

    Matching runs on a normalised prompt (NFKC, casefolded, zero-width characters removed) so
    full-width letters or invisible joiners cannot smuggle a blocked word through, and on
    de-obfuscated forms of it (``evasion_forms``: "n.u.d.e", "n u d e", "nu-de", "nud3",
    "nuuuude"). A word also matches its plural ("s"/"es"); a space in an entry matches any run
    of spaces or punctuation.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        patterns: list[re.Pattern[str]] = []
        for entry in entries:
            entry = entry.strip()
            if entry:
                patterns.append(compile_entry(entry))
        self._patterns = tuple(patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, *texts: str) -> bool:
        """Whether any text (in any of its evasion forms) matches an entry."""
        for text in texts:
            for form in evasion_forms(text):
                for pattern in self._patterns:
                    if pattern.search(form):
                        logger.info("prompt matched blocklist entry %r", pattern.pattern)
                        return True
        return False

    def check(self, *texts: str) -> None:
        """Raise ``PromptRefused`` if any text matches an entry."""
        if self.matches(*texts):
            raise PromptRefused(
                "This prompt contains something this server does not allow. Please rephrase it."
            )


def compile_entry(entry: str) -> re.Pattern[str]:
    """One blocklist entry: ``/regex/`` as given, otherwise a whole word or phrase (plural
    included). Raises ``ValueError`` for a pattern that does not compile."""
    entry = entry.strip()
    if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
        try:
            return re.compile(entry[1:-1], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"invalid blocklist pattern {entry!r}: {exc}") from exc
    words = _normalise(entry).split()
    if not words:
        raise ValueError("empty blocklist entry")
    phrase = r"[\W_]+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![^\W_]){phrase}(?:e?s)?(?![^\W_])")


_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
# Punctuation inside a word ("nu.de", "nu-de", "nu*de") and letters spelled apart ("n u d e").
_INNER_PUNCTUATION = re.compile(r"(?<=[^\W_])[.\-_*'’`~|+^]+(?=[^\W_])")
_SPELLED_APART = re.compile(r"(?<![^\W_])(?:[^\W_][\s.\-_*]+){2,}[^\W_](?![^\W_])")
_MIXED_WORD = re.compile(r"[\w@$]*[^\W\d_][\w@$]*|[\w@$]*[@$][\w@$]*")
_REPEATS = re.compile(r"([^\W\d_])\1{2,}")


def evasion_forms(text: str) -> set[str]:
    """The normalised text and de-obfuscated forms of it, for blocklist matching."""
    base = _normalise(text)
    unpunctuated = _INNER_PUNCTUATION.sub("", base)
    forms = {base}
    # "n u d e" joined; also with a leading or trailing one-letter word kept apart ("a n u d e").
    for keep_first, keep_last in ((False, False), (True, False), (False, True)):

        def join(match: re.Match[str], first: bool = keep_first, last: bool = keep_last) -> str:
            return _join_letters(match.group(), first, last)

        joined = _SPELLED_APART.sub(join, unpunctuated)
        # Digits read as letters only inside words that have letters ("s3x", "p0rn"; not "18").
        leet = _MIXED_WORD.sub(lambda m: m.group().translate(_LEET), joined)
        forms |= {
            joined,
            leet,
            _REPEATS.sub(r"\1", leet),  # "nuuuude" -> "nude"
            _REPEATS.sub(r"\1\1", leet),  # "booooobs" -> "boobs"
        }
    return forms


def _join_letters(run: str, keep_first: bool, keep_last: bool) -> str:
    letters = re.split(r"[\s.\-_*]+", run)
    head = [letters.pop(0)] if keep_first and len(letters) > 3 else []
    tail = [letters.pop()] if keep_last and len(letters) > 3 else []
    return " ".join([*head, "".join(letters), *tail])


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
