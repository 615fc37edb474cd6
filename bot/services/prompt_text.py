"""How prompts and blocklist entries are normalised before matching (bot/services/
blocklist_match.py), so that a blocked word cannot be smuggled through by how it is written.

Both sides go through the same steps (like is compared with like):

1. NFKC (full-width and styled letters), then every combining, non-spacing or enclosing mark
   (Unicode categories Mn, Me), every format character (Cf: zero-width joiners, soft hyphens,
   tags) and the filler characters that render as nothing (Hangul fillers, braille blank) are
   dropped: "nu\u0301de", "nu\u034fde", "nu\ufe0fde", "nu\u3164de" all read "nude". Marks are
   dropped after NFD, so accents go too ("désnudo" and "desnudo" are one word).
2. Confusable skeletons (Unicode TR39, bot/data/confusables.tsv): a Cyrillic "а" or a Greek
   capital Nu reads as its Latin prototype. Only non-ASCII characters are folded: TR39 also
   folds "m" into "rn" and "l" into "I", which inside plain English words would make
   innocent prompts collide with list entries; ASCII look-alikes are leetspeak, folded apart.
3. Casefolding.

``evasion_forms`` then derives the forms a prompt is matched in: leetspeak folded inside words
that have letters ("s3x", "p0rn"; "18" stays a number), punctuation inside a word dropped
("nu.de"), letters spelled apart joined ("n u d e"), repeated letters collapsed ("nuuuude").
Words split by a space ("na ked") are joined by the matcher, which sees the tokens.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib import resources

# Characters that render as nothing (or as a blank) but are letters or symbols, not marks or
# format characters, so the category test alone would keep them.
_FILLERS = frozenset(
    {
        0x115F,  # HANGUL CHOSEONG FILLER
        0x1160,  # HANGUL JUNGSEONG FILLER
        0x3164,  # HANGUL FILLER
        0xFFA0,  # HALFWIDTH HANGUL FILLER
        0x2800,  # BRAILLE PATTERN BLANK
        0x17B4,  # KHMER VOWEL INHERENT AQ
        0x17B5,  # KHMER VOWEL INHERENT AA
        0x180E,  # MONGOLIAN VOWEL SEPARATOR
        0x3000,  # IDEOGRAPHIC SPACE is a space: kept apart below
    }
)
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})

_LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
        "€": "e",
    }
)
# A run of word characters and leet symbols ("s3x", "n!pple", "$ex", "18"); folded only when
# it has a letter or a leet-only symbol (``fold_leet``). One greedy class, so linear: a
# pattern asking for "a letter somewhere inside" would backtrack quadratically on "1111...".
_LEET_RUN = re.compile(r"[\w@$!|€]+")
_LEET_ONLY = frozenset("@$€")
# Punctuation inside a word: "nu.de", "nu-de", "nu*de", "nu·de", "nu/de".
_INNER_PUNCTUATION = re.compile(r"(?<=[^\W_])[^\w\s]+(?=[^\W_])|(?<=[^\W_])_+(?=[^\W_])")
# Single letters spelled apart: "n u d e", "n.u.d.e", "n_u_d_e".
_SPELLED_APART = re.compile(r"(?<![^\W_])(?:[^\W_][\W_]+){2,}[^\W_](?![^\W_])")
_SEPARATORS = re.compile(r"[\W_]+")
_REPEATS = re.compile(r"([^\W\d_])\1{2,}")


class _Folding(dict[int, str]):
    """The confusables table as a ``str.translate`` mapping; a non-ASCII letter it does not
    list is folded by its Unicode name when that names a base letter: small capitals
    ("ɴᴅᴇ", which TR39 leaves out) and letters with a stroke or hook read as the plain letter.
    Derived values are cached in the table."""

    def __missing__(self, code: int) -> str:
        if code < 0x80:
            raise LookupError(code)
        ch = chr(code)
        name = unicodedata.name(ch, "")
        base = name.replace("LETTER SMALL CAPITAL", "SMALL LETTER").split(" WITH ")[0]
        try:
            plain = unicodedata.lookup(base) if base != name else ch
        except KeyError:
            plain = ch
        value = dict.get(self, ord(plain), plain) if plain != ch else ch
        self[code] = value
        return value


@lru_cache(maxsize=1)
def confusables() -> dict[int, str]:
    """bot/data/confusables.tsv: a non-ASCII code point and its TR39 prototype (a
    ``str.translate`` table)."""
    text = resources.files("bot").joinpath("data", "confusables.tsv").read_text("utf-8")
    table = _Folding()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        source, target = line.split("\t")
        prototype = "".join(chr(int(cp, 16)) for cp in target.split())
        # A prototype with punctuation or symbols ("ノ" -> "/") would turn a letter into a
        # word separator and cut words apart: those characters stay as they are.
        # Small capitals are folded by name (``_Folding``): TR39 maps some of them to
        # Cyrillic letters ("ᴋ" -> "к") rather than to the Latin letter they are.
        small_capital = "SMALL CAPITAL" in unicodedata.name(chr(int(source, 16)), "")
        if not small_capital and all(unicodedata.category(ch)[0] in "LNM" for ch in prototype):
            table[int(source, 16)] = prototype
    return table


@lru_cache(maxsize=4096)
def _dropped(ch: str) -> bool:
    return ord(ch) in _FILLERS or unicodedata.category(ch) in _DROPPED_CATEGORIES


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text).replace("\u3000", " ")
    stripped = "".join(ch for ch in decomposed if ch.isascii() or not _dropped(ch))
    # Recomposed so that Hangul syllables are folded whole, not as loose jamo.
    return unicodedata.normalize("NFC", stripped)


def _fold_confusables(text: str) -> str:
    return text.translate(confusables())


def normalise(text: str) -> str:
    """The text as the matcher compares it (see the module doc)."""
    if text.isascii():  # the common case: nothing to strip or fold but the case
        return text.lower()
    text = _strip_marks(unicodedata.normalize("NFKC", text))
    text = _fold_confusables(text).casefold()
    # Casefolding can produce new non-ASCII letters (a Greek capital becomes a small one) and
    # prototypes can carry marks: fold and strip once more, then recompose.
    return _strip_marks(_fold_confusables(text))


def fold_leet(text: str) -> str:
    def fold(match: re.Match[str]) -> str:
        run = match.group()
        mixed = any(ch.isalpha() or ch in _LEET_ONLY for ch in run)
        return run.translate(_LEET) if mixed else run

    return _LEET_RUN.sub(fold, text)


def tokens(form: str) -> list[str]:
    """The words of a normalised form (letters and digits; everything else separates)."""
    return [t for t in _SEPARATORS.split(form) if t]


@lru_cache(maxsize=64)
def evasion_forms(text: str) -> frozenset[str]:
    """The normalised text and de-obfuscated forms of it, for blocklist matching (cached: a
    policy check asks for the same prompt's forms once per list)."""
    base = normalise(text)
    forms = {base}
    for start in {base, fold_leet(base)}:
        unpunctuated = _INNER_PUNCTUATION.sub("", start)
        forms |= {start, unpunctuated}
        # "n u d e" joined; also with a leading or trailing one-letter word kept apart
        # ("a n u d e").
        for keep_first, keep_last in ((False, False), (True, False), (False, True)):

            def join(m: re.Match[str], first: bool = keep_first, last: bool = keep_last) -> str:
                return _join_letters(m.group(), first, last)

            joined = _SPELLED_APART.sub(join, unpunctuated)
            forms |= {
                joined,
                _REPEATS.sub(r"\1", joined),  # "nuuuude" -> "nude"
                _REPEATS.sub(r"\1\1", joined),  # "booooobs" -> "boobs"
            }
    return frozenset(forms)


def _join_letters(run: str, keep_first: bool, keep_last: bool) -> str:
    letters = [t for t in _SEPARATORS.split(run) if t]
    head = [letters.pop(0)] if keep_first and len(letters) > 3 else []
    tail = [letters.pop()] if keep_last and len(letters) > 3 else []
    return " ".join([*head, "".join(letters), *tail])


__all__ = ["confusables", "evasion_forms", "fold_leet", "normalise", "tokens"]
