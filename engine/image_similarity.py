"""Image similarity: how much a pet's or object's render looks like the avatar's photos.

Pets and objects have no face to compare. Where the loaded profile has a CLIP image encoder,
the avatar's reference is its kept photos' global image embeddings (CLIP's projected
``image_embeds``, L2-normalised), and a render's likeness is the cosine similarity of its
embedding to the normalised mean of those, mapped to a figure members can read:

    likeness = clamp((cosine - IMAGE_ZERO) / (1 - IMAGE_ZERO), 0, 1)

``IMAGE_ZERO`` is 0.5. CLIP image embeddings are anisotropic: two *unrelated* photos are far
from orthogonal (cosines around 0.4-0.6 are the usual report for CLIP ViTs), so 0 % is put
there rather than at a cosine of 0. 100 % is a render the encoder cannot tell from the photos'
mean: the scale does not saturate below it, so best of k can still rank near-copies. The CLIP
image-image similarities DreamBooth reports (CLIP-I; Ruiz et al. 2023, Table 1) land as
follows: two real photos of one subject 0.885 -> 77 %; DreamBooth renders (Stable Diffusion)
0.803 -> 61 %; Textual Inversion renders 0.780 -> 56 %. Above 50 % (a cosine of 0.75), a render
is at least as alike as the weakest of those published methods' renders.

The mapping is not calibrated on real weights: no real CLIP weights can be loaded where this
was written, the figures above are the literature's (its encoder, not necessarily a profile's),
and the tiny profile's random encoder puts every pair of test images between 0.79 and 1.0.
An operator calibrates it for a profile's encoder with ``scripts/measure_image_similarity.py``
on photos of a few pets and objects (a folder per subject, several photos each): the median
cosine between photos of *different* subjects is where 0 % belongs (``IMAGE_ZERO``), and the
photos of one subject should then read well above 50 %.

Which encoder: the pipeline's ``image_encoder`` with its ``feature_extractor`` (the IP-Adapter's
CLIP ViT: tiny, sd15-shaped, sd15-ip-adapter-plus-face and the InstantBooth profiles built on
them), else InstantBooth's CLIP encoder while it is frozen (sd15-instantbooth: CLIP ViT-L/14's
own ``image_embeds``, the embedding CLIP-I is defined on). None where there is neither:
FLUX.2 [klein] reads reference photos through its VAE, and an InstantBooth encoder fine-tuned
with its heads was trained to feed them, not to compare images. The method id names the
encoder's weights and preprocessing (``encoder_fingerprint``): vectors compare only under one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL.Image import Image

from engine.likeness import LikenessKind, LikenessReference, LikenessScore
from engine.loading import encoder_fingerprint, stable_config

if TYPE_CHECKING:
    from transformers import CLIPVisionModelWithProjection

IMAGE_ZERO = 0.5
METHOD_PREFIX = "image/"
# Bump when what goes into the embedding changes (preprocessing, which output is used).
_EMBEDDING_VERSION = "1"
_METHOD_CACHE = "image_similarity.methods"  # the key of LoadedModel.extra


class LoadedModelView(Protocol):
    """What these functions read of engine.engine's LoadedModel (which imports this module)."""

    @property
    def pipe(self) -> object: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def personalizers(self) -> Mapping[str, object]: ...
    @property
    def extra(self) -> MutableMapping[str, object]: ...


@dataclass(frozen=True)
class _ImageEncoder:
    """A CLIP vision model with projection and the preprocessing that feeds it."""

    method: str
    module: CLIPVisionModelWithProjection
    pixels: Callable[[Sequence[Image]], torch.Tensor]


def likeness_from_cosine(cosine: float) -> float:
    """The image likeness figure (0..1) of a cosine similarity; see the module docstring."""
    value = (cosine - IMAGE_ZERO) / (1.0 - IMAGE_ZERO)
    return float(min(1.0, max(0.0, value)))


def image_method(model: LoadedModelView) -> str | None:
    """The method id of the profile's image encoder (None: the profile has none)."""
    encoder = _image_encoder(model)
    return None if encoder is None else encoder.method


def image_reference(model: LoadedModelView, images: Sequence[Image]) -> LikenessReference | None:
    """A pet's or object's reference: its kept photos' normalised image embeddings (None: no
    image encoder, or no photos)."""
    encoder = _image_encoder(model)
    if encoder is None or not images:
        return None
    embeddings = _embed(encoder, model, images)
    return LikenessReference(encoder.method, tuple(tuple(map(float, e)) for e in embeddings))


def score_images(
    model: LoadedModelView, images: Sequence[Image], reference: LikenessReference
) -> list[LikenessScore]:
    """Each image's likeness against ``reference`` (made by this profile's image encoder)."""
    cosines = image_cosines(model, images, reference)
    return [LikenessScore(LikenessKind.IMAGE, likeness_from_cosine(c)) for c in cosines]


def image_cosines(
    model: LoadedModelView, images: Sequence[Image], reference: LikenessReference
) -> list[float]:
    """Each image's cosine similarity to the normalised mean of ``reference``: what the figure
    is made from (and what calibration measures). ValueError: another encoder's reference."""
    encoder = _image_encoder(model)
    if encoder is None or reference.method != encoder.method:
        have = None if encoder is None else encoder.method
        raise ValueError(f"not a reference of this image encoder ({have}): {reference.method}")
    if not images:
        return []
    centroid = reference.centroid
    centroid /= np.linalg.norm(centroid)
    return [float(c) for c in _embed(encoder, model, images) @ centroid]


def _embed(encoder: _ImageEncoder, model: LoadedModelView, images: Sequence[Image]) -> np.ndarray:
    """(N, dim) float64 unit vectors: the encoder's ``image_embeds`` of ``images``."""
    pixels = encoder.pixels([image.convert("RGB") for image in images])
    with torch.inference_mode():
        embeds = encoder.module(pixel_values=pixels.to(model.device, model.dtype)).image_embeds
    vectors = embeds.to("cpu", torch.float64).numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / norms)


def _image_encoder(model: LoadedModelView) -> _ImageEncoder | None:
    return _pipeline_encoder(model) or _instantbooth_encoder(model)


def _pipeline_encoder(model: LoadedModelView) -> _ImageEncoder | None:
    encoder = getattr(model.pipe, "image_encoder", None)
    processor = getattr(model.pipe, "feature_extractor", None)
    if encoder is None or processor is None:
        return None

    def pixels(images: Sequence[Image]) -> torch.Tensor:
        return processor(list(images), return_tensors="pt").pixel_values

    preprocess = stable_config(processor.to_dict())
    return _ImageEncoder(_method_of(model, encoder, preprocess), encoder, pixels)


def _instantbooth_encoder(model: LoadedModelView) -> _ImageEncoder | None:
    personalizer = model.personalizers.get("instantbooth")
    if personalizer is None:
        return None
    from engine.personalizers.instantbooth.encoders import clip_pixels
    from engine.personalizers.instantbooth.personalizer import InstantBoothPersonalizer

    if not isinstance(personalizer, InstantBoothPersonalizer):
        return None
    config = personalizer.config
    if config.image_encoder_trained:
        return None
    size = config.image_size

    def pixels(images: Sequence[Image]) -> torch.Tensor:
        return clip_pixels(images, size)

    encoder = personalizer.image_encoder
    return _ImageEncoder(_method_of(model, encoder, {"clip_pixels": size}), encoder, pixels)


def _method_of(
    model: LoadedModelView, encoder: CLIPVisionModelWithProjection, preprocess: dict[str, object]
) -> str:
    """The encoder's method id, fingerprinted once per loaded model (sampling every weight
    costs ~20 ms for ViT-H/14 on a CPU: too much to pay on every render)."""
    cache = model.extra.setdefault(_METHOD_CACHE, {})
    assert isinstance(cache, dict)
    key = (encoder, json.dumps(preprocess, sort_keys=True, default=str))
    if key not in cache:
        config = {
            "encoder": stable_config(encoder.config.to_dict()),
            "preprocess": preprocess,
            "output": "image_embeds",
            "version": _EMBEDDING_VERSION,
        }
        cache[key] = METHOD_PREFIX + encoder_fingerprint(encoder, config)
    return cache[key]
