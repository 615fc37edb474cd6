"""Matching prompts against blocklist entries in time linear in the prompt, whatever the
entries are (issue 21: one guild's pattern must not be able to stall the bot for every guild).

An entry is one of:

- a word or phrase, matched on the *tokens* of the normalised prompt (bot/services/
  prompt_text.py): whole words, the last one also as a plural ("s"/"es"); a one-word entry also
  matches two adjacent words that join into it ("na ked"), unless one of them is a common short
  word ("pen is", "por no" stay apart). No regular expression is built from it.
- a word in a script written without spaces (Chinese, Japanese, Korean, Thai), matched as a
  substring of the normalised prompt with its separators removed.
- a ``/pattern/``: RE2 syntax (https://github.com/google/re2/wiki/Syntax), case-insensitive,
  searched anywhere. RE2 runs in time linear in the text and refuses what it cannot do that
  way (look-around, back-references); its memory is bounded (``PATTERN_MAX_MEM``).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import re2

from bot.errors import PromptRefused
from bot.services.prompt_text import evasion_forms, normalise, tokens

logger = logging.getLogger(__name__)

# RE2's memory for one pattern and for a list's patterns combined. A 60-character pattern
# that needs more is refused rather than allowed to grow.
PATTERN_MAX_MEM = 1 << 20
COMBINED_MAX_MEM = 8 << 20

# Two adjacent words are joined into a one-word entry ("na ked" -> "naked") unless one of them
# is one of these common short words and the other has three letters or more, or both are:
# otherwise "a pen is" would read "penis" and "por no" (Spanish) "porno" ("nu de" still joins).
_JOIN_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "in",
        "on",
        "at",
        "of",
        "to",
        "as",
        "it",
        "by",
        "or",
        "and",
        "be",
        "my",
        "me",
        "we",
        "he",
        "us",
        "so",
        "no",
        "up",
        "do",
        "if",
        "you",
        "your",
        "its",
        "his",
        "her",
        "our",
        "are",
        "was",
        "for",
        "not",
        "de",
        "la",
        "le",
        "el",
        "en",
        "et",
        "un",
        "une",
        "des",
        "les",
        "los",
        "las",
        "por",
        "con",
        "del",
        "al",
        "da",
        "do",
        "di",
        "il",
        "ein",
        "eine",
        "der",
        "die",
        "das",
        "und",
        "im",
        "am",
        "zu",
    ]
)
_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR")


def _pattern_options(max_mem: int) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = max_mem
    options.log_errors = False  # RE2 would print to stderr; the caller reports instead
    return options


def _no_space_script(text: str) -> bool:
    return any(unicodedata.name(ch, "").startswith(_NO_SPACE_SCRIPTS) for ch in text)


def is_pattern(entry: str) -> bool:
    return len(entry) > 2 and entry.startswith("/") and entry.endswith("/")


@dataclass(frozen=True)
class Entry:
    """One compiled entry (see the module doc); ``text`` as written."""

    text: str
    words: tuple[str, ...] = ()  # a word or phrase: its normalised tokens
    substring: str = ""  # a word of a script without spaces, normalised
    pattern: re2._Regexp | None = None

    def matches_empty(self) -> bool:
        """Whether the entry matches every prompt (a pattern such as ``/.*/``)."""
        return self.pattern is not None and self.pattern.search("") is not None


def compile_entry(entry: str) -> Entry:
    """One blocklist entry. Raises ``ValueError`` for a pattern RE2 refuses or an empty one."""
    entry = entry.strip()
    if is_pattern(entry):
        try:
            return Entry(entry, pattern=re2.compile(entry[1:-1], _pattern_options(PATTERN_MAX_MEM)))
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise ValueError(f"invalid blocklist pattern {entry!r}: {reason}") from exc
    return literal_entry(entry)


def literal_entry(entry: str) -> Entry:
    """``entry`` as a word or phrase (also for a stored pattern RE2 refuses)."""
    words = tuple(tokens(normalise(entry)))
    if not words:
        raise ValueError("empty blocklist entry")
    if _no_space_script(entry):
        return Entry(entry, substring="".join(words))
    return Entry(entry, words=words)


def _stored_fallback(text: str, owner: str) -> Entry | None:
    """What a stored entry that no longer compiles is matched as: a pattern RE2 refuses as a
    literal phrase; an entry with no letters or digits left after normalisation (stored by
    an older version) as nothing. Either way with a warning naming the owner."""
    phrase = text[1:-1] if is_pattern(text) else text
    try:
        entry = literal_entry(phrase)
    except ValueError:
        logger.warning("%s: stored blocklist entry %r matches nothing; ignored", owner, text)
        return None
    logger.warning(
        "%s: stored blocklist pattern %r is not valid RE2; matched as a literal phrase until "
        "an admin replaces it",
        owner,
        text,
    )
    return entry


def _plural_stems(token: str) -> tuple[str, ...]:
    stems = [token]
    if len(token) > 3 and token.endswith("s"):
        stems.append(token[:-1])
        if token.endswith("es"):
            stems.append(token[:-2])
    return tuple(stems)


class PromptBlocklist:
    """Words, phrases and ``/patterns/`` (see the module doc), matched in every evasion form
    of a text. ``lenient_owner``: for entries stored in a guild's settings before RE2, a
    pattern RE2 refuses is matched as a literal phrase (with a warning naming the owner)
    rather than failing the guild's every render or silently dropping the entry; anywhere
    else it raises ``ValueError``."""

    def __init__(self, entries: Iterable[str], *, lenient_owner: str | None = None) -> None:
        single: set[str] = set()
        joinable: set[str] = set()
        phrases: dict[str, list[tuple[str, ...]]] = {}
        substrings: list[str] = []
        patterns: list[str] = []
        self._patterns: tuple[re2._Regexp, ...] = ()
        compiled: list[re2._Regexp] = []
        for raw in entries:
            if not raw.strip():
                continue
            try:
                entry = compile_entry(raw)
            except ValueError:
                if lenient_owner is None:
                    raise
                fallback = _stored_fallback(raw.strip(), lenient_owner)
                if fallback is None:
                    continue
                entry = fallback
            if entry.pattern is not None:
                patterns.append(entry.text.strip()[1:-1])
                compiled.append(entry.pattern)
            elif entry.substring:
                substrings.append(entry.substring)
            elif len(entry.words) == 1:
                single.add(entry.words[0])
                if len(entry.words[0]) >= 3:
                    joinable.add(entry.words[0])
            else:
                phrases.setdefault(entry.words[0], []).append(entry.words)
        self._single = frozenset(single)
        self._joinable = frozenset(joinable)
        self._phrases = {k: tuple(v) for k, v in phrases.items()}
        self._substrings = tuple(sorted(set(substrings)))
        self._patterns = _combine(patterns, compiled)
        self._size = len(single) + sum(map(len, phrases.values())) + len(substrings) + len(patterns)

    def __bool__(self) -> bool:
        return self._size > 0

    def matches(self, *texts: str) -> bool:
        """Whether any text (in any of its evasion forms) matches an entry."""
        if not self:
            return False
        for text in texts:
            forms = evasion_forms(text)
            if self._patterns:
                # Patterns are not normalised (a regex cannot be): they also see the text
                # as typed, only NFKC-casefolded.
                plain = unicodedata.normalize("NFKC", text).casefold()
                for form in (plain, *forms):
                    if any(p.search(form) is not None for p in self._patterns):
                        logger.debug("prompt matched a blocklist pattern")
                        return True
            for form in forms:
                if self._matches_form(form):
                    return True
        return False

    def check(self, *texts: str) -> None:
        """Raise ``PromptRefused`` if any text matches an entry."""
        if self.matches(*texts):
            raise PromptRefused(
                "This prompt contains something this server does not allow. Please rephrase it."
            )

    def _matches_form(self, form: str) -> bool:
        words = tokens(form)
        if self._substrings:
            joined = "".join(words)
            if any(s in joined for s in self._substrings):
                return True
        return _words_match(words, self._single, self._joinable, self._phrases)


def _words_match(
    words: Sequence[str],
    single: frozenset[str],
    joinable: frozenset[str],
    phrases: dict[str, tuple[tuple[str, ...], ...]],
) -> bool:
    present = set(words)
    if single and not single.isdisjoint(_with_stems(present)):
        return True
    if joinable:
        joined = {a + b for a, b in pairwise(words) if _joins(a, b)}
        if not joinable.isdisjoint(_with_stems(joined)):
            return True
    for start in present.intersection(phrases):
        for i, word in enumerate(words):
            if word != start:
                continue
            for phrase in phrases[start]:
                end = i + len(phrase)
                if (
                    end <= len(words)
                    and tuple(words[i + 1 : end - 1]) == phrase[1:-1]
                    and phrase[-1] in _plural_stems(words[end - 1])
                ):
                    return True
    return False


def _with_stems(words: set[str]) -> set[str]:
    stems = set(words)
    for word in words:
        stems.update(_plural_stems(word))
    return stems


def _joins(first: str, second: str) -> bool:
    if first.isdigit() or second.isdigit():
        return False
    first_stop, second_stop = first in _JOIN_STOPWORDS, second in _JOIN_STOPWORDS
    if first_stop and second_stop:
        return False  # "por no", "is on"
    if first_stop:
        return len(second) <= 2  # "a nu" joins, "is ked" does not
    if second_stop:
        return len(first) <= 2  # "nu de"; not "pen is"
    return True


def _combine(sources: list[str], compiled: list[re2._Regexp]) -> tuple[re2._Regexp, ...]:
    """One RE2 program for all of a list's patterns (one pass over each form), or the
    patterns one by one when together they need more than ``COMBINED_MAX_MEM``."""
    if len(sources) < 2:
        return tuple(compiled)
    try:
        alternation = "|".join(f"(?:{s})" for s in sources)
        return (re2.compile(alternation, _pattern_options(COMBINED_MAX_MEM)),)
    except re2.error:
        return tuple(compiled)


__all__ = [
    "PATTERN_MAX_MEM",
    "Entry",
    "PromptBlocklist",
    "compile_entry",
    "is_pattern",
    "literal_entry",
]
