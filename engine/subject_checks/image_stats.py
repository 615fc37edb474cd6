"""Image-quality measures: sharpness (variance of the Laplacian) and exposure.

Both are computed on one grayscale copy whose shorter side is resized to a fixed size, so the
thresholds mean the same thing for a 640x480 phone thumbnail and a 6000x4000 camera original:
a large photo with slight motion blur becomes sharp once reduced to the size the encoders use
anyway, and a small photo blown up to that size is, for our purposes, soft.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The shorter side of the grayscale copy all measures run on.
NORMALISED_SIDE = 512
# Luma at or below / at or above these counts as crushed to black / blown to white (0..1).
CLIPPED_DARK_LUMA = 4 / 255
CLIPPED_BRIGHT_LUMA = 251 / 255


@dataclass(frozen=True)
class ImageStats:
    sharpness: float  # variance of the 4-neighbour Laplacian, luma in 0..255 units
    exposure: float  # mean luma, 0..1
    contrast: float  # standard deviation of luma, 0..1
    clipped_dark: float  # fraction of pixels at or below CLIPPED_DARK_LUMA
    clipped_bright: float  # fraction of pixels at or above CLIPPED_BRIGHT_LUMA


def normalised_gray(image: Image.Image, side: int = NORMALISED_SIDE) -> np.ndarray:
    """Luma (ITU-R 601, Pillow's "L") as float32 0..255, shorter side resized to `side`."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot inspect an empty image ({width}x{height})")
    # Callers hand us normalised RGB photos; convert() also covers palette and alpha modes.
    gray = image if image.mode == "L" else image.convert("L")
    scale = side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != gray.size:
        # Pillow's bilinear filter widens its support when shrinking, so this antialiases.
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.float32)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] over the valid interior.

    The same kernel as OpenCV's `Laplacian(ksize=1)`, so published rules of thumb for "variance
    of the Laplacian" carry over (in 0..255 luma units).
    """
    if gray.ndim != 2 or gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.float32, copy=False)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var(dtype=np.float64))


def measure(image: Image.Image) -> ImageStats:
    gray = normalised_gray(image)
    luma = gray / 255.0
    return ImageStats(
        sharpness=laplacian_variance(gray),
        exposure=float(luma.mean(dtype=np.float64)),
        contrast=float(luma.std(dtype=np.float64)),
        clipped_dark=float(np.count_nonzero(luma <= CLIPPED_DARK_LUMA) / luma.size),
        clipped_bright=float(np.count_nonzero(luma >= CLIPPED_BRIGHT_LUMA) / luma.size),
    )
