"""Avatar names: what a member may call an avatar, and the key that makes names unique.

A name is shown in Discord messages and embeds, so it must not ping anyone (``@everyone``,
``<@123>``), format text (markdown), or carry control or invisible characters. Uniqueness is
per owner and case-insensitive (``name_key``).
"""

from __future__ import annotations

import re
import unicodedata

from bot.errors import InvalidInput

MAX_NAME_CHARS = 32
# Markdown and mention syntax Discord interprets in messages and embeds.
_FORBIDDEN_CHARS = set("@<>*_~`|#[]()\\:")
_MENTION_WORDS = re.compile(r"(?i)\b(everyone|here)\b")


def normalize_name(raw: str) -> str:
    """Validate and normalise an avatar name; raises ``InvalidInput`` with the reason."""
    if not isinstance(raw, str):
        raise InvalidInput("The avatar name must be text.")
    name = unicodedata.normalize("NFC", raw)
    name = " ".join(name.split())  # trims and collapses runs of whitespace (tabs, newlines)
    if not name:
        raise InvalidInput("The avatar name cannot be empty.")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"The avatar name is too long ({len(name)} > {MAX_NAME_CHARS}).")
    for ch in name:
        category = unicodedata.category(ch)
        # Cc control, Cf format (zero-width, bidi overrides), Cs/Co/Cn: surrogates, private use,
        # unassigned.
        if category.startswith("C"):
            raise InvalidInput("The avatar name contains control or invisible characters.")
        if ch in _FORBIDDEN_CHARS:
            raise InvalidInput(
                f"The avatar name cannot contain `{ch}`: mentions and markdown are not allowed."
            )
    if _MENTION_WORDS.fullmatch(name):
        raise InvalidInput("That name is reserved.")
    return name


def name_key(name: str) -> str:
    """The case-insensitive key names are unique by (``Émile`` and ``émile`` collide)."""
    return unicodedata.normalize("NFKC", name).casefold()
