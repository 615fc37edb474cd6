"""The engine's value types. Importing this module does not import torch, so the service
layer can name these types (and build requests) without loading the model stack; torch and
safetensors load only when features are (de)serialised.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.errors import CorruptFeatures, InvalidRequest, StaleFeatures
from kinds import DEFAULT_PERSONALIZER, SubjectKind

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

FEATURES_FORMAT_VERSION = 1
# The marker in the safetensors metadata that says "these bytes are ours".
_FEATURES_MARKER = "avatarbot.concept-features"

# Scheduler names the pipeline knows (engine/pipeline.py maps them to diffusers classes).
SCHEDULER_NAMES = ("ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm")
MIN_SIDE, MAX_SIDE = 64, 1536
MAX_STEPS = 150
MAX_COUNT = 4
# Subjects in one render: the request's own features plus at most this many more.
MAX_EXTRA_SUBJECTS = 1
# The one seed range of the whole project: seeds of a request are seed, seed+1, ...
# seed+count-1, and every layer must carry them exactly. Torch takes up to 2**63-1; Discord's
# integer options and JSON numbers only up to 2**53-1, the narrowest, so that is the bound.
MAX_SEED = 2**53 - 1 - MAX_COUNT


class Refinement(StrEnum):
    """What a personalizer can do with one chosen image of a render (engine/refine.py)."""

    UPSCALE = "upscale"  # the image at twice its side
    VARY = "vary"  # the image re-rendered from part of its schedule (needs image-to-image)


# The kind of subject a concept shows: the one enum all layers share (kinds/), by the name the
# engine's API has always used.
ConceptKind = SubjectKind


@dataclass(frozen=True, eq=False)
class ConceptFeatures:
    """What a personalizer extracted from a concept's photos, ready to render with.

    ``tensors`` are named CPU tensors (IP-Adapter: one embedding per photo; InstantBooth: the
    concept token and the patch features). ``encoder_id`` names the encoder weights and config
    that made them: features are only valid for an engine with the same id.
    """

    encoder_id: str
    kind: ConceptKind
    tensors: Mapping[str, torch.Tensor]
    photo_count: int
    format_version: int = FEATURES_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.encoder_id:
            raise InvalidRequest("ConceptFeatures needs an encoder_id")
        if self.photo_count < 1:
            raise InvalidRequest("ConceptFeatures needs at least one photo")
        if not self.tensors:
            raise InvalidRequest("ConceptFeatures needs at least one tensor")
        object.__setattr__(self, "kind", ConceptKind(self.kind))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    def require_encoder(self, encoder_id: str) -> None:
        """Raise ``StaleFeatures`` unless these features were made by ``encoder_id``."""
        if self.encoder_id != encoder_id:
            raise StaleFeatures(expected=encoder_id, got=self.encoder_id)

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        metadata = {
            "format": _FEATURES_MARKER,
            "format_version": str(self.format_version),
            "encoder_id": self.encoder_id,
            "kind": self.kind.value,
            "photo_count": str(self.photo_count),
        }
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.tensors.items()}
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConceptFeatures:
        """Parse bytes written by ``to_bytes``.

        Raises ``CorruptFeatures`` for anything unreadable or not ours, and ``StaleFeatures``
        for our features in a format this engine does not read (re-encode them).
        """
        metadata = _safetensors_metadata(data)
        if metadata.get("format") != _FEATURES_MARKER:
            raise CorruptFeatures("not avatarbot concept features (no format marker)")
        try:
            version = int(metadata["format_version"])
            encoder_id = metadata["encoder_id"]
            kind = ConceptKind(metadata["kind"])
            photo_count = int(metadata["photo_count"])
        except (KeyError, ValueError) as exc:
            raise CorruptFeatures(f"concept features with broken metadata: {exc}") from exc
        if version != FEATURES_FORMAT_VERSION:
            raise StaleFeatures(
                expected=f"format {FEATURES_FORMAT_VERSION}", got=f"format {version}"
            )
        from safetensors.torch import load

        try:
            tensors = load(data)
        except Exception as exc:  # safetensors raises its own error types for bad bodies
            raise CorruptFeatures(f"unreadable concept features: {exc}") from exc
        try:
            return cls(encoder_id, kind, tensors, photo_count, version)
        except InvalidRequest as exc:
            raise CorruptFeatures(f"invalid concept features: {exc}") from exc


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """Read the ``__metadata__`` of a safetensors blob (8-byte little-endian header length,
    then a JSON header), validating sizes first so garbage fails cleanly."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < 8:
        raise CorruptFeatures("concept features too short to be safetensors")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if header_len > len(data) - 8 or header_len > 100_000_000:
        raise CorruptFeatures("concept features with an impossible header length")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFeatures(f"concept features with an unreadable header: {exc}") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(k): str(v) for k, v in metadata.items()}


@dataclass(frozen=True, eq=False)
class RenderRequest:
    """One user's render: ``count`` images with seeds ``seed .. seed+count-1``.

    Requests with equal ``batch_key`` (size, steps, guidance, scheduler, personalizer, and for
    image-to-image the strength and tiling) can share a batch; the per-sample generators make
    each image independent of its batch mates.
    ``extra`` carries personalizer knobs (e.g. InstantBooth's ``alpha``/``beta``).
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 6.0
    seed: int = 0
    count: int = 1
    identity_strength: float = 0.7
    scheduler: str = "dpmpp_2m"
    personalizer: str = DEFAULT_PERSONALIZER
    features: ConceptFeatures | None = None
    # More subjects in the same picture ("me and my dog"), in the order the prompt names them
    # after the first; only personalizers whose ``max_subjects`` allows it accept them.
    extra_subjects: tuple[ConceptFeatures, ...] = ()
    extra: Mapping[str, float] = field(default_factory=dict)
    # Image-to-image (Upscale, Vary; engine/refine.py): the source image (PIL RGB, resized to
    # width x height by the engine) and how much of the schedule re-runs over it: 1.0 with no
    # init image is text-to-image; 0 < strength < 1 keeps that share of the source's structure
    # (diffusers' img2img ``strength``).
    init_image: Image | None = None
    strength: float = 1.0
    # Denoise in overlapping tiles of this many pixels a side (0: in one piece), for outputs
    # above the profile's ``max_untiled_pixels`` (engine/refine.py sets it).
    tile: int = 0
    # A picture the model reads as one more reference, before the subjects' own (FLUX.2
    # [klein]'s Upscale x2: the chosen image, encoded at render time to fit width x height).
    # Only personalizers that take one (``Personalizer.takes_reference_image``) accept it.
    reference_image: Image | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            problems.append("prompt must be a non-empty string")
        for name, side in (("width", self.width), ("height", self.height)):
            if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
                problems.append(f"{name} must be a multiple of 8 in {MIN_SIDE}..{MAX_SIDE}")
        if not 1 <= self.steps <= MAX_STEPS:
            problems.append(f"steps must be in 1..{MAX_STEPS}")
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= 30.0):
            problems.append("guidance must be in 0..30")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be in 0..{MAX_SEED}")
        if not 1 <= self.count <= MAX_COUNT:
            problems.append(f"count must be in 1..{MAX_COUNT}")
        if not (math.isfinite(self.identity_strength) and 0.0 <= self.identity_strength <= 1.0):
            problems.append("identity_strength must be in 0..1")
        if self.scheduler not in SCHEDULER_NAMES:
            problems.append(f"scheduler must be one of {', '.join(SCHEDULER_NAMES)}")
        if not self.personalizer:
            problems.append("personalizer must be named")
        if len(self.extra_subjects) > MAX_EXTRA_SUBJECTS:
            problems.append(f"at most {MAX_EXTRA_SUBJECTS} extra subject(s) per render")
        if self.extra_subjects and self.features is None:
            problems.append("extra subjects need the first subject's features")
        if any(not math.isfinite(float(v)) for v in self.extra.values()):
            problems.append("extra values must be finite numbers")
        problems.extend(self._image_to_image_problems())
        if problems:
            raise InvalidRequest("invalid render request: " + "; ".join(problems))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        object.__setattr__(self, "extra_subjects", tuple(self.extra_subjects))

    def _image_to_image_problems(self) -> list[str]:
        problems: list[str] = []
        if not (math.isfinite(self.strength) and 0.0 < self.strength <= 1.0):
            problems.append("strength must be in (0, 1]")
        elif self.init_image is None and self.strength != 1.0:
            problems.append("a strength below 1 needs an init image")
        if self.init_image is not None and not hasattr(self.init_image, "convert"):
            problems.append("init_image must be a PIL image")
        if self.reference_image is not None and not hasattr(self.reference_image, "convert"):
            problems.append("reference_image must be a PIL image")
        if self.tile and not (MIN_SIDE <= self.tile <= MAX_SIDE and self.tile % 8 == 0):
            problems.append(f"tile must be 0 or a multiple of 8 in {MIN_SIDE}..{MAX_SIDE}")
        return problems

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.count)]

    @property
    def is_image_to_image(self) -> bool:
        return self.init_image is not None

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can be denoised together (personalizers may add to it):
        image-to-image ones only with the same strength (it picks the schedule's start) and
        tiling, never with text-to-image ones; a reference image only with others that have
        one (the personalizer's key adds its encoded shape)."""
        return (
            self.width,
            self.height,
            self.steps,
            self.guidance,
            self.scheduler,
            self.personalizer,
            self.is_image_to_image,
            self.strength,
            self.tile,
            self.reference_image is not None,
        )


@dataclass
class RenderResult:
    """The images of one request, in seed order, with where the time went.

    ``is_noise`` is set when the profile runs random weights (``tiny``, ``sd15-shaped``): the
    images are noise by construction, not a failure.
    """

    images: list[Image]
    seeds: list[int]
    timings: dict[str, float]
    personalizer: str
    profile: str = ""
    is_noise: bool = False
    nsfw: list[bool] | None = None
