"""Photo intake: turn untrusted uploaded bytes into a normalised reference photo, or refuse them.

Every photo a user sends goes through :func:`normalize_photo` before anything else touches it.
The steps, cheapest first, so that hostile input is refused before it costs memory or CPU:

1. byte limit (``limits.max_bytes``) and empty files;
2. the real format, sniffed from the magic bytes (never the filename): JPEG (MPO too: its first
   picture), PNG, WebP, HEIC/HEIF (pillow-heif; its primary image) and GIF; everything else,
   AVIF included (no AV1 decoder in this libheif), is refused;
3. the header only (``Image.open`` is lazy): decoded size against the pixel ceilings
   (``limits.max_jpeg_pixels`` for a baseline JPEG, which is decoded at a reduced DCT scale;
   ``limits.max_pixels`` for everything decoded at full size: PNG, WebP, HEIC, GIF and
   progressive JPEGs, whose decoder buffers every coefficient of the full image) and Pillow's
   own decompression-bomb ceiling, shortest side against ``limits.min_side``, aspect
   ratio (the stored photo keeps ``min_side`` once fitted into ``max_stored_side``), the
   memory the decode will take, per format, bit depth, palette and transparency
   (``decode_plan`` in bot/services/decode_budget.py), against ``limits.max_decode_bytes``,
   animation (GIF, APNG, WebP with more than one frame: refused, so no frame past the first
   is ever decoded);
4. decode (JPEGs at a reduced DCT scale when they are much bigger than what we store), convert
   every Pillow mode to RGB(A), downscale so the longest side is at most
   ``limits.max_stored_side``, colour-convert an embedded ICC profile to sRGB, apply the EXIF
   orientation, composite transparency on a neutral grey;
5. re-encode without any metadata (EXIF, GPS, ICC, XMP, text chunks are all dropped): PNG when
   the source was lossless (PNG, GIF, lossless WebP) so nothing is lost, JPEG at
   ``limits.jpeg_quality`` when it was lossy (JPEG, lossy WebP, HEIC), because storing a
   JPEG's pixels as PNG would cost ~5x the bytes for no fidelity. The sha256 is of these bytes.

At most :data:`DECODE_SLOTS` photos are decoded at a time in a process (a global semaphore,
whatever the caller: the bot's intake threads, the CLI: it bounds the CPU), and together they
never take more than ``limits.max_decode_bytes`` (``DECODE_MEMORY``: each decode reserves its
estimate first and waits until it fits beside the others); callers bound how many wait
(bot/services/avatars.py).

Anything a malformed file makes Pillow or libheif raise ends as ``InvalidPhoto("corrupt")``;
callers only ever see :class:`NormalizedPhoto` or :class:`~bot.errors.InvalidPhoto`. Trailing
data (a ZIP appended to a JPEG, garbage after EOI) is ignored by the decoders and can never
reach storage, since only re-encoded pixels are stored. This module never sets Pillow's
``LOAD_TRUNCATED_IMAGES``: a truncated file is refused, not padded with grey.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import unicodedata
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import pillow_heif
from PIL import Image, ImageCms

from bot.config import PhotoLimits
from bot.errors import InvalidPhoto
from bot.services.decode_budget import (
    DECODE_MEMORY,
    DESCRIPTIONS,
    DecodeKind,
    decode_cost,
    decode_plan,
    webp_is_lossless,
)

logger = logging.getLogger(__name__)

# Idempotent: lets Image.open read HEIC/HEIF (what iPhones send). It does not change Pillow's
# behaviour for any other format.
pillow_heif.register_heif_opener()


class Reason(StrEnum):
    """Stable reason codes of :class:`InvalidPhoto` raised by intake (logs, tests, JSON)."""

    EMPTY = "empty"
    TOO_LARGE_BYTES = "too_large_bytes"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
    ANIMATED = "animated"
    DUPLICATE = "duplicate"
    TOO_COSTLY = "too_costly_to_decode"


# The user-facing message of each reason. ``name`` is always the escaped display name.
REASON_MESSAGES: Final[Mapping[Reason, str]] = MappingProxyType(
    {
        Reason.EMPTY: "`{name}` is empty.",
        Reason.TOO_LARGE_BYTES: "`{name}` is {size}, over the {limit} limit.",
        Reason.UNSUPPORTED_FORMAT: (
            "`{name}` is not a photo format I accept; send a JPEG, PNG, WebP, HEIC or still GIF."
        ),
        Reason.CORRUPT: "`{name}` could not be read: the file is damaged or incomplete.",
        Reason.TOO_MANY_PIXELS: (
            "`{name}` is too large ({pixels}); the limit is {max_megapixels} megapixels."
        ),
        Reason.TOO_SMALL: (
            "`{name}` is too small ({width}×{height}); both sides must be at least "
            "{min_side} pixels."
        ),
        Reason.EXTREME_ASPECT_RATIO: (
            "`{name}` is too long and narrow ({width}×{height}); the long side may be at most "
            "{max_ratio} times the short side."
        ),
        Reason.ANIMATED: "`{name}` is animated; send a still photo.",
        Reason.DUPLICATE: "`{name}` is the same photo as {other}.",
        Reason.TOO_COSTLY: (
            "`{name}` would take too much memory to open ({what}, {width}×{height} pixels: "
            "about {needed}; the limit is {limit}). Send it as a JPEG, or smaller."
        ),
    }
)

# Formats accepted, as Pillow names them (and as NormalizedPhoto.source_format reports them).
ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "HEIF", "GIF")
_LOSSLESS_SOURCES: Final = frozenset({"PNG", "GIF"})
_ANIMATABLE: Final = frozenset({"GIF", "PNG", "WEBP"})
# HEIF major brands that pillow-heif opens (HEVC-coded and generic); AVIF (AV1-coded, also
# "mif1" with an "avif" compatible brand) is refused: pillow-heif's libheif has no AV1 decoder.
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AV1_BRANDS: Final = frozenset({b"avif", b"avis"})

# Transparent areas become this light, neutral grey: no colour cast for the encoders, and a
# softer edge against most subjects than white or black would give.
BACKGROUND: Final = (224, 224, 224)
_MAX_NAME_CHARS: Final = 60

# The same table as ImageOps.exif_transpose. We apply it ourselves to the already downscaled
# image: transposing first would copy the full-size decode (memory) for the same result.
_TRANSPOSE: Final[Mapping[int, Image.Transpose]] = MappingProxyType(
    {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
)
_EXIF_ORIENTATION: Final = 0x0112

# warnings.catch_warnings swaps the process-wide filter list; serialising our own use keeps two
# intake threads from restoring each other's filters. Held only while headers/EXIF are parsed.
_WARNINGS_LOCK = threading.Lock()

# Photos decoded at the same time in this process; each may cost up to the decode budget.
DECODE_SLOTS: Final = 2
_DECODES = threading.BoundedSemaphore(DECODE_SLOTS)


@dataclass(frozen=True, slots=True)
class NormalizedPhoto:
    """A photo that passed intake: RGB, upright, bounded, metadata-free, re-encoded."""

    data: bytes = field(repr=False)
    sha256: str
    width: int
    height: int
    format: str  # the stored encoding: "JPEG" or "PNG"
    source_format: str  # sniffed from the bytes: one of ACCEPTED_FORMATS
    original_width: int  # as the file's header states (before orientation and downscaling)
    original_height: int


def display_name(filename: str | None) -> str:
    """A user-supplied filename made safe to show in a message (Discord or a terminal).

    Keeps the last path component, drops control, format (bidi overrides, zero-width) and
    unassigned characters and lone surrogates, collapses whitespace, replaces backticks (the
    messages quote the name in a code span) and trims long names in the middle, keeping the
    extension visible.
    """
    if not filename:
        return "unnamed file"
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    kept = []
    for ch in unicodedata.normalize("NFC", base):
        if ch.isspace():
            kept.append(" ")
        elif unicodedata.category(ch)[0] != "C":
            kept.append("'" if ch == "`" else ch)
    name = " ".join("".join(kept).split())
    if len(name) > _MAX_NAME_CHARS:
        name = name[: _MAX_NAME_CHARS - 16] + "…" + name[-15:]
    return name or "unnamed file"


def refusal(reason: Reason, filename: str | None, **fields: object) -> InvalidPhoto:
    """Build the InvalidPhoto for ``reason``, with its message naming the file safely."""
    message = REASON_MESSAGES[reason].format(name=display_name(filename), **fields)
    return InvalidPhoto(str(reason), message, filename=filename)


def check_size(size: int, filename: str | None, limits: PhotoLimits) -> None:
    """Refuse by size alone; callers that know a size before downloading should call this."""
    if size <= 0:
        raise refusal(Reason.EMPTY, filename)
    if size > limits.max_bytes:
        raise refusal(
            Reason.TOO_LARGE_BYTES,
            filename,
            size=_human_bytes(size),
            limit=_human_bytes(limits.max_bytes, exact=False),
        )


def sniff_format(data: bytes) -> str | None:
    """The accepted format of ``data`` from its magic bytes (a Pillow format id), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        box_size = int.from_bytes(data[:4], "big")
        major = data[8:12]
        # Compatible brands follow the major brand and its version; bounded by the box.
        compatible = data[16 : max(16, min(box_size, 256))]
        brands = {compatible[i : i + 4] for i in range(0, len(compatible) - 3, 4)}
        if major in _HEIF_BRANDS and major not in _AV1_BRANDS and not brands & _AV1_BRANDS:
            return "HEIF"
    return None


def normalize_photo(data: bytes, filename: str, limits: PhotoLimits) -> NormalizedPhoto:
    """Check and normalise one uploaded photo (see the module docstring for the steps).

    Raises :class:`InvalidPhoto` with one of the :class:`Reason` codes; nothing else.
    """
    check_size(len(data), filename, limits)
    source_format = sniff_format(data)
    if source_format is None:
        raise refusal(Reason.UNSUPPORTED_FORMAT, filename)
    try:
        with _DECODES:
            return _normalize(data, filename, source_format, limits)
    except InvalidPhoto:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(filename, limits, None) from exc
    except Exception as exc:
        # Malformed files make Pillow, libjpeg, zlib and libheif raise many different,
        # undocumented exceptions (OSError, SyntaxError, ValueError, EOFError, struct.error,
        # RuntimeError...); all of them mean the same thing to the user.
        # File names often carry people's names: never above DEBUG (docs/security.md).
        logger.info("a photo refused as corrupt: %s: %s", type(exc).__name__, exc)
        logger.debug("the corrupt photo was %r", display_name(filename))
        raise refusal(Reason.CORRUPT, filename) from exc


def check_batch(
    files: Iterable[tuple[str, bytes]],
    limits: PhotoLimits,
    *,
    existing_sha256: Collection[str] = (),
) -> list[NormalizedPhoto | InvalidPhoto]:
    """Normalise each ``(filename, data)``; one result per file, in order.

    A photo whose normalised bytes repeat an earlier one of the batch, or one of
    ``existing_sha256`` (the avatar's stored photos), is refused as ``duplicate``. Input may be
    a generator, so a caller reading files from disk need not hold them all at once.
    """
    results: list[NormalizedPhoto | InvalidPhoto] = []
    seen: dict[str, str] = {}
    existing = frozenset(existing_sha256)
    for filename, data in files:
        try:
            photo = normalize_photo(data, filename, limits)
        except InvalidPhoto as exc:
            results.append(exc)
            continue
        if photo.sha256 in existing:
            results.append(refusal(Reason.DUPLICATE, filename, other="one already saved"))
        elif photo.sha256 in seen:
            other = f"`{display_name(seen[photo.sha256])}`"
            results.append(refusal(Reason.DUPLICATE, filename, other=other))
        else:
            seen[photo.sha256] = filename
            results.append(photo)
    return results


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB; transparency composited on :data:`BACKGROUND`.

    16-bit and 32-bit integer greyscale are scaled from 0..65535 (what 16-bit PNGs hold) rather
    than clipped, which would turn them white; float images follow Pillow's 0..255 convention.
    """
    return _flatten(_to_srgb(_working_mode(image), None))


# --- the pipeline ----------------------------------------------------------------------------


def _normalize(
    data: bytes, filename: str, source_format: str, limits: PhotoLimits
) -> NormalizedPhoto:
    with _quiet_pillow():
        image = Image.open(io.BytesIO(data), formats=[source_format])
    with image:
        width, height = image.size
        _check_dimensions(width, height, filename, limits, _budget(image, source_format, limits))
        kind, pixels = decode_plan(image, source_format, data, limits.max_stored_side)
        cost = decode_cost(kind, pixels)
        if cost > limits.max_decode_bytes:
            raise _too_costly(filename, limits, kind, (width, height), cost)
        if source_format == "PNG":
            # Pillow checks chunk CRCs only up to the first IDAT; verify() walks them all
            # (without decoding), so a damaged PNG is refused whichever chunk was hit.
            with _quiet_pillow(), Image.open(io.BytesIO(data), formats=["PNG"]) as probe:
                probe.verify()
        if source_format in _ANIMATABLE:
            with _quiet_pillow():
                animated = bool(getattr(image, "is_animated", False))
            if animated:
                raise refusal(Reason.ANIMATED, filename)
        # The decodes in progress in this process share one budget: this one waits until its
        # estimate fits beside theirs.
        with DECODE_MEMORY.reserve(cost, limits.max_decode_bytes):
            image.load()
            orientation = _orientation(image)
            icc = image.info.get("icc_profile")
            working = _downscale(_working_mode(image), limits.max_stored_side)
            srgb = _to_srgb(working, icc if isinstance(icc, bytes) else None)
            out = _flatten(_transpose(srgb, orientation))
            lossless = source_format in _LOSSLESS_SOURCES or (
                source_format == "WEBP" and webp_is_lossless(data)
            )
            # Encoded inside the `with`: `out` may still be the opened file itself, and closing
            # it releases its pixels.
            encoded = _encode(out, lossless, limits.jpeg_quality)
    return NormalizedPhoto(
        data=encoded,
        sha256=hashlib.sha256(encoded).hexdigest(),
        width=out.width,
        height=out.height,
        format="PNG" if lossless else "JPEG",
        source_format=source_format,
        original_width=width,
        original_height=height,
    )


def _encode(image: Image.Image, lossless: bool, jpeg_quality: int) -> bytes:
    # Nothing from the source's info (EXIF, ICC, XMP, dpi, text chunks) may reach the encoder:
    # PNG's writer falls back to image.info for some of them. Options are fixed so that the
    # same pixels always give the same bytes (the sha256 finds duplicates).
    image.info = {}
    buffer = io.BytesIO()
    if lossless:
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=jpeg_quality, optimize=True)
    return buffer.getvalue()


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    # Pillow warns above MAX_IMAGE_PIXELS (and raises DecompressionBombError above twice that,
    # which normalize_photo turns into too_many_pixels), and warns about truncated EXIF blocks.
    # Both are noise here: our own, lower pixel limit is checked right after the header is
    # read, and a broken EXIF block only loses its orientation.
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _budget(image: Image.Image, source_format: str, limits: PhotoLimits) -> int:
    """The most pixels this file may have: more for a baseline JPEG, which ``Image.draft``
    decodes at 1/2 to 1/8 of each side (a progressive one keeps full-size coefficients)."""
    if source_format == "JPEG" and not (
        image.info.get("progressive") or image.info.get("progression")
    ):
        return max(limits.max_jpeg_pixels, limits.max_pixels)
    return limits.max_pixels


def _too_costly(
    filename: str, limits: PhotoLimits, kind: DecodeKind, size: tuple[int, int], cost: int
) -> InvalidPhoto:
    return refusal(
        Reason.TOO_COSTLY,
        filename,
        what=DESCRIPTIONS[kind],
        width=size[0],
        height=size[1],
        needed=_human_bytes(cost),
        limit=_human_bytes(limits.max_decode_bytes, exact=False),
    )


def _check_dimensions(
    width: int, height: int, filename: str, limits: PhotoLimits, budget: int | None = None
) -> None:
    budget = limits.max_pixels if budget is None else budget
    if width * height > budget:
        raise _too_many_pixels(filename, limits, (width, height), budget)
    if min(width, height) < limits.min_side:
        raise refusal(
            Reason.TOO_SMALL, filename, width=width, height=height, min_side=limits.min_side
        )
    # Fitting the long side into max_stored_side must leave the short side >= min_side.
    max_ratio = limits.max_stored_side / limits.min_side
    if max(width, height) > max_ratio * min(width, height):
        raise refusal(
            Reason.EXTREME_ASPECT_RATIO,
            filename,
            width=width,
            height=height,
            max_ratio=f"{max_ratio:g}",
        )


def _too_many_pixels(
    filename: str, limits: PhotoLimits, size: tuple[int, int] | None, budget: int | None = None
) -> InvalidPhoto:
    if size is None:  # Pillow's own ceiling fired before the size was available to us
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        pixels = f"over {ceiling / 1e6:.0f} megapixels"
    else:
        pixels = f"{size[0]}×{size[1]} pixels"
    return refusal(
        Reason.TOO_MANY_PIXELS,
        filename,
        pixels=pixels,
        max_megapixels=f"{(budget or limits.max_pixels) / 1e6:g}",
    )


def _orientation(image: Image.Image) -> int:
    try:
        with _quiet_pillow():
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as exc:  # a broken EXIF block is no reason to refuse the pixels
        logger.debug("unreadable EXIF ignored: %s: %s", type(exc).__name__, exc)
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _working_mode(image: Image.Image) -> Image.Image:
    """Reduce any mode to L, LA, RGB, RGBA or CMYK (CMYK kept for its ICC profile)."""
    mode = image.mode
    if mode in ("L", "RGB"):
        if image.has_transparency_data:  # a tRNS colour key
            return image.convert("LA" if mode == "L" else "RGBA")
        return image
    if mode in ("LA", "RGBA", "CMYK"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode == "La":
        return image.convert("LA")
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit samples: scale to 8 bits instead of letting convert("L") clip at 255.
        wide = image if mode == "I" else image.convert("I")
        return wide.point(lambda v: v * (1 / 257)).convert("L")
    if mode == "F":
        return image.convert("L")
    return image.convert("RGB")  # YCbCr, LAB, HSV, RGBX and anything newer


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    width, height = image.size
    longest = max(width, height)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: box-reduce by an integer factor first, then Lanczos: same quality, faster.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """L/LA/RGB/RGBA/CMYK to RGB or RGBA, through the embedded ICC profile when it works."""
    has_alpha = image.mode in ("LA", "RGBA")
    alpha = image.getchannel("A") if has_alpha else None
    colour = image.convert("L" if image.mode == "LA" else "RGB") if has_alpha else image
    converted: Image.Image | None = None
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            converted = ImageCms.profileToProfile(colour, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            # A broken or mismatched profile (e.g. an RGB profile on a greyscale image): the
            # pixels are still fine, only the colour interpretation is lost.
            logger.debug("ICC profile ignored: %s: %s", type(exc).__name__, exc)
    if converted is None:
        converted = colour if colour.mode == "RGB" else colour.convert("RGB")
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _transpose(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    flat = Image.new("RGB", image.size, BACKGROUND)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _human_bytes(size: int, *, exact: bool = True) -> str:
    # Sizes keep a decimal ("20.3 MB"); configured limits read as written ("20 MB").
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if exact else f"{round(size / scale, 1):g} {unit}"
    return f"{size} bytes"
