"""The personalizer plug-in interface.

A personalizer turns a concept's photos into ``ConceptFeatures`` (``encode``) and renders a
batch of samples (``run_batch``); the Stable Diffusion family (``engine.pipeline.
StableDiffusionPersonalizer``) does it by telling the shared pipeline how to condition on
them (``prepare``).
Every personalizer of a profile shares ONE diffusers ``StableDiffusionPipeline``; a
personalizer changes the UNet's behaviour only inside the context its ``prepare`` returns
(swapping attention processors, as diffusers' own IP-Adapter does) and restores it on exit, so
personalizers never see each other's processors.

All methods run in the worker thread that owns the model, under ``torch.inference_mode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from engine.errors import InvalidRequest
from engine.types import ConceptFeatures, ConceptKind, Refinement, RenderRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.subject_checks import FaceBox


@dataclass(frozen=True)
class DenoiseBatch:
    """What a personalizer sees of one batch.

    ``samples`` has one entry per image, in batch order: a request with ``count=2`` appears
    twice in a row. ``prompt_embeds``/``negative_prompt_embeds`` are the text encoder's output
    for those samples, shape (B, L, D); ``negative_prompt_embeds`` is None without classifier-
    free guidance. Under CFG the UNet sees 2B rows: the B negatives first, then the B positives
    (diffusers' layout), so anything per row (extra tokens, scales) must be laid out the same.
    """

    samples: Sequence[RenderRequest]
    do_cfg: bool
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    device: torch.device
    dtype: torch.dtype

    @property
    def size(self) -> int:
        return len(self.samples)

    def per_row(self, values: Sequence[float]) -> torch.Tensor:
        """A (rows, 1, 1) tensor of per-sample values laid out like the UNet's batch (doubled,
        negatives first, under CFG), ready to broadcast over (rows, tokens, channels)."""
        if len(values) != self.size:
            raise ValueError(f"need {self.size} per-sample values, got {len(values)}")
        rows = list(values) * 2 if self.do_cfg else list(values)
        return torch.tensor(rows, device=self.device, dtype=self.dtype).view(-1, 1, 1)


# Called after each denoising step with (steps done, steps total); returns, per sample of
# the batch (in its original order), whether it is still wanted.
StepCallback = Callable[[int, int], Sequence[bool]]


@runtime_checkable
class PreviewingStepCallback(Protocol):
    """A ``StepCallback`` that also takes live previews (the worker's): after a step, when
    ``preview_due()``, the pipeline projects the current latents to small images and hands
    them over by batch position (original order; padding rows left out). Pipelines without a
    latent-to-RGB projection for their VAE never call ``preview``."""

    def __call__(self, done: int, total: int) -> Sequence[bool]: ...

    def preview_due(self) -> bool: ...

    def preview(self, images: Mapping[int, Image]) -> None: ...


@dataclass
class BatchOutcome:
    """The images of the samples that stayed (``kept``: their indices in the batch)."""

    images: list[Image]
    kept: list[int]


@dataclass
class PreparedConditioning:
    """What the shared pipeline needs for one batch, from its personalizer.

    - ``prompt_embeds``/``negative_prompt_embeds``: replacements for the text encoder's output
      (InstantBooth puts its concept token there *after* the text encoder), shape (B, L, D).
    - ``ip_adapter_image_embeds``: per loaded adapter, one tensor with one row per UNet row
      (2B under CFG, negatives first), passed through untouched (see engine/pipeline.py).
    - ``cross_attention_kwargs``: forwarded to every attention processor; prefer setting
      per-batch state on your own processors in ``context`` (processors that do not expect a
      key log a warning on every call).
    - ``context``: entered right around denoising and exited afterwards, also on errors and
      cancellation: install processors / per-batch state on enter, restore on exit.
    - ``select_rows(samples, rows)``: called when samples leave the batch mid-denoising (their
      requests were cancelled), with the positions (in the current batch) of the samples and
      of the UNet rows that stay; keep only those in any per-sample state you hold. Without
      it, cancelled samples are computed to the end of the batch and discarded.
    """

    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    ip_adapter_image_embeds: list[torch.Tensor] | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    context: AbstractContextManager[Any] = field(default_factory=nullcontext)
    select_rows: Callable[[Sequence[int], Sequence[int]], None] | None = None


class Personalizer(ABC):
    """One way of conditioning the shared pipeline on a concept.

    Subclasses set ``name`` (the registry name) and ``encoder_id`` (derived from the encoder's
    weights and config: features made under another id are stale).
    """

    name: str
    encoder_id: str
    # Whether render requests must carry features (False for plain text-to-image).
    needs_features: bool = True
    # How many subjects (the request's features + its extra_subjects) one render may show.
    max_subjects: int = 1
    # Whether it re-renders a source image at a strength (``RenderRequest.init_image``: the
    # Stable Diffusion family's Upscale and Vary).
    image_to_image: bool = True
    # Whether it reads ``RenderRequest.reference_image`` as one more reference (FLUX.2
    # [klein]'s Upscale).
    takes_reference_image: bool = False
    # Photo counts whose features cover every tensor shape this personalizer feeds a compiled
    # denoiser (the warm-up encodes one avatar of each count).
    warmup_photo_counts: tuple[int, ...] = (1,)

    @property
    def refinements(self) -> frozenset[Refinement]:
        """What it can do with a chosen image (engine/refine.py): Upscale through either
        image-to-image or a reference image; Vary only through image-to-image (it needs a
        strength: how much of the source to keep)."""
        kinds: set[Refinement] = set()
        if self.image_to_image or self.takes_reference_image:
            kinds.add(Refinement.UPSCALE)
        if self.image_to_image:
            kinds.add(Refinement.VARY)
        return frozenset(kinds)

    @abstractmethod
    def encode(
        self,
        photos: Sequence[Image],
        kind: ConceptKind,
        face_boxes: Sequence[FaceBox | None] | None = None,
    ) -> ConceptFeatures:
        """Features of a concept from its photos (any number ≥ 1). ``face_boxes``, when given,
        has one entry per photo (None where no single face was found)."""

    @abstractmethod
    def prepare(self, pipe: Any, batch: DenoiseBatch) -> PreparedConditioning:
        """Conditioning for one batch of samples that all passed ``check``."""

    def check(self, request: RenderRequest) -> None:
        """Refuse a request this personalizer cannot render (before it joins a batch)."""
        if request.extra_subjects and 1 + len(request.extra_subjects) > self.max_subjects:
            raise InvalidRequest(
                f"the {self.name} personalizer renders one subject at a time; "
                "several subjects in one render need a personalizer that takes them"
            )
        if request.reference_image is not None and not self.takes_reference_image:
            raise InvalidRequest(
                f"the {self.name} personalizer does not read reference images; its Upscale "
                "re-renders the image itself (init_image)"
            )
        if not self.needs_features:
            return
        if request.features is None:
            raise InvalidRequest(f"the {self.name} personalizer needs concept features")
        request.features.require_encoder(self.encoder_id)
        for subject in request.extra_subjects:
            subject.require_encoder(self.encoder_id)

    @abstractmethod
    def run_batch(
        self,
        pipe: Any,
        samples: Sequence[RenderRequest],
        seeds: Sequence[int],
        *,
        scheduler_config: Any,
        on_step: StepCallback | None = None,
        buckets: Sequence[int] = (),
    ) -> BatchOutcome:
        """Render one batch that passed ``check``: ``samples[i]`` with ``seeds[i]``.

        Each personalizer family owns its denoising loop: the Stable Diffusion family inherits
        it from ``engine.pipeline.StableDiffusionPersonalizer`` (the shared pipeline
        conditioned by ``prepare``); FLUX.2 runs its own pipeline. Defined there, not here, so
        this interface does not import the pipeline that imports it. ``buckets``, when given,
        are the only batch sizes the (compiled) denoiser may see.
        """

    def processor_maps(self) -> Sequence[dict[str, Any]]:
        """The attention-processor maps this personalizer installs on the UNet (by module
        name); the fast path swaps self-attention entries for fused ones in place."""
        return ()

    def batch_key(self, request: RenderRequest) -> Hashable:
        """What else, beyond ``RenderRequest.batch_key``, must be equal to share a batch
        (e.g. the number of feature tokens, when they cannot be padded)."""
        return ()


@dataclass(frozen=True)
class LoadContext:
    """What a personalizer factory gets when a profile loads.

    ``options`` come from the profile (and settings overrides); ``workdir`` is a folder that
    lives as long as the engine (for generated random weights); ``seed`` seeds random weights.
    ``batch_invariant`` (set on the CPU) asks personalizers to pass their own modules that
    see one row per sample through ``engine.pipeline.make_batch_invariant``, so an image is
    bit-identical alone or batched.
    """

    pipe: Any  # the shared engine.pipeline.AvatarPipeline (a StableDiffusionPipeline)
    options: Mapping[str, Any]
    device: torch.device
    dtype: torch.dtype
    offline: bool
    cache_dir: str | None
    workdir: str
    seed: int = 0
    batch_invariant: bool = False
    # Set when the denoiser is compiled: hooks and processors must stay the same objects from
    # one batch to the next (install them once, switch them by state), or every batch would
    # recompile.
    static_graph: bool = False


PersonalizerFactory = Callable[[LoadContext], Personalizer]


def faces_of(
    photos: Sequence[Image], kind: ConceptKind, face_boxes: Sequence[FaceBox | None] | None
) -> list[tuple[Image, FaceBox | None]]:
    """Each photo with the face box an encoder should crop to: a person's single face, None
    for pets and objects (or where no single face was found). Refuses what ``encode`` must
    not take: no photos, or boxes that do not pair with the photos."""
    if not photos:
        raise InvalidRequest("encode needs at least one photo")
    if face_boxes is not None and len(face_boxes) != len(photos):
        raise InvalidRequest("face_boxes must have one entry per photo")
    boxes = list(face_boxes) if face_boxes is not None else [None] * len(photos)
    if ConceptKind(kind) != ConceptKind.PERSON:
        boxes = [None] * len(photos)
    return list(zip(photos, boxes, strict=True))


def crop_box(box: FaceBox, size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """The square-ish crop around a face with ``margin`` (a fraction of the face size)."""
    left, top, right, bottom = box.expanded(margin, size)
    return int(left), int(top), int(right), int(bottom)
