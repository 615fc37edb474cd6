"""The ``instantbooth`` personalizer: encode photos once, render from cached features.

Features (``ConceptFeatures.tensors``, float16):
- ``concept_token`` [D]: the concept head's vectors averaged over the photos;
- ``patch_tokens`` [N·P, D']: the patch head's tokens of every photo, concatenated.

A batch may mix concepts with different photo counts: patch tokens are padded and masked.
α and β come per request from ``extra`` or identity strength (see ``conditioning.knobs``).
The adapters' hooks are on the UNet only inside the context ``prepare`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from PIL.Image import Image

from engine.acceleration import PHOTO_SLOT_BUCKETS, bucket_for
from engine.errors import CorruptFeatures, MissingWeights, first_line
from engine.personalizers.base import DenoiseBatch, LoadContext, PreparedConditioning, faces_of
from engine.personalizers.instantbooth.adapters import (
    AdapterHooks,
    AdapterState,
    GatedSelfAttention,
)
from engine.personalizers.instantbooth.conditioning import Concept, build_conditioning, knobs
from engine.personalizers.instantbooth.config import InstantBoothConfig
from engine.personalizers.instantbooth.encoders import (
    clip_pixels,
    square_crop_around,
    vit_l14_image_encoder,
)
from engine.personalizers.instantbooth.model import InstantBoothModel, concept_features
from engine.pipeline import StableDiffusionPersonalizer, make_batch_invariant
from engine.types import ConceptFeatures, ConceptKind, RenderRequest

if TYPE_CHECKING:
    from engine.subject_checks import FaceBox

logger = logging.getLogger(__name__)

NAME = "instantbooth"
FEATURE_DTYPE = torch.float16  # what is cached: half the bytes, ample precision for features
TRAIN_HINT = (
    "Train them with `avatarbot train instantbooth --profile sd15 --data DIR --out OUT` "
    "(see docs/instantbooth.md) and set AVATARBOT_ENGINE__INSTANTBOOTH_WEIGHTS=OUT/weights"
)


class InstantBoothPersonalizer(StableDiffusionPersonalizer):
    name = NAME

    def __init__(
        self,
        model: InstantBoothModel,
        image_encoder: Any,
        *,
        static_hooks: AdapterHooks | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.config = model.config
        self.encoder_id = model.encoder_id
        # With a compiled UNet the hooks stay installed (inactive without a state: the base
        # model's output is untouched), so batches do not change what dynamo guards on.
        self._static_hooks: AdapterHooks | None = static_hooks
        if static_hooks is not None:  # one avatar per photo-slot bucket
            self.warmup_photo_counts = tuple(low + 1 for low in (0, *PHOTO_SLOT_BUCKETS[:-1]))

    # --- encode ---------------------------------------------------------------------------
    def encode(
        self,
        photos: Sequence[Image],
        kind: ConceptKind,
        face_boxes: Sequence[FaceBox | None] | None = None,
    ) -> ConceptFeatures:
        kind = ConceptKind(kind)
        self.config.class_noun(kind.value)  # refuse kinds the config has no noun for
        scale = self.config.face_crop_scale
        views = []
        for photo, box in faces_of(photos, kind, face_boxes):
            if box is not None and scale is not None:
                photo = square_crop_around(photo, (box.left, box.top, box.right, box.bottom), scale)
            views.append(photo)
        pixels = clip_pixels(views, self.config.image_size)
        with torch.no_grad():
            tokens, patches = self.model.encode_pixels(self.image_encoder, pixels)
            token, flat = concept_features(tokens, patches)
        return ConceptFeatures(
            encoder_id=self.encoder_id,
            kind=kind,
            tensors={
                "concept_token": token.to("cpu", FEATURE_DTYPE),
                "patch_tokens": flat.to("cpu", FEATURE_DTYPE),
            },
            photo_count=len(photos),
        )

    # --- render ---------------------------------------------------------------------------
    def check(self, request: RenderRequest) -> None:
        super().check(request)
        features = request.features
        assert features is not None  # super().check refuses requests without features
        token = features.tensors.get("concept_token")
        patches = features.tensors.get("patch_tokens")
        cfg = self.config
        if (
            token is None
            or patches is None
            or tuple(token.shape) != (cfg.text_hidden_size,)
            or patches.ndim != 2
            or patches.shape[1] != cfg.patch_dim
            or patches.shape[0] != features.photo_count * cfg.num_patch_tokens
        ):
            raise CorruptFeatures(
                "InstantBooth features need concept_token "
                f"[{cfg.text_hidden_size}] and patch_tokens [photos·{cfg.num_patch_tokens}, "
                f"{cfg.patch_dim}]"
            )
        knobs(cfg, request.extra, request.identity_strength)  # refuse bad α/β before batching

    def prepare(self, pipe: Any, batch: DenoiseBatch) -> PreparedConditioning:
        concepts: list[Concept | None] = []
        alphas: list[float | None] = []
        betas: list[float] = []
        for request in batch.samples:
            features = request.features
            assert features is not None  # check() ran before the request joined the batch
            concepts.append(
                Concept(
                    features.tensors["concept_token"].to(batch.device, batch.dtype),
                    features.tensors["patch_tokens"].to(batch.device, batch.dtype),
                    features.kind.value,
                )
            )
            alpha, beta = knobs(self.config, request.extra, request.identity_strength)
            alphas.append(alpha)
            betas.append(beta)
        cond = build_conditioning(
            pipe,
            self.config,
            [r.prompt for r in batch.samples],
            concepts,
            alphas=alphas,
            betas=betas,
            do_cfg=batch.do_cfg,
            negative_prompt_embeds=batch.negative_prompt_embeds,
            static_tokens=self._static_tokens(batch),
        )
        return PreparedConditioning(
            prompt_embeds=cond.prompt_embeds,
            negative_prompt_embeds=cond.negative_prompt_embeds,
            context=self._adapters_on(pipe.unet, cond.adapter_state),
        )

    def _static_tokens(self, batch: DenoiseBatch) -> int | None:
        """With a compiled UNet: patch tokens padded to a photo-slot bucket (masked)."""
        if self._static_hooks is None:
            return None
        photos = max((s.features.photo_count for s in batch.samples if s.features), default=1)
        return bucket_for(photos, PHOTO_SLOT_BUCKETS) * self.config.num_patch_tokens

    @contextmanager
    def _adapters_on(self, unet: Any, state: AdapterState | None) -> Iterator[None]:
        if state is None:
            yield
            return
        if self._static_hooks is not None:
            with self._static_hooks.active(state):
                yield
            return
        hooks = self.model.install(unet)
        try:
            with hooks.active(state):
                yield
        finally:
            hooks.remove()


def load_personalizer(ctx: LoadContext) -> InstantBoothPersonalizer:
    """The registry's factory. Options: ``weights`` (a folder written by the trainer) or
    ``random`` (random heads and adapters sized for the pipeline's UNet, on a random image
    encoder: "tiny" = the tiny CLIP, "sd15" = ViT-L/14-shaped; ``gate`` sets their gates'
    pre-activation, open by default so the adapters visibly act)."""
    options = dict(ctx.options)
    pipe: Any = ctx.pipe
    if options.get("weights"):
        directory = Path(str(options["weights"]))
        with _weights_errors(directory):
            config = InstantBoothConfig.load(directory)
        image_encoder = _image_encoder(config.image_encoder, ctx)
        # A fine-tuned encoder's weights (when the config says so) load into this one.
        with _weights_errors(directory):
            model = InstantBoothModel.from_pretrained(directory, image_encoder)
    elif options.get("random") in ("tiny", "sd15"):
        shape = str(options["random"])
        image_encoder = _random_image_encoder(shape, ctx.seed)
        torch.manual_seed(ctx.seed + 11)
        model = InstantBoothModel.for_unet(
            pipe.unet,
            image_encoder,
            base_model=f"{'tiny' if shape == 'tiny' else 'sd15-shaped'}:{ctx.seed}",
            image_encoder=f"{shape}:{ctx.seed}",
        )
        with torch.no_grad():
            for adapter in model.adapters.values():
                cast(GatedSelfAttention, adapter).gate.fill_(float(options.get("gate", 0.5)))
    else:
        raise MissingWeights("InstantBooth weights", "(none configured)", TRAIN_HINT)
    model.install(pipe.unet).remove()  # fail now if the weights fit another UNet
    _ = model.weights_digest  # the id names the weights as stored, before any dtype cast
    model.to(ctx.device, ctx.dtype)
    if ctx.batch_invariant:
        # The concept head sees one row per photo: row-wise, N photos encode like N single ones.
        make_batch_invariant(model)
    image_encoder.to(ctx.device, ctx.dtype)
    static_hooks = model.install(pipe.unet) if ctx.static_graph else None
    personalizer = InstantBoothPersonalizer(model, image_encoder, static_hooks=static_hooks)
    logger.info("InstantBooth loaded (%s)", personalizer.encoder_id)
    return personalizer


@contextmanager
def _weights_errors(directory: Path) -> Iterator[None]:
    """Missing or unusable weights as the engine's MissingWeights, saying how to train."""
    try:
        yield
    except FileNotFoundError as exc:
        raise MissingWeights(
            "InstantBooth weights", str(directory), TRAIN_HINT, reason=str(exc)
        ) from exc
    except ValueError as exc:
        raise MissingWeights(
            "usable InstantBooth weights", str(directory), TRAIN_HINT, reason=str(exc)
        ) from exc


def _random_image_encoder(shape: str, seed: int) -> Any:
    if shape == "tiny":
        from engine.tiny import tiny_image_encoder

        return tiny_image_encoder(seed)
    return vit_l14_image_encoder(seed)


def _image_encoder(location: str, ctx: LoadContext) -> Any:
    # "tiny:<seed>" / "sd15:<seed>": the random encoders the trainer and the random profiles use.
    shape, _, seed = location.partition(":")
    if shape in ("tiny", "sd15") and seed.isdigit():
        return _random_image_encoder(shape, int(seed))
    from transformers import CLIPVisionModelWithProjection

    try:
        return CLIPVisionModelWithProjection.from_pretrained(
            location, local_files_only=ctx.offline, cache_dir=ctx.cache_dir
        )
    except (OSError, ValueError) as exc:
        raise MissingWeights(
            "InstantBooth's CLIP image encoder",
            location,
            f"Download it with `huggingface-cli download {location}` (or edit image_encoder in "
            "the weights' config.json to point at a local folder)",
            reason=first_line(exc),
        ) from exc
