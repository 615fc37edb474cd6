"""``flux2-klein``: FLUX.2 [klein] multi-reference rendering from cached reference latents.

FLUX.2 [klein] has no adapter: it reads reference images as extra tokens next to the ones it
denoises. ``encode`` does once, per photo, what the stock pipeline does on every call: crop
(persons: around the face, with margin), resize to a square reference, VAE-encode
deterministically (``argmax``), 2x2-patchify and normalise with the VAE's batch-norm
statistics. Renders feed those cached latents through ``AvatarFlux2Pipeline``; the VAE encoder
never runs during a render, except on an Upscale's chosen image (below).

- Identity strength = how many of the avatar's reference photos the model sees:
  ``ceil(strength x min(photos, max_references))``, at least 1. More photos give it more views
  of the subject (and cost more tokens); FLUX.2 has no continuous identity scale to set.
- Two subjects (``extra_subjects``): one reference each, the first subject's first, so a prompt
  can name them "the person from image 1" and "the dog from image 2" (BFL's multi-reference
  phrasing); identity strength then has no effect.
- ``request.scheduler`` (Stable Diffusion scheduler names) is ignored: the model is distilled
  for its own flow-matching Euler schedule, which the pipeline sets from the image size.
- ``request.guidance`` is ignored by the distilled [klein] models (diffusers says so too);
  a non-distilled ("base") checkpoint uses it for classifier-free guidance.
- Upscale x2 (``reference_image``, engine/refine.py): the chosen image is one more reference,
  FIRST, VAE-encoded at render time at the output's size (its area capped at 1024x1024 px, as
  the stock pipeline caps a reference), followed by one photo of each subject (see
  ``UPSCALE_SUBJECT_REFERENCES``); the model redraws it at the larger size.
- Image-to-image requests (``init_image``, ``tile``: Vary) are refused: the pipeline has no
  init-latents/strength path, only references, so nothing says how much of a source to keep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image as PILImage

from engine.errors import CorruptFeatures, InvalidRequest
from engine.flux2.components import KLEIN_4B_TEXT_LAYERS, MAX_SEQUENCE_LENGTH
from engine.flux2.loading import AvatarFlux2Pipeline
from engine.loading import encoder_fingerprint, stable_config
from engine.personalizers import register_personalizer
from engine.personalizers.base import (
    BatchOutcome,
    DenoiseBatch,
    LoadContext,
    Personalizer,
    PreparedConditioning,
    StepCallback,
    crop_box,
    faces_of,
)
from engine.pipeline import check_inputs, padded_batch, seeded_noise
from engine.types import ConceptFeatures, ConceptKind, RenderRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.subject_checks import FaceBox

logger = logging.getLogger(__name__)

FEATURE_KEY = "reference_latents"
# Bump when what goes into the VAE changes (crop policy, resizing, normalisation).
_ENCODING_VERSION = "1"
# Head and shoulders: a reference is context for the model, not a face embedding.
DEFAULT_FACE_MARGIN = 1.0
DEFAULT_REFERENCE_SIZE = 512
DEFAULT_MAX_REFERENCES = 4
# Output pixels per latent token side: the VAE downsamples 8x, the transformer reads 2x2.
SIZE_MULTIPLE = 16
# The stock pipeline shrinks a reference image above this area (4096 tokens): the chosen
# image of an Upscale is encoded at the output's size up to it.
MAX_REFERENCE_PIXELS = 1024 * 1024
# An Upscale's photos per subject after the chosen image. The chosen image already shows the
# subject(s); one photo each brings back the identity detail a small image lost. Every
# reference adds its tokens to the joint attention (a 512 px photo: 1024 tokens; the chosen
# image up to 4096; a 1536 px output 9216), so one keeps the cost near a plain render's at
# that size; more photos would add attention cost for little the chosen image lacks.
UPSCALE_SUBJECT_REFERENCES = 1


class Flux2KleinPersonalizer(Personalizer):
    name = "flux2-klein"
    max_subjects = 2
    # Its pipeline reads images only as references (see ``check``): Upscale, not Vary.
    image_to_image = False
    takes_reference_image = True

    def __init__(
        self,
        pipe: AvatarFlux2Pipeline,
        *,
        reference_size: int,
        max_references: int,
        face_margin: float,
        max_sequence_length: int,
        text_layers: tuple[int, ...],
        batch_invariant: bool,
    ) -> None:
        if reference_size < 64 or reference_size % SIZE_MULTIPLE:
            raise InvalidRequest(f"reference_size must be a multiple of 16 >= 64: {reference_size}")
        self._pipe = pipe
        self.reference_size = reference_size
        self.max_references = max(1, max_references)
        # Each reference count is its own sequence length (no masking in FLUX.2's joint
        # attention): a compiled transformer warms up every count (at full strength).
        self.warmup_photo_counts = tuple(range(1, self.max_references + 1))
        self._face_margin = face_margin
        self.max_sequence_length = max_sequence_length
        self.text_layers = text_layers
        self._batch_invariant = batch_invariant
        self._channels = int(pipe.transformer.config.in_channels)
        # Where the models live, looked up once: diffusers finds a pipeline's or a model's
        # device and dtype by walking every submodule or parameter, a millisecond or more
        # per lookup on a CPU (a few percent of a tiny render). Models do not move after load.
        self._device: torch.device = pipe._execution_device
        self._vae_device: torch.device = pipe.vae.device
        self._vae_dtype: torch.dtype = pipe.vae.dtype
        _check_text_layers(pipe, text_layers)
        config = {
            "vae": stable_config(pipe.vae.config),
            "reference_size": reference_size,
            "face_margin": face_margin,
            "version": _ENCODING_VERSION,
        }
        self.encoder_id = f"flux2-vae-{reference_size}:{encoder_fingerprint(pipe.vae, config)}"

    # -- encoding ---------------------------------------------------------------------------

    def encode(
        self,
        photos: Sequence[Image],
        kind: ConceptKind,
        face_boxes: Sequence[FaceBox | None] | None = None,
    ) -> ConceptFeatures:
        references = [
            self.reference_image(photo, box) for photo, box in faces_of(photos, kind, face_boxes)
        ]
        with torch.inference_mode():
            # One photo at a time: a photo's latents do not depend on the others.
            latents = torch.cat([self.encode_reference(image) for image in references])
        return ConceptFeatures(
            encoder_id=self.encoder_id,
            kind=kind,
            tensors={FEATURE_KEY: latents.to("cpu")},
            photo_count=len(references),
        )

    def reference_image(self, photo: Image, face: FaceBox | None = None) -> Image:
        """The square reference a photo becomes: around the face (with margin) when one is
        given, else the photo's centre; ``reference_size`` pixels a side."""
        image = photo.convert("RGB")
        if face is not None:
            image = image.crop(crop_box(face, image.size, self._face_margin))
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        size = (self.reference_size, self.reference_size)
        return image.resize(size, PILImage.Resampling.LANCZOS)

    def encode_reference(self, image: Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The pipeline's own encoding of one reference image: (1, channels, h/16, w/16),
        patchified and normalised, as ``prepare_image_latents`` makes them. ``size`` (width,
        height; default the square ``reference_size``) is resized to and centre-cropped as
        the stock pipeline prepares its references."""
        pipe = self._pipe
        if size is None:
            pixels = pipe.image_processor.preprocess(
                image, height=self.reference_size, width=self.reference_size
            )
        else:
            width, height = size
            pixels = pipe.image_processor.preprocess(
                image, height=height, width=width, resize_mode="crop"
            )
        pixels = pixels.to(device=self._vae_device, dtype=self._vae_dtype)
        return pipe._encode_vae_image(pixels, generator=None)

    # -- requests ---------------------------------------------------------------------------

    def check(self, request: RenderRequest) -> None:
        super().check(request)
        if request.init_image is not None or request.tile:
            # diffusers' FLUX.2 [klein] pipeline takes images only as references (extra
            # tokens), with no init latents or strength: Vary is not offered here, and
            # Upscale passes its image as a reference (``reference_image``).
            raise InvalidRequest(
                "FLUX.2 [klein] does not re-render a source image at a strength (image-to-"
                "image: Vary); its pipeline reads images only as references, which is how it "
                "upscales"
            )
        for side in (request.width, request.height):
            if side % SIZE_MULTIPLE:
                raise InvalidRequest(
                    f"FLUX.2 [klein] renders sizes in multiples of {SIZE_MULTIPLE} px (its VAE "
                    f"downsamples 8x and its transformer reads 2x2 patches): "
                    f"{request.width}x{request.height} is not"
                )
        for features in _subjects(request):
            latents = features.tensors.get(FEATURE_KEY)
            if latents is None:
                raise CorruptFeatures(f"FLUX.2 [klein] features without {FEATURE_KEY!r}")
            if latents.ndim != 4 or latents.shape[1] != self._channels:
                raise CorruptFeatures(
                    f"FLUX.2 [klein] reference latents of shape {tuple(latents.shape)}; this "
                    f"model needs (photos, {self._channels}, h, w)"
                )

    def reference_count(self, request: RenderRequest) -> int:
        """How many of the first subject's photos a render uses (see the module docstring)."""
        if request.reference_image is not None:
            return UPSCALE_SUBJECT_REFERENCES
        if request.extra_subjects:
            return 1
        assert request.features is not None
        stored = int(request.features.tensors[FEATURE_KEY].shape[0])
        available = min(stored, self.max_references)
        return max(1, math.ceil(request.identity_strength * available - 1e-9))

    def references(self, request: RenderRequest) -> list[torch.Tensor]:
        """The reference latents of a request, in image order: (channels, h, w) each. A
        ``reference_image`` comes first, encoded here (the only VAE encoding of a render)."""
        subjects = self._subject_references(request)
        if request.reference_image is None:
            return subjects
        size = chosen_reference_size(request.width, request.height)
        chosen = self.encode_reference(request.reference_image.convert("RGB"), size)
        # Next to the cached (CPU) latents: prepare_references moves them all at once.
        return [chosen[0].to("cpu"), *subjects]

    def _subject_references(self, request: RenderRequest) -> list[torch.Tensor]:
        count = self.reference_count(request)
        return [ref for s in _subjects(request) for ref in s.tensors[FEATURE_KEY][:count]]

    def batch_key(self, request: RenderRequest) -> Hashable:
        # Each reference adds h*w tokens: samples of a batch need the same layout. The
        # reference image's shape follows from the output size, without encoding it.
        shapes = [tuple(ref.shape) for ref in self._subject_references(request)]
        if request.reference_image is not None:
            width, height = chosen_reference_size(request.width, request.height)
            shapes.insert(0, (self._channels, height // SIZE_MULTIPLE, width // SIZE_MULTIPLE))
        return tuple(shapes)

    def prepare(self, pipe: Any, batch: DenoiseBatch) -> PreparedConditioning:
        raise InvalidRequest(
            "flux2-klein renders with its own FLUX.2 pipeline (run_batch), not the shared "
            "Stable Diffusion one"
        )

    # -- rendering --------------------------------------------------------------------------

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
        """Render ``samples[i]`` with ``seeds[i]`` from cached reference latents."""
        check_inputs(samples, seeds, self)
        real = len(samples)
        samples, seeds = padded_batch(samples, seeds, buckets)
        first = samples[0]
        do_cfg = first.guidance > 1.0 and not pipe.config.is_distilled
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        device = self._device
        prompt_embeds = self.encode_prompts(pipe, [s.prompt for s in samples], device)
        negative_embeds = (
            self.encode_prompts(pipe, [s.negative_prompt for s in samples], device)
            if do_cfg
            else None
        )
        dtype = prompt_embeds.dtype
        ref_latents, ref_ids = self.prepare_references(pipe, samples, device, dtype)
        # Initial noise as the stock pipeline draws it, (B, channels, h/16, w/16): the VAE
        # downsamples 8x, the transformer reads 2x2 patches.
        factor = pipe.vae_scale_factor * 2
        shape = (self._channels, first.height // factor, first.width // factor)
        latents, _ = seeded_noise(seeds, shape, device, dtype)
        interrupted = False

        def step_end(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal interrupted
            if on_step is not None and not any(on_step(step + 1, first.steps)[:real]):
                p._interrupt = True  # every request of the batch is gone: stop denoising
                interrupted = True
            return {}

        with pipe.cached_references(ref_latents, ref_ids) as stand_in:
            output = pipe(
                image=stand_in,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                latents=latents,
                num_inference_steps=first.steps,
                # Distilled models ignore guidance (and diffusers warns on every call if > 1).
                guidance_scale=first.guidance if do_cfg else 1.0,
                height=first.height,
                width=first.width,
                max_sequence_length=self.max_sequence_length,
                text_encoder_out_layers=self.text_layers,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="latent",
            )
        if interrupted:
            return BatchOutcome(images=[], kept=[])
        return BatchOutcome(images=self.decode(pipe, output.images[:real]), kept=list(range(real)))

    def encode_prompts(
        self, pipe: Any, prompts: Sequence[str], device: torch.device
    ) -> torch.Tensor:
        """(B, tokens, dim) prompt embeddings. Batch-invariant mode encodes one prompt at a
        time (the text encoder's matmuls would otherwise see the batch size)."""
        groups = [[p] for p in prompts] if self._batch_invariant else [list(prompts)]
        embeds = [
            pipe.encode_prompt(
                prompt=group,
                device=device,
                max_sequence_length=self.max_sequence_length,
                text_encoder_out_layers=self.text_layers,
            )[0]
            for group in groups
        ]
        return torch.cat(embeds)

    def prepare_references(
        self,
        pipe: Any,
        samples: Sequence[RenderRequest],
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed reference tokens, one row per sample (B, tokens, channels), and their
        positions (1, tokens, 4): reference i sits at time coordinate 10 + 10 i, as the stock
        pipeline places its images."""
        # A request appears once per image it asks for and again as bucket padding: its
        # references (an Upscale's encoded at render time) are made once.
        made: dict[int, list[torch.Tensor]] = {}
        for sample in samples:
            if id(sample) not in made:
                made[id(sample)] = self.references(sample)
        per_sample = [made[id(s)] for s in samples]
        rows = [
            torch.cat([pipe._pack_latents(ref[None]).squeeze(0) for ref in refs])
            for refs in per_sample
        ]
        ids = pipe._prepare_image_ids([ref[None] for ref in per_sample[0]])
        return torch.stack(rows).to(device=device, dtype=dtype), ids.to(device)

    def decode(self, pipe: Any, latents: torch.Tensor) -> list[Image]:
        """Images from final latents (the VAE slices them one by one in batch-invariant mode)."""
        latents = latents.to(device=self._vae_device, dtype=self._vae_dtype)
        pixels = pipe.vae.decode(latents, return_dict=False)[0]
        return list(pipe.image_processor.postprocess(pixels, output_type="pil"))


def _check_text_layers(pipe: Any, layers: tuple[int, ...]) -> None:
    """The transformer reads the concatenated hidden states of ``layers``: refuse settings
    that do not fit the loaded models (a base_model of another size), before any render."""
    encoder = pipe.text_encoder.config
    needed = int(pipe.transformer.config.joint_attention_dim)
    if not layers or max(layers) > encoder.num_hidden_layers:
        raise InvalidRequest(
            f"text_encoder_out_layers {layers} do not fit a text encoder with "
            f"{encoder.num_hidden_layers} layers"
        )
    if len(layers) * encoder.hidden_size != needed:
        raise InvalidRequest(
            f"text_encoder_out_layers {layers}: {len(layers)} x {encoder.hidden_size} features, "
            f"but the transformer reads {needed}"
        )


def chosen_reference_size(width: int, height: int) -> tuple[int, int]:
    """The size an Upscale's chosen image is encoded at for a ``width`` x ``height`` output:
    that size, shrunk (keeping the aspect) to at most ``MAX_REFERENCE_PIXELS``, each side a
    multiple of ``SIZE_MULTIPLE``."""
    shrink = min(1.0, math.sqrt(MAX_REFERENCE_PIXELS / (width * height)))

    def fit(side: int) -> int:
        return max(SIZE_MULTIPLE, int(side * shrink) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    return fit(width), fit(height)


def _subjects(request: RenderRequest) -> list[ConceptFeatures]:
    first = [request.features] if request.features is not None else []
    return [*first, *request.extra_subjects]


def load_flux2_personalizer(context: LoadContext) -> Flux2KleinPersonalizer:
    """The personalizer on a profile's FLUX.2 pipeline (``pipeline_family="flux2"``)."""
    if not isinstance(context.pipe, AvatarFlux2Pipeline):
        raise InvalidRequest(
            "the flux2-klein personalizer needs a FLUX.2 [klein] profile "
            "(pipeline_family 'flux2'), not a Stable Diffusion one"
        )
    options = dict(context.options)
    personalizer = Flux2KleinPersonalizer(
        context.pipe,
        reference_size=int(options.get("reference_size", DEFAULT_REFERENCE_SIZE)),
        max_references=int(options.get("max_references", DEFAULT_MAX_REFERENCES)),
        face_margin=float(options.get("face_margin", DEFAULT_FACE_MARGIN)),
        max_sequence_length=int(options.get("max_sequence_length", MAX_SEQUENCE_LENGTH)),
        text_layers=tuple(
            int(i) for i in options.get("text_encoder_out_layers", KLEIN_4B_TEXT_LAYERS)
        ),
        batch_invariant=context.batch_invariant,
    )
    logger.info("flux2-klein ready, encoder_id %s", personalizer.encoder_id)
    return personalizer


register_personalizer("flux2-klein", load_flux2_personalizer)
