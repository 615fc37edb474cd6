"""What the services need from an image engine, in plain data (no tensors, no torch).

The real engine (``engine/``) loads torch; services must not (layering test; see
docs/architecture.md#the-layering-rules). So the
services talk to this protocol, and ``bot/engine_adapter.py`` (outside the services) wraps the
real ``DiffusionEngine`` into it. Tests may use the adapter over the ``tiny`` profile.

Everything that crosses this boundary is a PIL image, bytes or a frozen dataclass.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from PIL.Image import Image

from bot.services.results import RenderSettings
from kinds import LikenessScore, SubjectKind, UnknownPersonalizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ProgressCallback = Callable[[float], None]
# Live previews: the encoded bytes (JPEG) of one small, blurred image of the render in progress.
PreviewCallback = Callable[[bytes], None]


@dataclass(frozen=True)
class SubjectReport:
    """The engine's verdict on one reference photo.

    ``problems`` are stable codes that make a photo unusable for its kind (``no_face``,
    ``several_faces``, ``face_too_small``, ``too_blurry``, ...); ``warnings`` are codes worth
    telling the user about but not refusing for (``dark``, ``face_check_unavailable``, ...).
    ``faces`` is the number of faces found, ``None`` when no face detector is available.
    ``messages`` maps a code to the engine's human wording when it has one.
    """

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    faces: int | None = None
    messages: Mapping[str, str] = field(default_factory=dict)
    # The identity embedding of the photo's one face (a person's photo that passed the face
    # checks), for the one-person-per-avatar check; None otherwise.
    embedding: tuple[float, ...] | None = None


@dataclass(frozen=True)
class EncodedFeatures:
    """An avatar's cached conditioning, serialised by the engine; ``encoder_id`` names the
    encoder weights+config that produced it (features from another encoder are stale)."""

    encoder_id: str
    data: bytes


@dataclass(frozen=True)
class RenderSpec:
    """One render as the engine port takes it: the job's settings (validated and bounded by
    the services) and the prompts as rendered, the style applied
    (``settings.negative_prompt`` is the member's own)."""

    prompt: str
    negative_prompt: str
    settings: RenderSettings
    # When the output check flags an image; None: the engine's default policy.
    output_policy: OutputPolicy | None = None
    # The avatar's enrolled identity (``EnginePort.likeness_reference``): each image's
    # likeness to it comes back in ``RenderOutput.likeness``. None: not measured.
    likeness_reference: bytes | None = None
    # The PNG a refinement (``settings.refine``: Upscale, Vary) re-renders; None otherwise.
    source_png: bytes | None = None


@dataclass(frozen=True)
class OutputPolicy:
    """When the output check flags an image: nudenet's score of any of ``classes`` reaches
    ``threshold`` (a checker with its own yes/no, like diffusers', flags on its own)."""

    threshold: float
    classes: tuple[str, ...]


@dataclass(frozen=True)
class OutputVerdict:
    """The output check's verdict on one rendered image: scores, never the image."""

    flagged: bool
    # label -> the highest score the checker gave it in this image
    scores: Mapping[str, float] = field(default_factory=dict)
    # which checks ran ("nudenet", "diffusers-safety-checker")
    checkers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderOutput:
    """Encoded PNGs in order, the seed of each, the output check's verdict on each, and
    named durations in seconds."""

    pngs: tuple[bytes, ...]
    seeds: tuple[int, ...]
    timings: Mapping[str, float] = field(default_factory=dict)
    verdicts: tuple[OutputVerdict, ...] = ()
    # One per image when the spec carried a likeness reference, else empty.
    likeness: tuple[LikenessScore, ...] = ()


@dataclass(frozen=True)
class TextScreenFacts:
    """What the semantic prompt screen (bot/services/semantic_screen.py) must know of the
    engine's text encoder, in plain data."""

    # Names the text encoder's weights: embeddings compare only under one id (the screen
    # caches its concepts' embeddings per id).
    encoder_id: str
    # The profile's calibrated thresholds per policy category (None: none; settings may
    # still give them).
    thresholds: Mapping[str, float] | None
    # Random weights (tiny*, *-shaped): no threshold means anything on them.
    random_weights: bool


class StaleFeaturesError(Exception):
    """Raised by ``EnginePort.render`` when the features come from another encoder."""


@dataclass(frozen=True)
class EngineFacts:
    """What the services must know of an engine to accept and size requests, in plain data.

    A worker publishes its engine's facts in the database (``workers.facts``), so a bot that
    loads no model can still validate prompts, pick sizes and steps, and tell stale features.
    ``tokenizer_json`` is the text encoder's tokenizer in the ``tokenizers`` library's format:
    prompts are measured with it without torch.

    Facts rows written before a field existed still parse (``from_json``): a personalizer
    missing from ``max_subjects`` shows one subject, and ``default_guidance`` None leaves the
    guidance to the bot's settings (every profile of those days was Stable Diffusion's).
    """

    profile: str
    default_personalizer: str
    # personalizer name -> the encoder id its features carry
    encoders: Mapping[str, str]
    native_size: int
    default_steps: int
    max_prompt_tokens: int
    tokenizer_json: str | None = field(default=None, repr=False, compare=False)
    # personalizer name -> how many avatars one render may show (1 when missing)
    max_subjects: Mapping[str, int] = field(default_factory=dict)
    # The guidance the engine's profile renders best with (None: not published).
    default_guidance: float | None = None
    # Image sides must be multiples of this (8: Stable Diffusion; 16: FLUX.2).
    size_multiple: int = 8
    # subject kind -> how the workers measure a render's likeness to such an avatar
    # (engine/likeness.py); a kind missing is not measured (no face model, no image encoder).
    likeness: Mapping[str, str] = field(default_factory=dict)
    # personalizer name -> the refinements (``REFINEMENTS``) it runs on a chosen image;
    # missing (facts of workers older than refinement, which cannot run one): none.
    refines: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def refines_with(self, personalizer: str, refinement: str) -> bool:
        """Whether the workers can run ``refinement`` ("upscale", "vary") on an image
        rendered with ``personalizer``."""
        return refinement in self.refines.get(personalizer, frozenset())

    def likeness_method(self, kind: str) -> str | None:
        """How a render of a ``kind`` avatar is scored, or None when it is not."""
        return self.likeness.get(kind)

    def encoder_id(self, personalizer: str) -> str:
        try:
            return self.encoders[personalizer]
        except KeyError:
            raise UnknownPersonalizer(personalizer, tuple(self.encoders)) from None

    def subjects_for(self, personalizer: str) -> int:
        """How many avatars one render with ``personalizer`` may show (at least 1)."""
        return max(1, self.max_subjects.get(personalizer, 1))

    def count_tokens(self, text: str) -> int | None:
        """The prompt's length in the text encoder's tokens (no start/end tokens); None when
        the engine published no tokenizer (the worker then checks the length itself)."""
        tokenizer = _tokenizer(self.tokenizer_json) if self.tokenizer_json else None
        if tokenizer is None:
            return None
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    def to_json(self) -> dict[str, object]:
        """The JSON column's value (the tokenizer has a column of its own)."""
        return {
            "profile": self.profile,
            "default_personalizer": self.default_personalizer,
            "encoders": dict(self.encoders),
            "native_size": self.native_size,
            "default_steps": self.default_steps,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_subjects": dict(self.max_subjects),
            "default_guidance": self.default_guidance,
            "size_multiple": self.size_multiple,
            "likeness": dict(self.likeness),
            "refines": {p: sorted(kinds) for p, kinds in self.refines.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], tokenizer_json: str | None) -> EngineFacts:
        encoders = data["encoders"]
        if not isinstance(encoders, Mapping):
            raise ValueError("engine facts: encoders must be a mapping")
        # Absent from rows written before two-subject renders: one subject each.
        subjects = data.get("max_subjects") or {}
        if not isinstance(subjects, Mapping):
            raise ValueError("engine facts: max_subjects must be a mapping")
        guidance = data.get("default_guidance")
        # Absent from rows written before likeness was measured: nothing is.
        likeness = data.get("likeness") or {}
        if not isinstance(likeness, Mapping):
            raise ValueError("engine facts: likeness must be a mapping")
        refines = data.get("refines") or {}
        if not isinstance(refines, Mapping):
            raise ValueError("engine facts: refines must be a mapping")
        return cls(
            profile=str(data["profile"]),
            default_personalizer=str(data["default_personalizer"]),
            encoders={str(k): str(v) for k, v in encoders.items()},
            native_size=_int(data["native_size"]),
            default_steps=_int(data["default_steps"]),
            max_prompt_tokens=_int(data["max_prompt_tokens"]),
            tokenizer_json=tokenizer_json,
            max_subjects={str(k): _int(v) for k, v in subjects.items()},
            default_guidance=None if guidance is None else _float(guidance),
            # Absent from rows of Stable Diffusion days: the VAE's factor.
            size_multiple=_int(data.get("size_multiple", 8)),
            likeness={str(k): str(v) for k, v in likeness.items()},
            refines={str(k): _refinements(v) for k, v in refines.items()},
        )


# What a chosen image can get (engine.types.Refinement's values).
REFINEMENTS = frozenset({"upscale", "vary"})


def _refinements(value: object) -> frozenset[str]:
    """A personalizer's refinements as stored: a list of names, or the bool of workers from
    before refinements were per kind (True: it ran both, through image-to-image). Names this
    bot does not know (from newer workers) are left out."""
    if isinstance(value, bool):
        return REFINEMENTS if value else frozenset()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"engine facts: refinements must be a list of names: {value!r}")
    return frozenset(value) & REFINEMENTS


def _int(value: object) -> int:
    if not isinstance(value, int | float | str):
        raise ValueError(f"engine facts: not a number: {value!r}")
    return int(value)


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"engine facts: not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"engine facts: not a finite number: {value!r}")
    return number


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str) -> Tokenizer | None:
    # ``tokenizers`` is the Rust tokenizer library transformers builds on: no torch.
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(tokenizer_json)
    except Exception:
        return None


@runtime_checkable
class EnginePort(Protocol):
    """The engine as the job runtime sees it (only processes that render hold one).

    ``progress`` callbacks passed to ``render`` are invoked on the caller's event loop thread
    (the adapter marshals them), with a fraction in [0, 1]; ``preview`` callbacks likewise,
    with a small blurred JPEG of the first image (never output-checked, never stored).
    """

    def facts(self) -> EngineFacts: ...

    async def inspect(self, images: Sequence[Image], kind: SubjectKind) -> list[SubjectReport]: ...

    async def encode(
        self, images: Sequence[Image], kind: SubjectKind, personalizer: str
    ) -> EncodedFeatures: ...

    async def render(
        self,
        spec: RenderSpec,
        features: bytes,
        progress: ProgressCallback | None = None,
        *,
        extra_subjects: Sequence[bytes] = (),
        preview: PreviewCallback | None = None,
    ) -> RenderOutput:
        """Render ``spec`` from the first avatar's ``features``; ``extra_subjects`` are more
        avatars' features in the same picture, in the order the prompt names them ("image 2",
        ...), only for a personalizer whose ``EngineFacts.subjects_for`` allows them. Callers
        pass ``extra_subjects`` only when there are some."""
        ...

    async def likeness_reference(
        self,
        images: Sequence[Image],
        kind: SubjectKind,
        face_embeddings: Sequence[tuple[float, ...]] = (),
    ) -> EncodedFeatures | None:
        """An avatar's enrolled identity for scoring its renders, by the method
        ``EngineFacts.likeness_method(kind)`` names (its ``encoder_id``): a person's from the
        face embeddings its photos' checks computed (never recomputed), a pet's or object's
        from ``images``. None when this engine does not measure ``kind``."""
        ...

    def text_screen(self) -> TextScreenFacts: ...

    async def embed_texts(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """One unit-length embedding per text from the loaded text encoder (the same
        dimension for all), computed off the event loop. Raises when it cannot."""
        ...

    async def aclose(self) -> None: ...
