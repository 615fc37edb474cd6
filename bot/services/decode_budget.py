"""What decoding an uploaded photo costs in memory, told from its header, and the process-wide
reservation that keeps concurrent decodes inside one budget.

The cost of a decode is not its pixel count: a 1 KB 25-megapixel WebP makes libwebp allocate
its RGBA canvases and Pillow copy them (~15 bytes a pixel at the peak), a 16-bit PNG is held
at 2 then 4 bytes a sample while it is scaled to 8 bits, a palette PNG with transparency
expands to RGBA. :data:`BYTES_PER_PIXEL` holds the peak bytes per decoded pixel of each
:class:`DecodeKind`, measured through the real intake path (decode + normalise, peak RSS above
the interpreter's baseline, fresh subprocesses) by ``bench/decode_budget.py``
(``bench/results/decode-budget-cpu.md``) and rounded up. :func:`decode_cost` multiplies it by
the pixels the decoder will produce (a baseline JPEG's after ``Image.draft``) and adds what
every decode costs besides (:data:`FIXED_BYTES`), so intake
refuses a file on its header, before one pixel is decoded, when that estimate is over
``PhotoLimits.max_decode_bytes``.

That setting is also the budget of every decode in progress in the process together:
:data:`DECODE_MEMORY` reserves each decode's estimate before it starts and releases it after,
so four large uploads decoded in four threads wait for each other instead of adding up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from PIL import Image


class DecodeKind(StrEnum):
    """The decode paths whose memory differs, as told from a file's header."""

    JPEG = "jpeg"  # baseline: decoded at the Image.draft scale
    JPEG_PROGRESSIVE = "jpeg-progressive"  # the coefficients of the full image are buffered
    PNG = "png"  # 8-bit grey or RGB; 16-bit RGB (Pillow reads it as 8-bit RGB)
    PNG_ALPHA = "png-alpha"  # RGBA, grey + alpha, or a tRNS colour key: composited
    PNG_16_GREY = "png-16-grey"  # held at 2, then 4 bytes a sample while scaled to 8 bits
    PALETTE = "palette"  # palette PNG or GIF, expanded to RGB
    PALETTE_ALPHA = "palette-alpha"  # palette with transparency, expanded to RGBA
    WEBP_LOSSY = "webp-lossy"  # libwebp's RGBA canvases, then Pillow's copy
    WEBP_LOSSLESS = "webp-lossless"
    HEIF = "heif"
    TIFF = "tiff"  # not accepted by intake (refused on its magic bytes); measured for reference


# What every decode costs besides its pixels: the stored-size image, its encoding, the
# decoder's own state (bench/results/decode-budget-cpu.md: the intercepts stay under it).
FIXED_BYTES: Final = 16 * 1024 * 1024

# Peak bytes per counted pixel (bench/results/decode-budget-cpu.md: each is above every
# measured slope of its kind, 4-24 MP, and FIXED_BYTES + it × pixels above every peak). A
# baseline JPEG counts the pixels Image.draft leaves; every other kind its full size.
BYTES_PER_PIXEL: Final[Mapping[DecodeKind, float]] = MappingProxyType(
    {
        DecodeKind.JPEG: 7.0,
        DecodeKind.JPEG_PROGRESSIVE: 4.0,
        DecodeKind.PNG: 5.0,
        DecodeKind.PNG_ALPHA: 10.0,
        DecodeKind.PNG_16_GREY: 11.5,
        DecodeKind.PALETTE: 6.0,
        DecodeKind.PALETTE_ALPHA: 10.0,
        DecodeKind.WEBP_LOSSY: 18.0,
        DecodeKind.WEBP_LOSSLESS: 18.0,
        DecodeKind.HEIF: 7.0,
        DecodeKind.TIFF: 6.0,
    }
)


def decode_cost(kind: DecodeKind, pixels: int) -> int:
    """Estimated peak bytes of decoding and normalising ``pixels`` counted pixels of ``kind``."""
    return FIXED_BYTES + int(BYTES_PER_PIXEL[kind] * pixels)


def decode_plan(
    image: Image.Image, source_format: str, data: bytes, max_stored_side: int
) -> tuple[DecodeKind, int]:
    """Which decode path ``image`` (opened, not loaded) takes and the pixels its cost counts,
    from its header alone. A JPEG is set to decode at a reduced DCT scale here (``draft``):
    a baseline one then costs the reduced size; a progressive one buffers the coefficients of
    the full image whatever the scale."""
    full = image.width * image.height
    if source_format == "JPEG":
        progressive = image.info.get("progressive") or image.info.get("progression")
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is that much bigger than
        # what we store (it keeps the result at least max_stored_side on each side): a 48 MP
        # phone photo then costs ~9 MB to decode instead of ~150 MB.
        image.draft(None, (max_stored_side, max_stored_side))
        if progressive:
            return DecodeKind.JPEG_PROGRESSIVE, full
        return DecodeKind.JPEG, image.width * image.height
    if source_format == "WEBP":
        lossless = webp_is_lossless(data)
        return (DecodeKind.WEBP_LOSSLESS if lossless else DecodeKind.WEBP_LOSSY), full
    if source_format == "HEIF":
        return DecodeKind.HEIF, full
    if source_format == "TIFF":
        return DecodeKind.TIFF, full
    mode, transparent = image.mode, "transparency" in image.info
    if mode in ("P", "PA") or (source_format == "GIF" and mode == "L"):
        alpha = transparent or mode == "PA"
        return (DecodeKind.PALETTE_ALPHA if alpha else DecodeKind.PALETTE), full
    if mode == "I" or mode.startswith("I;16"):
        return DecodeKind.PNG_16_GREY, full
    if mode in ("RGBA", "LA", "La", "RGBa") or transparent:
        return DecodeKind.PNG_ALPHA, full
    if mode in ("L", "RGB", "1"):
        return DecodeKind.PNG, full
    return DecodeKind.PNG_16_GREY, full  # anything else: the costliest PNG path


# How a refusal names each kind to the member.
DESCRIPTIONS: Final[Mapping[DecodeKind, str]] = MappingProxyType(
    {
        DecodeKind.JPEG: "JPEG",
        DecodeKind.JPEG_PROGRESSIVE: "progressive JPEG",
        DecodeKind.PNG: "PNG",
        DecodeKind.PNG_ALPHA: "PNG with transparency",
        DecodeKind.PNG_16_GREY: "16-bit PNG",
        DecodeKind.PALETTE: "palette image",
        DecodeKind.PALETTE_ALPHA: "palette image with transparency",
        DecodeKind.WEBP_LOSSY: "WebP",
        DecodeKind.WEBP_LOSSLESS: "lossless WebP",
        DecodeKind.HEIF: "HEIC",
        DecodeKind.TIFF: "TIFF",
    }
)


def webp_is_lossless(data: bytes) -> bool:
    """Whether a WebP's (first) image is VP8L (lossless) rather than VP8 (lossy)."""
    pos = 12
    for _ in range(32):  # a still WebP has a handful of chunks; never walk a hostile list
        if pos + 8 > len(data):
            break
        fourcc = data[pos : pos + 4]
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + size + (size & 1)
    return False


class DecodeMemory:
    """Bytes reserved by the decodes in progress; a reservation waits, first come first served,
    until it fits in ``capacity`` with the others. One that alone exceeds the capacity (intake
    refuses those first) still runs once nothing else is reserved, so it can never wait for
    ever."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: deque[object] = deque()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        with self._changed:
            return self._in_use

    def wait_for_waiters(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` reservations are waiting (or ``timeout`` seconds):
        lets a caller (a test, an operator's probe) observe the queue without polling."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._waiting) >= count, timeout)

    @contextmanager
    def reserve(self, nbytes: int, capacity: int) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            self._changed.notify_all()
            # FIFO: a large decode is not starved by a stream of small ones.
            while self._waiting[0] is not ticket or (
                self._in_use > 0 and self._in_use + nbytes > capacity
            ):
                self._changed.wait()
            self._waiting.popleft()
            self._in_use += nbytes
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= nbytes
                self._changed.notify_all()


DECODE_MEMORY: Final = DecodeMemory()
