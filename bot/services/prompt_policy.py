"""The prompt policy of a guild: the default blocklist (bot/data/prompt_blocklist.txt), the
operator's ``prompt_blocklist`` and the guild admins' changes, with the channel and the avatar.

Rules, checked before a job exists (so a refused prompt never reaches a worker):

- Blocked everywhere: the operator's entries (``Settings.prompt_blocklist``), the guild's
  ``blocked_terms``, and the file's ``[always]`` section. The operator's and the guild's own
  entries are checked in the negative prompt too.
- ``[sexual]`` entries are refused outside age-restricted channels, and with a *person* avatar
  in every channel: real people are never rendered sexually, and no setting changes that.
- ``[minors]`` entries together with any ``[sexual]`` entry are refused in every channel.
- A guild's ``allowed_terms`` lift ``[sexual]`` entries of the default file (written as in the
  file) for pet and object avatars. ``[minors]`` and ``[always]`` entries cannot be lifted (a
  guild cannot make sexual content with minors acceptable), nor can the operator's: those are
  the host's rules, not the guild's.

The ``[sexual]``, ``[minors]`` and ``[always]`` sections are checked in the prompt only: a
negative prompt listing "nsfw, nude" asks the model to stay away from them.

The negative prompt has its own section, ``[undress]`` (clothing and censorship: "clothes,
shirt, bra, censored"), because a negative prompt pushes the model *away* from what it names:
"me on a beach" with the negative "clothes, clothing, dressed" asks for nudity without a
single sexual word in the prompt. When the negative prompt matches ``[undress]`` (normalised
and read in every evasion form exactly as the prompt is, by the same matcher):

- with a *person* avatar it is refused in every channel (real people are never rendered
  without clothes, whatever the channel or the guild's settings);
- with a ``[minors]`` match in the prompt it is refused in every channel, whatever the avatar
  (the MINORS message: a child in the picture and clothing pushed away);
- pets and objects otherwise pass: a negative "clothes, costume" for a dog is ordinary.

``[undress]`` entries cannot be lifted by a guild. The prompt is not checked against them ("a
red shirt" is a prompt, not an inversion), and the negative only against them (and the
operator's and the guild's entries).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from bot.errors import InvalidInput, PromptRefused
from bot.services.blocklist_match import PromptBlocklist, compile_entry, is_pattern
from bot.services.prompt_text import tokens
from bot.services.sectioned_text import read_sections

logger = logging.getLogger(__name__)

SEXUAL = "sexual"
MINORS = "minors"
ALWAYS = "always"
# Checked in the negative prompt only (see the module doc).
UNDRESS = "undress"
CATEGORIES = (SEXUAL, MINORS, ALWAYS, UNDRESS)
# Phrases whose words are innocent together ("naked mole rat", "summa cum laude"): removed
# from the prompt before the [sexual] entries are matched (not before the others).
EXCEPTIONS = "exceptions"
# Only these default sections can be lifted by a guild.
LIFTABLE = frozenset({SEXUAL})

# Limits on a guild's own entries.
MAX_GUILD_TERMS = 100
MAX_TERM_CHARS = 60
MIN_WORD_CHARS = 2

BLOCKED_MESSAGE = "This prompt contains something this server does not allow. Please rephrase it."
SEXUAL_CHANNEL_MESSAGE = (
    "Sexual content is only allowed in age-restricted channels here. Please rephrase the prompt."
)
SEXUAL_PERSON_MESSAGE = (
    "Avatars of people are never rendered in sexual content, in any channel. "
    "Please rephrase the prompt."
)
MINORS_MESSAGE = "This prompt is refused: sexual content involving minors is never allowed."
UNDRESS_PERSON_MESSAGE = (
    "Avatars of people are never rendered without clothes; a negative prompt that removes "
    "clothing is refused. Please take the clothing words out of the negative prompt."
)


@dataclass(frozen=True)
class DefaultBlocklist:
    """The default file's entries per section, as written (for lifting and showing)."""

    sections: dict[str, tuple[str, ...]]

    def entries(self, category: str) -> tuple[str, ...]:
        return self.sections.get(category, ())


def parse_blocklist(text: str) -> DefaultBlocklist:
    """Parse the data file's format (see its header). Raises ``ValueError`` on an unknown
    section, an entry outside any section or a pattern that does not compile."""
    sections = read_sections(
        text, (*CATEGORIES, EXCEPTIONS), item="entry", strip_comment=_strip_comment
    )
    for number, line in sections[EXCEPTIONS]:
        if is_pattern(line):
            raise ValueError(f"line {number}: [{EXCEPTIONS}] holds phrases, not patterns")
    for entries in sections.values():
        for number, line in entries:
            try:
                compile_entry(line)  # raises for a bad pattern
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from exc
    return DefaultBlocklist({k: tuple(line for _, line in v) for k, v in sections.items()})


def _strip_comment(line: str) -> str:
    """Anything after `` #`` is a comment, except in a ``/pattern/`` (where `` #`` may be
    part of the pattern)."""
    if " #" in line and not (line.startswith("/") and line.endswith("/")):
        return line.split(" #", 1)[0].strip()
    return line


@lru_cache(maxsize=1)
def default_blocklist() -> DefaultBlocklist:
    """The shipped bot/data/prompt_blocklist.txt, parsed once per process."""
    text = resources.files("bot").joinpath("data", "prompt_blocklist.txt").read_text("utf-8")
    return parse_blocklist(text)


def term_key(term: str) -> str:
    """How entries are compared for lifting and removing: trimmed, spaces collapsed, and
    casefolded for words (a pattern is kept as written)."""
    term = " ".join(term.split())
    return term if is_pattern(term) else term.casefold()


def validate_term(term: str) -> str:
    """A guild entry as it will be stored, or ``InvalidInput`` saying what is wrong."""
    cleaned = " ".join(str(term).split())
    if not cleaned:
        raise InvalidInput("The word or pattern cannot be empty.")
    if len(cleaned) > MAX_TERM_CHARS:
        raise InvalidInput(f"Keep words and patterns to {MAX_TERM_CHARS} characters.")
    if any(not ch.isprintable() for ch in cleaned):
        raise InvalidInput("The word or pattern contains control characters.")
    if is_pattern(cleaned):
        # RE2 (bot/services/blocklist_match.py): what it refuses could take time exponential
        # in the prompt's length with a backtracking engine, so it is refused here.
        try:
            entry = compile_entry(cleaned)
        except ValueError as exc:
            raise InvalidInput(
                f"That pattern is refused: {exc}. Patterns use RE2 syntax (no look-around or "
                "back-references, bounded size); a plain word or phrase also works."
            ) from exc
        if entry.matches_empty():
            raise InvalidInput("That pattern matches every prompt.")
    elif len(cleaned.replace(" ", "")) < MIN_WORD_CHARS:
        raise InvalidInput(f"Words must have at least {MIN_WORD_CHARS} characters.")
    else:
        # Counted again once normalised: marks and punctuation do not count ("!!!", "x\u0301").
        try:
            entry = compile_entry(cleaned)
        except ValueError as exc:
            raise InvalidInput("A word needs letters or digits.") from exc
        if len("".join(entry.words) or entry.substring) < MIN_WORD_CHARS:
            raise InvalidInput(f"Words must have at least {MIN_WORD_CHARS} characters.")
    return term_key(cleaned)


class PromptPolicy:
    """The rules of one guild (or of the operator alone); see the module doc.

    ``PromptPolicy.base(operator)`` is built once per process; ``for_guild`` derives a guild's
    policy from its ``blocked_terms`` / ``allowed_terms`` (cached per distinct setting).
    """

    def __init__(
        self,
        defaults: DefaultBlocklist,
        operator: Iterable[str] = (),
        blocked: Iterable[str] = (),
        allowed: Iterable[str] = (),
        guild_id: int | None = None,
    ) -> None:
        self.defaults = defaults
        self.operator = tuple(operator)
        self.blocked = tuple(blocked)
        self.allowed = tuple(allowed)
        lifted = {term_key(t) for t in self.allowed}
        sexual = defaults.entries(SEXUAL)
        kept = [e for e in sexual if term_key(e) not in lifted]
        self._always = _compiled(defaults.entries(ALWAYS))
        self._minors = _compiled(defaults.entries(MINORS))
        self._undress = _compiled(defaults.entries(UNDRESS))
        self._sexual_all = _compiled(sexual)
        self._sexual = _compiled(tuple(kept))
        self._exceptions = _exception_remover(defaults.entries(EXCEPTIONS))
        # The operator's entries were validated at startup (a bad one stops the process); a
        # guild's were stored before RE2 and may hold a pattern it refuses (see
        # PromptBlocklist's lenient_owner).
        self._operator = PromptBlocklist(self.operator)
        self._blocked = PromptBlocklist(self.blocked, lenient_owner=f"guild {guild_id}")
        self._guild_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], PromptPolicy] = {}

    @classmethod
    def base(cls, operator: Sequence[str] = ()) -> PromptPolicy:
        """The default file plus the operator's entries (no guild changes)."""
        return cls(default_blocklist(), operator)

    def for_guild(
        self, blocked: Sequence[str], allowed: Sequence[str], guild_id: int | None = None
    ) -> PromptPolicy:
        """``guild_id`` only names the guild in warnings about its stored entries."""
        key = (tuple(blocked), tuple(allowed))
        if not key[0] and not key[1]:
            return self
        policy = self._guild_cache.get(key)
        if policy is None:
            if len(self._guild_cache) > 256:
                self._guild_cache.clear()
            policy = PromptPolicy(self.defaults, self.operator, blocked, allowed, guild_id)
            self._guild_cache[key] = policy
        return policy

    def is_liftable(self, term: str) -> bool:
        key = term_key(term)
        return any(key == term_key(e) for e in self.defaults.entries(SEXUAL))

    def check(self, prompt: str, negative: str = "", *, age_restricted: bool, person: bool) -> None:
        """Raise ``PromptRefused`` (with a user-safe message that does not echo the matched
        word) when the prompt breaks a rule."""
        if (
            self._operator.matches(prompt, negative)
            or self._blocked.matches(prompt, negative)
            or self._always.matches(prompt)
        ):
            raise PromptRefused(BLOCKED_MESSAGE)
        sexual_text = self._exceptions(prompt)
        sexual_any = self._sexual_all.matches(sexual_text)
        # Clothing pushed away by the negative prompt (module doc): as sexual as asking for
        # nudity, for a person or next to a child.
        undress = bool(negative) and self._undress.matches(negative)
        if (sexual_any or undress) and self._minors.matches(prompt):
            raise PromptRefused(MINORS_MESSAGE)
        if sexual_any and person:
            raise PromptRefused(SEXUAL_PERSON_MESSAGE)
        if undress and person:
            raise PromptRefused(UNDRESS_PERSON_MESSAGE)
        if not age_restricted and self._sexual.matches(sexual_text):
            raise PromptRefused(SEXUAL_CHANNEL_MESSAGE)


@lru_cache(maxsize=16)
def _compiled(entries: tuple[str, ...]) -> PromptBlocklist:
    """The default sections compiled once per process, not once per guild policy (a guild's
    policy is built on the event loop when its blocklist changes)."""
    return PromptBlocklist(entries)


def _exception_remover(phrases: Sequence[str]) -> Callable[[str], str]:
    """A function that blanks the exception phrases out of a prompt (NFKC; matched ignoring
    case, the rest left as it is: normalisation folds look-alikes before casefolding). The
    regex is literal words joined by separators: no nested quantifiers, linear time."""
    alternatives = [
        r"[\W_]+".join(re.escape(w) for w in words)
        for words in (tokens(unicodedata.normalize("NFKC", p).casefold()) for p in phrases)
        if words
    ]
    if not alternatives:
        return lambda text: text
    pattern = re.compile(
        rf"(?<![^\W_])(?:{'|'.join(alternatives)})(?:e?s)?(?![^\W_])", re.IGNORECASE
    )
    return lambda text: pattern.sub(" ", unicodedata.normalize("NFKC", text))


__all__ = [
    "CATEGORIES",
    "LIFTABLE",
    "MAX_GUILD_TERMS",
    "UNDRESS",
    "UNDRESS_PERSON_MESSAGE",
    "DefaultBlocklist",
    "PromptPolicy",
    "default_blocklist",
    "parse_blocklist",
    "term_key",
    "validate_term",
]
