"""The semantic prompt screen: the last prompt check, on the worker, before any GPU step.

The word lists (prompt_policy.py) run in the bot before a job exists and catch words, however
spelled; this screen catches meaning the lists do not name (paraphrases, other languages the
encoder reads, euphemisms). It uses the text encoder the engine already loaded
(``EnginePort.embed_texts``; engine/text_embedding.py), never a second model:

- the policy's concepts (bot/data/semantic_concepts.txt: a few descriptive phrases per
  category, plus neutral ones) are embedded once per text encoder and cached;
- a prompt's score for a category is its cosine similarity to the category's nearest phrase
  minus its similarity to the nearest neutral phrase (text encoders give any two prompts a
  high cosine, so the margin over ordinary prompts is what carries meaning);
- a score at or above the category's threshold decides as the word lists do: ``always`` and
  ``minors`` (whose phrases are sexual content with minors) refuse everywhere, ``sexual``
  refuses with a person avatar anywhere and outside age-restricted channels.

Thresholds are a property of the encoder's weights: the engine profile's
(``TextScreenFacts.thresholds``), each overridable by ``SafetySettings.semantic``. Random-weight
profiles (tiny*, *-shaped) have none that mean anything: the screen embeds the prompt (the
path runs) and decides nothing, and says so at startup. Real weights without thresholds, an
encoder that fails or answers nonsense: the screen fails closed (``ScreenUnavailable``), the
render fails before rendering and is refunded. docs/semantic-screen.md has the numbers and how
an operator measures them on their weights (`avatarbot safety screen-check`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from bot.config import SemanticScreenSettings
from bot.errors import AvatarbotError, PromptScreened
from bot.services.ports import EnginePort, TextScreenFacts
from bot.services.sectioned_text import read_sections

logger = logging.getLogger(__name__)

# The policy's categories (as in prompt_policy.py's word lists), in the order they are judged.
ALWAYS = "always"
MINORS = "minors"
SEXUAL = "sexual"
CATEGORIES = (ALWAYS, MINORS, SEXUAL)
NEUTRAL = "neutral"
_SECTIONS = (*CATEGORIES, NEUTRAL)

# Unit vectors from the engine; anything far from unit length is a broken encoder.
_NORM_TOLERANCE = 1e-3

SCREENED_MESSAGES = {
    ALWAYS: "This prompt was refused by the safety screen: it describes something that is "
    "never rendered here. Please rephrase it.",
    MINORS: "This prompt was refused by the safety screen: sexual content involving minors is "
    "never allowed.",
    SEXUAL: "This prompt was refused by the safety screen: sexual content is only allowed in "
    "age-restricted channels here. Please rephrase it.",
}
SCREENED_PERSON_MESSAGE = (
    "This prompt was refused by the safety screen: avatars of people are never rendered in "
    "sexual content, in any channel. Please rephrase it."
)
UNAVAILABLE_MESSAGE = (
    "The prompt safety check could not run, so nothing was rendered. Please try again later."
)


class ScreenUnavailable(AvatarbotError):
    """The screen could not judge (fails closed: the render does not run)."""

    code = "prompt_screen_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(UNAVAILABLE_MESSAGE)
        # For the operator's log line; never shown to members.
        self.reason = reason


@dataclass(frozen=True)
class Concepts:
    """The concept phrases per section (``CATEGORIES`` and ``NEUTRAL``)."""

    sections: Mapping[str, tuple[str, ...]]

    def phrases(self) -> list[tuple[str, str]]:
        """(section, phrase) pairs in file order per section."""
        return [(s, p) for s in _SECTIONS for p in self.sections.get(s, ())]


def parse_concepts(text: str) -> Concepts:
    """The data file's format (see its header). Raises ``ValueError`` naming the line of an
    unknown section or a phrase outside any; every category needs at least one phrase."""
    sections = {
        name: [" ".join(line.split()) for _, line in entries]
        for name, entries in read_sections(text, _SECTIONS, item="phrase").items()
    }
    empty = [c for c in CATEGORIES if not sections[c]]
    if empty:
        raise ValueError(f"no phrases in [{'], ['.join(empty)}]")
    return Concepts({k: tuple(v) for k, v in sections.items()})


@lru_cache(maxsize=1)
def default_concepts() -> Concepts:
    """The shipped bot/data/semantic_concepts.txt, parsed once per process."""
    text = resources.files("bot").joinpath("data", "semantic_concepts.txt").read_text("utf-8")
    return parse_concepts(text)


@dataclass(frozen=True)
class ScreenScores:
    """One prompt's similarities: per category the margin the thresholds apply to, and the
    raw nearest similarities (``nearest``, the neutral one included) for calibration."""

    margins: Mapping[str, float]
    nearest: Mapping[str, float]


def resolve_thresholds(
    facts: TextScreenFacts, settings: SemanticScreenSettings
) -> dict[str, float] | None:
    """Per category, the setting when given, else the profile's; None unless all are known."""
    profile = facts.thresholds or {}
    resolved: dict[str, float] = {}
    for category in CATEGORIES:
        value = getattr(settings, category)
        if value is None:
            value = profile.get(category)
        if value is None or not math.isfinite(float(value)):
            return None
        resolved[category] = float(value)
    return resolved


def decide(
    margins: Mapping[str, float],
    thresholds: Mapping[str, float],
    *,
    person: bool,
    age_restricted: bool,
) -> str | None:
    """The category that refuses the prompt, or None: the word lists' rules, on scores."""

    def reaches(category: str) -> bool:
        return margins[category] >= thresholds[category]

    if reaches(ALWAYS):
        return ALWAYS
    if reaches(MINORS):
        return MINORS
    if reaches(SEXUAL) and (person or not age_restricted):
        return SEXUAL
    return None


def screened(category: str, *, person: bool) -> PromptScreened:
    """The member's error for a refusal (it names neither the prompt nor the concept)."""
    message = SCREENED_PERSON_MESSAGE if category == SEXUAL and person else None
    return PromptScreened(message or SCREENED_MESSAGES[category], category=category)


class SemanticScreen:
    """The screen over one engine port (one per process that renders; see the module doc)."""

    def __init__(
        self,
        engine: EnginePort,
        settings: SemanticScreenSettings | None = None,
        concepts: Concepts | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings or SemanticScreenSettings()
        self._concepts = concepts or default_concepts()
        # encoder id -> (section of each row, unit concept vectors as rows)
        self._cache: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        self._lock = asyncio.Lock()
        self._announce()

    def facts(self) -> TextScreenFacts:
        """The engine's text encoder facts; ``ScreenUnavailable`` when it publishes none."""
        try:
            facts = self._engine.text_screen()
        except Exception as exc:  # a port without a text encoder: cannot judge
            raise ScreenUnavailable(f"the engine has no text screen ({exc!r})") from exc
        if not isinstance(facts, TextScreenFacts):
            raise ScreenUnavailable("the engine's text screen facts are malformed")
        return facts

    def thresholds(self) -> dict[str, float] | None:
        """The thresholds in effect; None when the screen decides nothing (random weights
        without thresholds). Raises ``ScreenUnavailable`` for real weights without them."""
        facts = self.facts()
        thresholds = resolve_thresholds(facts, self._settings)
        if thresholds is None and not facts.random_weights:
            raise ScreenUnavailable(
                "no semantic screen thresholds for this profile's text encoder: set "
                "AVATARBOT_SAFETY__SEMANTIC__SEXUAL, __MINORS and __ALWAYS"
            )
        return thresholds

    def _announce(self) -> None:
        """One startup line on what the screen will do (operators read it in the logs)."""
        try:
            thresholds = self.thresholds()
        except ScreenUnavailable as exc:
            logger.error(
                "semantic prompt screen unavailable, every render will fail: %s", exc.reason
            )
            return
        if thresholds is None:
            # INFO, not WARNING: only the random-weight profiles (tests, the demo, benchmarks)
            # get here, and their renders are noise anyway; doctor's "screen" line says it too.
            logger.info(
                "semantic prompt screen: random weights and no thresholds, so it embeds "
                "prompts but refuses nothing (the word lists and the output check still run)"
            )
        else:
            logger.info(
                "semantic prompt screen: thresholds %s",
                ", ".join(f"{k} {v:+.3f}" for k, v in thresholds.items()),
            )

    async def scores(self, prompts: Sequence[str]) -> list[ScreenScores]:
        """Each prompt's scores (one batched embedding call). Raises ``ScreenUnavailable``
        when the encoder fails or answers something that is not unit vectors."""
        if not prompts:
            return []
        facts = self.facts()
        sections, concepts = await self._concept_vectors(facts.encoder_id)
        vectors = await self._embed(prompts, expect_dim=concepts.shape[1])
        similarity = vectors @ concepts.T  # cosines: every row is a unit vector
        labels = np.array(sections)
        out = []
        for row in similarity:
            nearest = {s: float(row[labels == s].max()) for s in _SECTIONS if (labels == s).any()}
            base = nearest.get(NEUTRAL, 0.0)
            margins = {c: nearest[c] - base for c in CATEGORIES}
            out.append(ScreenScores(margins, nearest))
        return out

    async def check(self, prompt: str, *, person: bool, age_restricted: bool) -> ScreenScores:
        """Judge one prompt as rendered. Raises ``PromptScreened`` (code ``prompt_screened``)
        when a category refuses it, ``ScreenUnavailable`` when it cannot judge."""
        thresholds = self.thresholds()
        [scores] = await self.scores([prompt])
        if thresholds is not None:
            category = decide(
                scores.margins, thresholds, person=person, age_restricted=age_restricted
            )
            if category is not None:
                raise screened(category, person=person)
        return scores

    async def _concept_vectors(self, encoder_id: str) -> tuple[tuple[str, ...], np.ndarray]:
        cached = self._cache.get(encoder_id)
        if cached is not None:
            return cached
        async with self._lock:  # concurrent first jobs embed the concepts once
            cached = self._cache.get(encoder_id)
            if cached is None:
                pairs = self._concepts.phrases()
                vectors = await self._embed([p for _, p in pairs], expect_dim=None)
                cached = (tuple(s for s, _ in pairs), vectors)
                self._cache[encoder_id] = cached
        return cached

    async def _embed(self, texts: Sequence[str], *, expect_dim: int | None) -> np.ndarray:
        try:
            rows = await self._engine.embed_texts(list(texts))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The operator's line; the traceback at DEBUG (a log, not a crash).
            logger.error("semantic prompt screen: the text encoder failed: %r", exc)
            logger.debug("the text encoder's failure", exc_info=True)
            raise ScreenUnavailable(f"the text encoder failed ({type(exc).__name__})") from exc
        try:
            vectors = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ScreenUnavailable("the text encoder returned ragged vectors") from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] == 0:
            raise ScreenUnavailable(f"the text encoder returned shape {vectors.shape}")
        if expect_dim is not None and vectors.shape[1] != expect_dim:
            raise ScreenUnavailable("the text encoder changed its dimension")
        if not np.isfinite(vectors).all():
            raise ScreenUnavailable("the text encoder returned non-finite values")
        norms = np.linalg.norm(vectors, axis=1)
        if (np.abs(norms - 1.0) > _NORM_TOLERANCE).any():
            raise ScreenUnavailable("the text encoder returned vectors that are not unit length")
        return vectors


__all__ = [
    "CATEGORIES",
    "Concepts",
    "PromptScreened",
    "ScreenScores",
    "ScreenUnavailable",
    "SemanticScreen",
    "decide",
    "default_concepts",
    "parse_concepts",
    "resolve_thresholds",
]
