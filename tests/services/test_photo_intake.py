"""Photo intake against the generated hostile corpus, every Pillow mode, and memory bounds."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from importlib.resources import files
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from bot.config import PhotoLimits
from bot.errors import AvatarbotError, InvalidPhoto
from bot.services.photo_intake import (
    BACKGROUND,
    REASON_MESSAGES,
    NormalizedPhoto,
    Reason,
    check_batch,
    check_size,
    display_name,
    normalize_photo,
    sniff_format,
    to_rgb,
)
from tests.fixtures.photos import (
    CorpusCase,
    assert_clean,
    corpus_cases,
    encode,
    exif_bytes,
    png_bomb,
    quadrants,
    raw_png,
)

LIMITS = PhotoLimits()
CASES = corpus_cases(LIMITS)
BOMBS = [c for c in CASES if c.expected_reason == "too_many_pixels"]


def test_corpus_is_large_and_covers_every_reason() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
    assert {c.expected_reason for c in CASES} == {None, *Reason}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_alone(case: CorpusCase) -> None:
    try:
        photo = normalize_photo(case.data, case.filename, LIMITS)
    except InvalidPhoto as exc:
        assert exc.reason == case.expected_alone, exc.message
        assert exc.filename == case.filename
        assert exc.message.startswith(f"`{display_name(case.filename)}` ")
        assert exc.message == str(exc) and exc.code == exc.reason
        assert exc.message.isprintable() and len(exc.message) < 200
        return
    assert case.expected_alone is None, f"accepted, expected {case.expected_alone}"
    assert_clean(photo, LIMITS)
    if case.check is not None:
        case.check(photo)


def test_the_corpus_as_one_batch_refuses_repeats() -> None:
    results = check_batch(((c.filename, c.data) for c in CASES), LIMITS)
    assert len(results) == len(CASES)
    got = {
        c.name: r.reason if isinstance(r, InvalidPhoto) else None
        for c, r in zip(CASES, results, strict=True)
    }
    assert got == {c.name: c.expected_reason for c in CASES}
    duplicate = results[[c.name for c in CASES].index("duplicate_gif_of_png")]
    assert isinstance(duplicate, InvalidPhoto)
    assert duplicate.message == "`duplicate_gif_of_png.gif` is the same photo as `png_rgb.png`."


def test_batch_refuses_photos_already_saved() -> None:
    data = encode(quadrants(400, 400, 1), "JPEG")
    first = normalize_photo(data, "a.jpg", LIMITS)
    other = encode(quadrants(400, 400, 2), "JPEG")
    results = check_batch(
        [("a.jpg", data), ("b.jpg", other)], LIMITS, existing_sha256={first.sha256}
    )
    assert isinstance(results[0], InvalidPhoto) and results[0].reason == "duplicate"
    assert "already saved" in results[0].message
    assert isinstance(results[1], NormalizedPhoto)


def test_invalid_photo_is_an_avatarbot_error() -> None:
    with pytest.raises(AvatarbotError):
        normalize_photo(b"", "x.jpg", LIMITS)


def test_same_input_gives_the_same_bytes() -> None:
    data = encode(quadrants(700, 500, 3), "JPEG")
    assert normalize_photo(data, "a.jpg", LIMITS) == normalize_photo(data, "b.jpg", LIMITS)


def test_configured_limits_are_honoured() -> None:
    small = PhotoLimits(max_bytes=50_000, min_side=64, max_pixels=500_000, max_stored_side=256)
    photo = normalize_photo(encode(quadrants(700, 560, 4), "JPEG", quality=80), "a.jpg", small)
    assert (photo.width, photo.height) == (256, 205)
    assert (photo.original_width, photo.original_height) == (700, 560)
    with pytest.raises(InvalidPhoto, match=r"limit is 0\.5 megapixels") as exc:
        normalize_photo(encode(quadrants(800, 700, 5), "PNG"), "b.png", small)
    assert exc.value.reason == "too_many_pixels"
    noisy = Image.frombytes("RGB", (300, 300), random.Random(0).randbytes(300 * 300 * 3))
    with pytest.raises(InvalidPhoto, match=r"over the 48\.8 KB limit") as exc:
        normalize_photo(encode(noisy, "PNG"), "c.png", small)
    assert exc.value.reason == "too_large_bytes"
    ok = normalize_photo(encode(quadrants(100, 80, 6), "PNG"), "d.png", small)
    assert (ok.width, ok.height) == (100, 80)  # 80 >= min_side 64; never upscaled
    rougher = LIMITS.model_copy(update={"jpeg_quality": 50})
    low = normalize_photo(encode(noisy, "JPEG"), "e.jpg", rougher)
    high = normalize_photo(encode(noisy, "JPEG"), "e.jpg", LIMITS)
    assert len(low.data) < len(high.data)


def test_check_size_refuses_from_a_declared_size() -> None:
    check_size(LIMITS.max_bytes, "fine.jpg", LIMITS)
    with pytest.raises(InvalidPhoto) as exc:
        check_size(LIMITS.max_bytes + 1, "big.jpg", LIMITS)
    assert exc.value.reason == "too_large_bytes"
    with pytest.raises(InvalidPhoto) as exc:
        check_size(0, "none.jpg", LIMITS)
    assert exc.value.reason == "empty"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a", "GIF"),
        (b"GIF87a", "GIF"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "WEBP"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIF"),
        (b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "HEIF"),
        (b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif", None),
        (b"\0\0\0\x18ftypavif\0\0\0\0avifmif1", None),
        (b"\0\0\0\x18ftypisom\0\0\0\0isommp41", None),
        (b"RIFF\0\0\0\0WAVEfmt ", None),
        (b"II*\0", None),
        (b"BM", None),
        (b"%PDF-1.7", None),
        (b"", None),
        (b"\xff\xd8", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head + bytes(32)) == expected


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        ("photo.jpg", "photo.jpg"),
        ("a/b/../c.jpg", "c.jpg"),
        ("C:\\Users\\me\\selfie.png", "selfie.png"),
        ("\x1b[2J\x1b[31mred.jpg", "[2J[31mred.jpg"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("zero\u200bwidth.jpg", "zerowidth.jpg"),
        ("tab\tand\nnewline  .jpg", "tab and newline .jpg"),
        ("`rm -rf`.jpg", "'rm -rf'.jpg"),
        ("\udcff\udcfe.jpg", ".jpg"),
        ("фото 😀.jpg", "фото 😀.jpg"),
        ("", "unnamed file"),
        (None, "unnamed file"),
        ("\u200b\x00\x7f", "unnamed file"),
    ],
)
def test_display_name_is_safe(filename: str | None, shown: str) -> None:
    assert display_name(filename) == shown


def test_display_name_trims_long_names_keeping_the_extension() -> None:
    shown = display_name("x" * 300 + ".jpeg")
    assert len(shown) <= 60 and shown.endswith("xxx.jpeg") and "…" in shown


def test_every_reason_has_a_message() -> None:
    assert set(REASON_MESSAGES) == set(Reason)
    for template in REASON_MESSAGES.values():
        assert template.startswith("`{name}` ")


# Every Pillow mode, built directly: most cannot come out of an accepted file, but to_rgb must
# still give RGB with the right colour (alpha on the background, 16-bit scaled, X not alpha).
def _img(mode: str, value: object, palette: list[int] | None = None, **info: object) -> Image.Image:
    im = Image.new(mode, (8, 8), value)  # type: ignore[arg-type]
    if palette is not None:
        im.putpalette(palette)
    im.info.update(info)
    return im


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (_img("1", 1), (255, 255, 255)),
        (_img("L", 100), (100, 100, 100)),
        (_img("L", 100, transparency=100), BACKGROUND),
        (_img("LA", (100, 0)), BACKGROUND),
        (_img("LA", (100, 255)), (100, 100, 100)),
        (_img("La", (0, 0)), BACKGROUND),
        (_img("P", 3, transparency=3), BACKGROUND),
        (_img("P", 3, palette=[0, 0, 0] * 3 + [10, 20, 30]), (10, 20, 30)),
        (_img("PA", (3, 0)), BACKGROUND),
        (_img("RGB", (10, 20, 30)), (10, 20, 30)),
        (_img("RGB", (10, 20, 30), transparency=(10, 20, 30)), BACKGROUND),
        (_img("RGBA", (10, 20, 30, 0)), BACKGROUND),
        (_img("RGBA", (10, 20, 30, 255)), (10, 20, 30)),
        (_img("RGBa", (0, 0, 0, 0)), BACKGROUND),
        (_img("RGBX", (10, 20, 30, 0)), (10, 20, 30)),
        (_img("CMYK", (0, 0, 0, 0)), (255, 255, 255)),
        (_img("YCbCr", (128, 128, 128)), (128, 128, 128)),
        (_img("HSV", (0, 0, 200)), (200, 200, 200)),
        (_img("LAB", (0, 128, 128)), None),
        (_img("I", 128 * 257), (128, 128, 128)),
        (_img("I;16", 65535), (255, 255, 255)),
        (_img("I;16", 128 * 257), (128, 128, 128)),
        (_img("I;16B", 64 * 257), (64, 64, 64)),
        (_img("I;16L", 32 * 257), (32, 32, 32)),
        (_img("F", 100.0), (100, 100, 100)),
    ],
    ids=lambda v: getattr(v, "mode", None) or str(v),
)
def test_to_rgb_handles_every_mode(image: Image.Image, expected: tuple[int, ...] | None) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    if expected is not None:
        got = rgb.getpixel((4, 4))
        assert isinstance(got, tuple)
        assert all(abs(a - b) <= 1 for a, b in zip(got, expected, strict=True)), got


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_imageops_exif_transpose(orientation: int) -> None:
    source = encode(quadrants(320, 272, orientation), "PNG", exif=exif_bytes(orientation))
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(source))).convert("RGB")
    photo = normalize_photo(source, "o.png", LIMITS)
    ours = Image.open(io.BytesIO(photo.data))
    assert ours.size == reference.size
    assert ours.tobytes() == reference.tobytes()


def test_malformed_variants_only_ever_raise_invalid_photo() -> None:
    """Truncations and byte flips of valid files of every accepted format: a small fuzzer."""
    rng = random.Random(1234)
    variants: list[tuple[str, dict[str, object]]] = [
        ("JPEG", {"exif": exif_bytes(6, gps=True)}),
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"lossless": True}),
        ("HEIF", {}),
    ]
    seeds = [encode(quadrants(300, 280, 7), fmt, **opts) for fmt, opts in variants]
    outcomes: dict[str, int] = {}
    for seed in seeds:
        for _ in range(25):
            data = bytearray(seed)
            if rng.random() < 0.4:
                del data[rng.randrange(1, len(data)) :]
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                normalize_photo(bytes(data), "fuzz.bin", LIMITS)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except InvalidPhoto as exc:
                outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
    # Both kinds of outcome happen, so the mutations really reach the decoders.
    assert outcomes.get("ok", 0) > 0 and outcomes.get("corrupt", 0) > 0, outcomes


def test_bombs_allocate_little_python_memory() -> None:
    """tracemalloc sees Python-side allocations only (Pillow's pixel buffers come from C malloc
    and are invisible to it); the RSS test below covers those."""
    tracemalloc.start()
    try:
        for case in BOMBS:
            tracemalloc.reset_peak()
            with pytest.raises(InvalidPhoto):
                normalize_photo(case.data, case.filename, LIMITS)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 2 * len(case.data) + 4_000_000, (case.name, peak)
    finally:
        tracemalloc.stop()


# Runs in a fresh interpreter. VmHWM (peak RSS of this address space) rather than ru_maxrss,
# which Linux carries over from the forking parent (pytest, already large) across exec.
# Writing 5 to clear_refs resets VmHWM, so each window measures its own peak.
_RSS_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from bot.config import PhotoLimits
    from bot.errors import InvalidPhoto
    from bot.services.photo_intake import normalize_photo

    def status_mb(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    def window(work):
        start = status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        work()
        return status_mb("VmHWM") - start

    limits = PhotoLimits()
    files = [Path(p) for p in sys.argv[1:]]
    bombs = [(p.name, p.read_bytes()) for p in files[:-2]]
    big_jpeg, control = files[-2].read_bytes(), files[-1].read_bytes()
    reasons = []

    def refuse_bombs():
        for name, data in bombs:
            try:
                normalize_photo(data, name, limits)
                reasons.append(None)
            except InvalidPhoto as exc:
                reasons.append(exc.reason)

    result = {
        "bombs_mb": window(refuse_bombs),
        "big_jpeg_mb": window(lambda: normalize_photo(big_jpeg, "big.jpg", limits)),
        "control_mb": window(lambda: normalize_photo(control, "control.png", limits)),
    }
    print(json.dumps({"reasons": reasons, **result}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_peak_memory_stays_bounded(tmp_path: Path) -> None:
    """Peak RSS of a fresh interpreter barely moves while the bombs (up to 10^10 pixels) are
    refused; a 50-megapixel JPEG is decoded at 1/4 scale (~3 MB, not 50); one allowed
    23-megapixel PNG decode (the control) visibly moves it, so the measurement is sensitive
    enough to have caught a decoded bomb or a full-size JPEG decode."""
    paths = []
    for case in BOMBS:
        paths.append(tmp_path / f"{case.name}.bin")
        paths[-1].write_bytes(case.data)
    big_jpeg = tmp_path / "big.jpg"
    big_jpeg.write_bytes(encode(Image.new("L", (8192, 6144), 128), "JPEG"))
    control = tmp_path / "control.png"
    control.write_bytes(raw_png(4800, 4800, 8, 0, zlib.compress(bytes(4801 * 4800), 1)))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, *map(str, paths), str(big_jpeg), str(control)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["reasons"] == ["too_many_pixels"] * len(BOMBS)
    assert result["bombs_mb"] < 20, result
    assert result["big_jpeg_mb"] < 25, result
    assert result["control_mb"] > 20, result


def test_png_bomb_builder_really_builds_a_bomb() -> None:
    """The bomb is small on disk and its header really claims the size (so the refusal above
    is about pixels, not a malformed file)."""
    data = png_bomb(20_000, 20_000)
    assert len(data) < 200_000
    assert data[12:16] == b"IHDR" and data[16:24] == (20_000).to_bytes(4, "big") * 2
    assert zlib.crc32(data[12:29]).to_bytes(4, "big") == data[29:33]


def test_shipped_sample_photos_pass_intake() -> None:
    """The demo's samples (bot/assets/samples, package data) are real, distinct, accepted."""
    samples = files("bot") / "assets" / "samples"
    names = sorted(p.name for p in samples.iterdir() if p.name.endswith(".jpg"))
    assert names == ["cat-1.jpg", "person-1.jpg", "person-2.jpg"]
    results = check_batch([(n, (samples / n).read_bytes()) for n in names], LIMITS)
    for name, result in zip(names, results, strict=True):
        assert isinstance(result, NormalizedPhoto), result
        assert len((samples / name).read_bytes()) < 100 * 1024
        assert_clean(result, LIMITS)
