"""``ip-adapter``: IP-Adapter (Plus / Plus Face) fed with cached image embeddings.

Loading goes through diffusers' own ``load_ip_adapter`` (real or generated random weights).
``encode`` runs the image encoder once per photo (Plus models: the penultimate hidden states,
as diffusers does) and keeps every photo's embedding; ``prepare`` lays the cached embeddings
out per sample and scales the image attention per sample by its identity strength, so requests
with different strengths share a batch. Outside a batch the adapter is detached: its
processors and image projection are only installed inside ``prepare``'s context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection

from engine.acceleration import PHOTO_SLOT_BUCKETS, bucket_for
from engine.errors import CorruptFeatures, InvalidRequest
from engine.loading import (
    encoder_fingerprint,
    is_single_file,
    load_or_explain,
    looks_local,
    stable_config,
)
from engine.personalizers import register_personalizer
from engine.personalizers.base import (
    DenoiseBatch,
    LoadContext,
    PreparedConditioning,
    crop_box,
    faces_of,
)
from engine.personalizers.ip_adapter_attention import PerSampleIPAdapterAttnProcessor
from engine.pipeline import StableDiffusionPersonalizer, make_batch_invariant
from engine.types import ConceptFeatures, ConceptKind, RenderRequest
from engine.weights import ip_adapter_files

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.subject_checks import FaceBox

logger = logging.getLogger(__name__)

FEATURE_KEY = "image_embeds"
# Bump when what goes into the image encoder changes (crop policy, preprocessing).
_ENCODING_VERSION = "1"
DEFAULT_FACE_MARGIN = 0.5


class IPAdapterPersonalizer(StableDiffusionPersonalizer):
    name = "ip-adapter"

    def __init__(
        self,
        pipe: Any,
        *,
        face_margin: float,
        batch_invariant: bool,
        photo_slots: Sequence[int] = (),
    ) -> None:
        unet = pipe.unet
        self._photo_slots = photo_slots
        if pipe.image_encoder is None or pipe.feature_extractor is None:
            raise InvalidRequest("the IP-Adapter needs an image encoder and a feature extractor")
        self._image_encoder = pipe.image_encoder
        self._feature_extractor = pipe.feature_extractor
        self._projection = unet.encoder_hid_proj
        layers = self._projection.image_projection_layers
        if len(layers) != 1:
            raise InvalidRequest("exactly one IP-Adapter per profile is supported")
        # Plus models project the encoder's penultimate hidden states (diffusers' rule).
        self.plus = not isinstance(layers[0], ImageProjection)
        self._face_margin = face_margin
        self._processors: dict[str, Any] = {}
        self._ip_processors: list[PerSampleIPAdapterAttnProcessor] = []
        for proc_name, proc in unet.attn_processors.items():
            if isinstance(proc, IPAdapterAttnProcessor2_0):
                proc = PerSampleIPAdapterAttnProcessor.from_stock(proc)
                self._ip_processors.append(proc)
            self._processors[proc_name] = proc
        if batch_invariant:
            make_batch_invariant(self._projection)
        config = {
            "encoder": stable_config(self._image_encoder.config.to_dict()),
            "preprocess": stable_config(self._feature_extractor.to_dict()),
            "plus": self.plus,
            "face_margin": face_margin,
            "version": _ENCODING_VERSION,
        }
        kind = "ip-adapter-plus" if self.plus else "ip-adapter"
        self.encoder_id = f"{kind}:{encoder_fingerprint(self._image_encoder, config)}"
        self._uncond = self._unconditional_embedding()

    def processor_maps(self) -> Sequence[dict[str, Any]]:
        return (self._processors,)

    # -- encoding ---------------------------------------------------------------------------

    def encode(
        self,
        photos: Sequence[Image],
        kind: ConceptKind,
        face_boxes: Sequence[FaceBox | None] | None = None,
    ) -> ConceptFeatures:
        crops = []
        for photo, box in faces_of(photos, kind, face_boxes):
            image = photo.convert("RGB")
            if box is not None:
                # Plus Face was trained on face crops: give it the face, with some context.
                image = image.crop(crop_box(box, image.size, self._face_margin))
            crops.append(image)
        embeds = self.encode_images(crops)
        return ConceptFeatures(
            encoder_id=self.encoder_id,
            kind=kind,
            tensors={FEATURE_KEY: embeds.to("cpu")},
            photo_count=len(crops),
        )

    def encode_images(self, images: Sequence[Image]) -> torch.Tensor:
        """What diffusers' ``encode_image`` computes for these images (without the negatives):
        (N, tokens, dim) for Plus models, (N, dim) otherwise."""
        pixels = self._feature_extractor(list(images), return_tensors="pt").pixel_values
        param = next(self._image_encoder.parameters())
        pixels = pixels.to(device=param.device, dtype=param.dtype)
        if self.plus:
            out = self._image_encoder(pixels, output_hidden_states=True)
            return out.hidden_states[-2]
        return self._image_encoder(pixels).image_embeds

    def _unconditional_embedding(self) -> torch.Tensor:
        """One photo's negative embedding: the encoding of a black image for Plus models,
        zeros otherwise (what diffusers uses for classifier-free guidance)."""
        param = next(self._image_encoder.parameters())
        size = self._image_encoder.config.image_size
        zeros = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
        with torch.inference_mode():
            if self.plus:
                return self._image_encoder(zeros, output_hidden_states=True).hidden_states[-2]
            embeds = self._image_encoder(zeros).image_embeds
            return torch.zeros_like(embeds)

    # -- rendering --------------------------------------------------------------------------

    def check(self, request: RenderRequest) -> None:
        super().check(request)
        assert request.features is not None
        if FEATURE_KEY not in request.features.tensors:
            raise CorruptFeatures(f"IP-Adapter features without {FEATURE_KEY!r}")

    def batch_key(self, request: RenderRequest) -> Hashable:
        # Every photo adds tokens; samples of one batch must have as many, unless photos are
        # padded to masked slots (compiled UNet).
        assert request.features is not None
        shape = tuple(request.features.tensors[FEATURE_KEY].shape)
        if self._photo_slots:
            return (bucket_for(shape[0], self._photo_slots), *shape[1:])
        return shape

    def prepare(self, pipe: Any, batch: DenoiseBatch) -> PreparedConditioning:
        photo_embeds = [s.features.tensors[FEATURE_KEY] for s in batch.samples if s.features]
        negative = self._uncond.to(device=batch.device, dtype=batch.dtype)
        mask = None
        if self._photo_slots:
            photo_embeds, mask = self._padded(photo_embeds, negative, batch)
        positives = torch.stack(photo_embeds).to(device=batch.device, dtype=batch.dtype)
        embeds = positives
        if batch.do_cfg:
            photos = positives.shape[1]
            negatives = negative.unsqueeze(0).expand(batch.size, photos, *negative.shape[1:])
            embeds = torch.cat([negatives, positives])
        scales = batch.per_row([s.identity_strength for s in batch.samples])

        def select_rows(samples: Sequence[int], rows: Sequence[int]) -> None:
            for proc in self._ip_processors:
                if proc.sample_scale is not None:
                    proc.sample_scale = [scale[list(rows)] for scale in proc.sample_scale]
                if proc.ip_mask is not None:
                    proc.ip_mask = proc.ip_mask[list(rows)]

        return PreparedConditioning(
            ip_adapter_image_embeds=[embeds],
            context=self.activated(pipe, scales, mask),
            select_rows=select_rows,
        )

    def _padded(
        self, photo_embeds: list[torch.Tensor], negative: torch.Tensor, batch: DenoiseBatch
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each sample's photos padded to the slot count, and the (rows, 1, 1, tokens) mask
        that keeps the padding out of the image attention (rows laid out as the UNet's)."""
        slots = bucket_for(max(e.shape[0] for e in photo_embeds), self._photo_slots)
        tokens = (
            int(self._projection.image_projection_layers[0].latents.shape[1]) if self.plus else 1
        )
        filler = negative.to("cpu")
        padded, keep = [], []
        for embeds in photo_embeds:
            count = embeds.shape[0]
            fill = filler.expand(slots - count, *filler.shape[1:]).to(embeds.dtype)
            padded.append(torch.cat([embeds, fill]))
            keep.append([True] * (count * tokens) + [False] * ((slots - count) * tokens))
        rows = torch.tensor(keep, device=batch.device)
        if batch.do_cfg:
            # The negatives' photos are all real (a black image per slot): nothing to hide.
            rows = torch.cat([torch.ones_like(rows), rows])
        return padded, rows[:, None, None, :]

    @contextlib.contextmanager
    def activated(
        self,
        pipe: Any,
        row_scales: torch.Tensor | None = None,
        ip_mask: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Attach the adapter to the UNet (processors + image projection) and detach it on
        exit. ``row_scales`` (rows, 1, 1) sets per-sample strengths; None keeps the stock
        per-adapter scale (``pipe.set_ip_adapter_scale``). ``ip_mask`` (rows, 1, 1, tokens)
        hides padded photo slots from the image attention."""
        unet = pipe.unet
        previous_processors = dict(unet.attn_processors)
        previous_projection = unet.encoder_hid_proj
        for proc in self._ip_processors:
            proc.sample_scale = None if row_scales is None else [row_scales] * len(proc.scale)
            proc.ip_mask = ip_mask
        # The projection (a resampler with attention layers of its own) first: the UNet's
        # processor dict covers every attention module under it.
        unet.encoder_hid_proj = self._projection
        unet.set_attn_processor(dict(self._processors))
        try:
            yield
        finally:
            for proc in self._ip_processors:
                proc.sample_scale = None
                proc.ip_mask = None
            unet.encoder_hid_proj = previous_projection
            unet.set_attn_processor(dict(previous_processors))


def load_ip_adapter(context: LoadContext) -> IPAdapterPersonalizer:
    """Load the adapter named by the profile's options through ``pipe.load_ip_adapter``."""
    pipe, options = context.pipe, dict(context.options)
    unet = pipe.unet
    before = dict(unet.attn_processors)
    random = options.get("random")
    if random is not None:
        _load_random(context, str(random))
    else:
        _load_named(context, options)
    personalizer = IPAdapterPersonalizer(
        pipe,
        face_margin=float(options.get("face_margin", DEFAULT_FACE_MARGIN)),
        batch_invariant=context.batch_invariant,
        photo_slots=PHOTO_SLOT_BUCKETS if context.static_graph else (),
    )
    # Detached until a batch needs it: plain text-to-image (and other personalizers) see the
    # UNet as it was.
    unet.encoder_hid_proj = None
    unet.set_attn_processor(dict(before))
    logger.info(
        "IP-Adapter loaded (%s), encoder_id %s", random or "weights", personalizer.encoder_id
    )
    return personalizer


def _load_random(context: LoadContext, kind: str) -> None:
    root = Path(context.workdir) / f"ip-adapter-{kind}"
    if kind == "tiny":
        from engine.tiny import write_tiny_ip_adapter

        weights = write_tiny_ip_adapter(root, context.pipe.unet, seed=context.seed)
    elif kind == "sd15-plus":
        from engine.sd15_shaped import write_sd15_plus_ip_adapter

        weights = write_sd15_plus_ip_adapter(root, context.pipe.unet, seed=context.seed)
    else:
        raise InvalidRequest(f"unknown random IP-Adapter {kind!r}")
    context.pipe.load_ip_adapter(
        str(root),
        subfolder="models",
        weight_name=weights.name,
        image_encoder_folder="image_encoder",
    )


def _load_named(context: LoadContext, options: dict[str, Any]) -> None:
    """Weights from a hub repo or folder (``subfolder``/``weight_name``) or one file; the image
    encoder from the same repo (``image_encoder_subfolder``) or its own location
    (``image_encoder``: a hub id or folder)."""
    from transformers import CLIPVisionModelWithProjection

    pipe = context.pipe
    repo = str(options["repo"])
    subfolder = str(options.get("subfolder", "models"))
    weight_name = options.get("weight_name")
    if is_single_file(repo):
        path = Path(repo).expanduser()
        repo, subfolder, weight_name = str(path.parent), "", path.name
    if not weight_name:
        raise InvalidRequest("the IP-Adapter options need a weight_name (or a single file)")
    encoder_location = options.get("image_encoder")
    encoder_subfolder = options.get("image_encoder_subfolder", "image_encoder")
    if encoder_location:
        location = str(encoder_location)
        source = str(Path(location).expanduser()) if looks_local(location) else location
        encoder = load_or_explain(
            "IP-Adapter image encoder",
            location,
            lambda: CLIPVisionModelWithProjection.from_pretrained(
                source,
                dtype=context.dtype,
                local_files_only=context.offline or looks_local(location),
                cache_dir=context.cache_dir,
            ),
            what_setting="engine.image_encoder",
        )
        torch.nn.Module.to(encoder, device=context.device)
        pipe.register_modules(image_encoder=encoder)
        encoder_subfolder = None
    load_or_explain(
        "IP-Adapter weights",
        repo,
        lambda: pipe.load_ip_adapter(
            repo,
            subfolder=subfolder,
            weight_name=weight_name,
            image_encoder_folder=encoder_subfolder,
            local_files_only=context.offline or looks_local(repo),
            cache_dir=context.cache_dir,
        ),
        what_setting="engine.ip_adapter",
        files=ip_adapter_files(subfolder, weight_name, encoder_subfolder),
    )


register_personalizer("ip-adapter", load_ip_adapter)
