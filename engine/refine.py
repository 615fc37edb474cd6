"""Refining one chosen image: Upscale x2 and Vary (subtle / strong), as render requests.

On the Stable Diffusion profiles both are image-to-image renders of the chosen image with the
original request's prompt, subject(s), personalizer and identity strength (engine/pipeline.py
runs them through the same denoising loop as any render; batching keeps working: requests of
the same kind, strength and size share a batch):

- Upscale x2 is the "hires fix": the image resized to twice its side (Lanczos), then
  denoised again over the last ``UPSCALE_STRENGTH`` of the schedule, which redraws detail
  at the new size and keeps the composition. Outputs above the profile's
  ``max_untiled_pixels`` are denoised in overlapping tiles (``RenderRequest.tile``).
- Vary re-runs a larger share of the schedule from the image at its own size: subtle keeps
  the composition and changes details, strong keeps the layout and colours loosely.

On FLUX.2 [klein] (``pipeline_family`` "flux2"), whose pipeline reads images only as
references, Upscale x2 is a render at twice the side with the same prompt and subject(s) and
the chosen image as the FIRST reference (``RenderRequest.reference_image``; the personalizer
encodes it at the output's size and adds one photo per subject). BFL's multi-reference
prompts name references by position ("the person from image 1"), so the prompt's image
numbers move up by one and ``REFERENCE_UPSCALE_PREFIX`` says what image 1 is. No tiling: the
transformer attends over the whole image and its references at once, and ``MAX_SIDE`` caps the
size. Vary is refused there (its personalizer's ``check``): with no strength, nothing says how
much of the source to keep.

The caller picks the new seeds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from enum import StrEnum
from typing import TYPE_CHECKING

from engine.types import MAX_SIDE, MIN_SIDE, RenderRequest

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.profiles import Profile

UPSCALE_FACTOR = 2
# The hires-fix strength: enough of the schedule to redraw detail at the new size, too little
# to move what the image shows (0.25..0.4 is the usual range).
UPSCALE_STRENGTH = 0.3
# Vary: how much of the schedule re-runs over the chosen image.
VARY_SUBTLE_STRENGTH = 0.35
VARY_STRONG_STRENGTH = 0.7
# Tiles are whole UNet inputs: Stable Diffusion's UNet halves a latent three times, so a tile
# side is a multiple of 8 latent cells, 64 pixels.
TILE_MULTIPLE = 64
# Profiles whose Upscale passes the chosen image as a reference, not as init latents.
REFERENCE_FAMILIES = frozenset({"flux2"})
REFERENCE_UPSCALE_PREFIX = (
    "Image 1 redrawn at a higher resolution with finer detail, the same picture: "
)
_IMAGE_NUMBER = re.compile(r"\b(image\s+)(\d+)\b", re.IGNORECASE)


class Variation(StrEnum):
    SUBTLE = "subtle"
    STRONG = "strong"

    @property
    def strength(self) -> float:
        return VARY_SUBTLE_STRENGTH if self is Variation.SUBTLE else VARY_STRONG_STRENGTH


def upscale_request(
    source: Image, base: RenderRequest, profile: Profile, *, seed: int
) -> RenderRequest:
    """An Upscale x2 of ``source`` (one image of ``base``'s render) with ``seed``: the hires
    fix, or on FLUX.2 a render with ``source`` as its first reference."""
    width, height = scaled_size(source.size, UPSCALE_FACTOR, profile.size_multiple)
    if profile.pipeline_family in REFERENCE_FAMILIES:
        return dataclasses.replace(
            base,
            prompt=reference_upscale_prompt(base.prompt),
            width=width,
            height=height,
            seed=seed,
            count=1,
            reference_image=source.convert("RGB"),
        )
    return _image_to_image(source, base, profile, width, height, UPSCALE_STRENGTH, seed, 1)


def reference_upscale_prompt(prompt: str) -> str:
    """``prompt`` for a render whose image 1 is the chosen image: its own "image N" become
    "image N+1" (the subjects' references come after it), behind a prefix that names image 1."""
    renumbered = _IMAGE_NUMBER.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", prompt)
    return REFERENCE_UPSCALE_PREFIX + renumbered


def vary_request(
    source: Image,
    base: RenderRequest,
    profile: Profile,
    variation: Variation,
    *,
    seed: int,
    count: int = 1,
) -> RenderRequest:
    """``count`` variations of ``source`` at its own size, seeds ``seed..seed+count-1``."""
    width, height = scaled_size(source.size, 1, profile.size_multiple)
    strength = Variation(variation).strength
    return _image_to_image(source, base, profile, width, height, strength, seed, count)


def scaled_size(size: tuple[int, int], factor: int, multiple: int) -> tuple[int, int]:
    """``size`` x ``factor``, shrunk (keeping the aspect) to fit ``MAX_SIDE``, each side
    rounded down to ``multiple`` and at least ``MIN_SIDE``."""
    width, height = size[0] * factor, size[1] * factor
    shrink = min(1.0, MAX_SIDE / max(width, height))
    step = math.lcm(multiple, 8)  # RenderRequest takes multiples of 8 only
    low = -(-MIN_SIDE // step) * step

    def fit(side: int) -> int:
        return max(low, int(side * shrink) // step * step)

    return fit(width), fit(height)


def tile_side(profile: Profile) -> int:
    """The side of the square tiles an output above the profile's budget is denoised in."""
    side = math.isqrt(profile.max_untiled_pixels) // TILE_MULTIPLE * TILE_MULTIPLE
    return min(MAX_SIDE, max(TILE_MULTIPLE, side))


def _image_to_image(
    source: Image,
    base: RenderRequest,
    profile: Profile,
    width: int,
    height: int,
    strength: float,
    seed: int,
    count: int,
) -> RenderRequest:
    tile = tile_side(profile) if width * height > profile.max_untiled_pixels else 0
    return dataclasses.replace(
        base,
        width=width,
        height=height,
        seed=seed,
        count=count,
        init_image=source.convert("RGB"),
        strength=strength,
        tile=tile,
    )
