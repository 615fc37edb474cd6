"""Near-duplicate photos: a difference hash (dHash) per photo, compared by Hamming distance.

Exact duplicates are refused by intake (same normalised bytes); near-duplicates (the same shot
re-saved, resized, or a burst) are only a warning: they add little for the encoder but are not
wrong. dHash on a 9x8 grayscale thumbnail is cheap, robust to rescaling and recompression, and
needs nothing beyond Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

# Of 64 bits: re-encodes and resizes of one photo differ by a few bits, different photos of
# one person by 15 or more (typical dHash figures; a warning, so erring either way is cheap).
NEAR_DUPLICATE_BITS = 6


def dhash(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    pixels = small.tobytes()  # mode L: one byte per pixel, row-major
    bits = 0
    for row in range(8):
        for col in range(8):
            left, right = pixels[row * 9 + col], pixels[row * 9 + col + 1]
            bits = (bits << 1) | (1 if left > right else 0)
    return bits


def near_duplicates(blobs: Sequence[bytes]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of photos that look nearly the same (j is the repeat)."""
    hashes = [dhash(b) for b in blobs]
    pairs = []
    for j in range(len(hashes)):
        for i in range(j):
            if (hashes[i] ^ hashes[j]).bit_count() <= NEAR_DUPLICATE_BITS:
                pairs.append((i, j))
                break
    return pairs
