"""Live previews: small images projected linearly from a render's current latents.

A preview is a fixed linear map from each latent cell's channels to an RGB colour (plus a
bias), per VAE family: no extra weights, a few microseconds per image, at the latent's own
resolution (1/8 of the image side for SD1.x), so it shows composition and colour, not detail.
The engine never stores previews; the caller decides what to do with them.

Families:
- SD1.x (4 latent channels, scaling factor 0.18215): the coefficients ComfyUI's Latent2RGB
  previewer uses (``comfy/latent_formats.py``, class ``SD15``, ``latent_rgb_factors``),
  applied to the scaled latents the UNet denoises; they map to RGB in [-1, 1].
- Anything else (FLUX.2 [klein]'s 32-channel VAE among them): no projection here, so no preview.
  ComfyUI publishes factors for FLUX.2 too, but for its own latent layout (before the 2x2
  patchify and batch-norm normalisation that diffusers' FLUX.2 pipeline denoises in); wiring
  them needs that layout's de-normalisation and has not been done.

A projection can be fitted by least squares from latents and their decodes: how the tests
check that a projection and the VAE's decode agree in colour (tests/engine/test_preview.py).
``projection_for`` fits none at load for a VAE without published factors: the VAEs that reach
the SD1.x denoising loop are SD1's latent space (published factors), and the random-weight
profiles' decode carries no colour to fit (a fit predicts it no better than a constant), so
a fitted projection would show a flat colour while claiming to match.

Where the operator names a tiny VAE decoder (``engine.preview_decoder``: an
``AutoencoderTiny`` such as madebyollin/taesd), ``DecoderPreview`` decodes previews with it
instead: real detail and colour, at the cost of a small network's pass per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image as PILImage

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny
    from PIL.Image import Image

PREVIEW_MAX_SIDE = 128
SD1_SCALING_FACTOR = 0.18215
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LatentProjection:
    """RGB in [-1, 1] = latent channels @ ``factors`` + ``bias`` (one RGB row per channel)."""

    factors: tuple[RGB, ...]
    bias: RGB = (0.0, 0.0, 0.0)

    def rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents → (B, 3, h, w) colours, unclamped, on the CPU in float32."""
        if latents.ndim != 4 or latents.shape[1] != len(self.factors):
            raise ValueError(
                f"latents of shape {tuple(latents.shape)}: this projection reads "
                f"{len(self.factors)} channels"
            )
        factors = torch.tensor(self.factors, dtype=torch.float32)
        bias = torch.tensor(self.bias, dtype=torch.float32).view(1, 3, 1, 1)
        return torch.einsum("bchw,cr->brhw", latents.detach().float().cpu(), factors) + bias

    def images(self, latents: torch.Tensor, max_side: int = PREVIEW_MAX_SIDE) -> list[Image]:
        """One small RGB image per latent, at most ``max_side`` pixels a side."""
        return _small_images(self.rgb(latents), max_side)


@dataclass(frozen=True)
class DecoderPreview:
    """Previews decoded by a tiny VAE decoder (diffusers' ``AutoencoderTiny``, TAESD's layout),
    loaded on the pipeline's device and dtype."""

    decoder: AutoencoderTiny

    def images(self, latents: torch.Tensor, max_side: int = PREVIEW_MAX_SIDE) -> list[Image]:
        """One small RGB image per latent, at most ``max_side`` pixels a side.

        ``latents`` are the UNet's (scaled by the VAE's scaling factor); the decoder reads
        them divided by its own ``scaling_factor`` (1.0 for TAESD: it was trained on SD's
        scaled latents) and returns RGB in [-1, 1]. Latents are area-averaged first so the
        decode comes out at most ``max_side`` a side, and decoded one at a time, so a
        preview never depends on its batch mates.
        """
        config = self.decoder.config
        # DecoderTiny upsamples after every block but the last.
        upscale = int(config["upsampling_scaling_factor"]) ** (
            len(config["num_decoder_blocks"]) - 1
        )
        scaling = float(config["scaling_factor"])
        parameter = next(self.decoder.parameters())
        decoded = []
        with torch.inference_mode():
            for row in latents.split(1):
                small = _shrink(row, max(1, max_side // upscale))
                small = small.to(parameter.device, parameter.dtype) / scaling
                decoded.append(self.decoder.decode(small).sample.float().cpu())
        return [image for rgb in decoded for image in _small_images(rgb, max_side)]


def _shrink(latents: torch.Tensor, max_cells: int) -> torch.Tensor:
    """(1, C, h, w) latents area-averaged to at most ``max_cells`` a side, aspect kept."""
    height, width = latents.shape[-2:]
    scale = min(1.0, max_cells / max(height, width))
    if scale == 1.0:
        return latents
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(latents, size=size, mode="area")


def _small_images(rgb: torch.Tensor, max_side: int) -> list[Image]:
    """(B, 3, h, w) colours in [-1, 1] → one RGB image each, at most ``max_side`` a side."""
    colours = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
    pixels = (colours * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = []
    for array in pixels:
        image = PILImage.fromarray(array, mode="RGB")
        image.thumbnail((max_side, max_side), PILImage.Resampling.BILINEAR)
        images.append(image)
    return images


SD1_PROJECTION = LatentProjection(
    factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    )
)


def projection_for(vae: torch.nn.Module) -> LatentProjection | None:
    """The preview projection of this VAE's family, or None (no preview)."""
    config = getattr(vae, "config", None)
    channels = getattr(config, "latent_channels", None)
    scaling = getattr(config, "scaling_factor", None)
    if channels == 4 and scaling is not None and math.isclose(scaling, SD1_SCALING_FACTOR):
        return SD1_PROJECTION
    return None


Previewer = LatentProjection | DecoderPreview
# The pipeline attribute that holds an operator's decoder (engine/engine.py sets it at load).
_DECODER_ATTRIBUTE = "preview_decoder"


def attach_decoder(pipe: object, decoder: DecoderPreview) -> None:
    """Make ``previewer_for(pipe)`` decode this pipeline's previews with ``decoder``."""
    setattr(pipe, _DECODER_ATTRIBUTE, decoder)


def previewer_for(pipe: object) -> Previewer | None:
    """How this pipeline's previews are made: its attached decoder, else its VAE family's
    projection, else None (no previews)."""
    decoder = getattr(pipe, _DECODER_ATTRIBUTE, None)
    if isinstance(decoder, DecoderPreview):
        return decoder
    vae = getattr(pipe, "vae", None)
    return projection_for(vae) if isinstance(vae, torch.nn.Module) else None
