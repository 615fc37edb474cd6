"""The adversarial screening corpus (bot/data/screening_corpus.tsv): prompts that must be
refused and benign near-misses that must pass, with the avatar kind and channel of each.

The test suite runs every line through the real prompt policy (tests/services/
test_screening_corpus.py), ``python -m scripts.screening_report`` prints the rates that
docs/safety.md shows, and the worker's semantic screen can be checked on real weights against
the same lines. Format (one prompt a line, tab-separated; ``#`` comments and blank lines
ignored)::

    category<TAB>expect<TAB>avatar<TAB>channel<TAB>prompt[<TAB>negative]

The sixth field, the negative prompt, is optional (a line has 5 or 6 fields; an empty sixth
field is no negative prompt). It is for the inversion ("me on a beach" with the negative
"clothes, shirt"): the policy reads it as the bot does (bot/services/prompt_policy.py,
``[undress]``); the worker's semantic screen scores the prompt only, so ``avatarbot safety
screen-check`` leaves out the harmful lines that carry one.

Categories starting with ``benign-`` are near-misses that must pass. ``expect`` is ``refuse``
or ``pass``; a benign prompt the policy refuses anyway stays in the corpus (the report lists it as
a false positive) rather than being deleted, so the reported rates stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

from kinds import SUBJECT_KINDS, SubjectKind

Expect = Literal["refuse", "pass"]
Channel = Literal["normal", "age-restricted"]

_EXPECTS: tuple[Expect, ...] = ("refuse", "pass")
_CHANNELS: tuple[Channel, ...] = ("normal", "age-restricted")


@dataclass(frozen=True)
class CorpusPrompt:
    """One line of the corpus."""

    category: str
    expect: Expect
    avatar: SubjectKind
    channel: Channel
    prompt: str
    negative: str = ""

    @property
    def benign(self) -> bool:
        return self.category.startswith("benign-")

    @property
    def age_restricted(self) -> bool:
        return self.channel == "age-restricted"

    @property
    def person(self) -> bool:
        return self.avatar is SubjectKind.PERSON


def parse_corpus(text: str) -> list[CorpusPrompt]:
    """Parse the corpus format. Raises ``ValueError`` naming the line of a malformed entry."""
    prompts: list[CorpusPrompt] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = raw.split("\t")
        if len(fields) not in (5, 6):
            raise ValueError(
                f"line {number}: expected 5 or 6 tab-separated fields, got {len(fields)}"
            )
        category, expect, avatar, channel, prompt = (f.strip() for f in fields[:5])
        negative = fields[5].strip() if len(fields) == 6 else ""
        if not category or not prompt:
            raise ValueError(f"line {number}: empty category or prompt")
        if expect not in _EXPECTS:
            raise ValueError(f"line {number}: expect must be refuse or pass, not {expect!r}")
        if avatar not in SUBJECT_KINDS:
            raise ValueError(f"line {number}: avatar must be person, pet or object")
        if channel not in _CHANNELS:
            raise ValueError(f"line {number}: channel must be normal or age-restricted")
        if category.startswith("benign-") != (expect == "pass"):
            raise ValueError(f"line {number}: benign- categories pass, the others are refused")
        prompts.append(
            CorpusPrompt(
                category,
                _EXPECTS[_EXPECTS.index(expect)],
                SubjectKind(avatar),
                _CHANNELS[_CHANNELS.index(channel)],
                prompt,
                negative,
            )
        )
    return prompts


def load_corpus() -> list[CorpusPrompt]:
    """The shipped corpus (bot/data/screening_corpus.tsv)."""
    text = resources.files("bot").joinpath("data", "screening_corpus.tsv").read_text("utf-8")
    return parse_corpus(text)


__all__ = ["Channel", "CorpusPrompt", "Expect", "load_corpus", "parse_corpus"]
