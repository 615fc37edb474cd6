"""What the services need from an image engine, in plain data (no tensors, no torch).

The real engine (``engine/``) loads torch; services must not (DESIGN.md, layering test). So the
services talk to this protocol, and ``bot/engine_adapter.py`` (outside the services) wraps the
real ``DiffusionEngine`` into it. Tests may use the adapter over the ``tiny`` profile.

Everything that crosses this boundary is a PIL image, bytes or a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from PIL.Image import Image

SubjectKind = Literal["person", "pet", "object"]
SUBJECT_KINDS: tuple[SubjectKind, ...] = ("person", "pet", "object")

ProgressCallback = Callable[[float], None]


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


@dataclass(frozen=True)
class EncodedFeatures:
    """An avatar's cached conditioning, serialised by the engine; ``encoder_id`` names the
    encoder weights+config that produced it (features from another encoder are stale)."""

    encoder_id: str
    data: bytes


@dataclass(frozen=True)
class RenderSpec:
    """One render, already validated and bounded by the services."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    count: int
    identity_strength: float
    personalizer: str
    scheduler: str | None = None


@dataclass(frozen=True)
class RenderOutput:
    """Encoded PNGs in order, the seed of each, and named durations in seconds."""

    pngs: tuple[bytes, ...]
    seeds: tuple[int, ...]
    timings: Mapping[str, float] = field(default_factory=dict)


class StaleFeaturesError(Exception):
    """Raised by ``EnginePort.render`` when the features come from another encoder."""


class EngineUnavailable(Exception):
    """This process runs no engine (see ``NoEngine``)."""


@runtime_checkable
class EnginePort(Protocol):
    """The engine as the services see it.

    ``progress`` callbacks passed to ``render`` are invoked on the caller's event loop thread
    (the adapter marshals them), with a fraction in [0, 1].
    """

    def encoder_id(self, personalizer: str) -> str:
        """The id that features encoded now with this personalizer would carry."""
        ...

    def default_personalizer(self) -> str: ...

    def native_size(self) -> int:
        """The side (px) the model renders best at (512 for SD1.5, 64 for ``tiny``)."""
        ...

    def default_steps(self) -> int:
        """Denoising steps of a render that asks for none (the profile's or the operator's)."""
        ...

    def count_tokens(self, text: str) -> int:
        """The prompt's length in the text encoder's tokens (without start/end tokens)."""
        ...

    def max_prompt_tokens(self) -> int:
        """How many tokens of a prompt the text encoder can read (75 for CLIP)."""
        ...

    async def inspect(self, images: Sequence[Image], kind: SubjectKind) -> list[SubjectReport]: ...

    async def encode(
        self, images: Sequence[Image], kind: SubjectKind, personalizer: str
    ) -> EncodedFeatures: ...

    async def render(
        self, spec: RenderSpec, features: bytes, progress: ProgressCallback | None = None
    ) -> RenderOutput: ...

    async def aclose(self) -> None: ...


class NoEngine:
    """The port of a process that manages data but never renders (the CLI's list, delete,
    forget-me, usage): loading a model just to list avatars would take minutes on real
    weights. Every question and every piece of work raises ``EngineUnavailable``; services
    that can do without (an avatar's ``features_ready``) say so in their docstrings."""

    def _refuse(self) -> EngineUnavailable:
        return EngineUnavailable("no engine is loaded in this process")

    def encoder_id(self, personalizer: str) -> str:
        raise self._refuse()

    def default_personalizer(self) -> str:
        raise self._refuse()

    def native_size(self) -> int:
        raise self._refuse()

    def default_steps(self) -> int:
        raise self._refuse()

    def count_tokens(self, text: str) -> int:
        raise self._refuse()

    def max_prompt_tokens(self) -> int:
        raise self._refuse()

    async def inspect(self, images: Sequence[Image], kind: SubjectKind) -> list[SubjectReport]:
        raise self._refuse()

    async def encode(
        self, images: Sequence[Image], kind: SubjectKind, personalizer: str
    ) -> EncodedFeatures:
        raise self._refuse()

    async def render(
        self, spec: RenderSpec, features: bytes, progress: ProgressCallback | None = None
    ) -> RenderOutput:
        raise self._refuse()

    async def aclose(self) -> None:
        return None
