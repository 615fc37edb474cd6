"""Peak memory of decoding an upload, per format and size, through the real intake path.

Each file is decoded and normalised by ``bot.services.photo_intake.normalize_photo`` (TIFF, which
intake refuses on its magic bytes, through the same pipeline past the sniff) in a fresh
interpreter, with every pixel and memory limit lifted; the figure is VmHWM (peak RSS, reset by
writing 5 to /proc/self/clear_refs) minus VmRSS just before the call. ``ru_maxrss`` would not
do: Linux carries the forking parent's peak over exec. Each file is also refused with the
default limits, in the same process, to show that a refusal on the header costs nothing.

From the peaks: bytes of peak memory per counted pixel of each kind (a baseline JPEG is decoded
at the ``Image.draft`` scale, so its pixels are the drafted ones), next to
``bot/services/decode_budget.py``'s estimate (``FIXED_BYTES`` + ``BYTES_PER_PIXEL`` × pixels,
which must stay above every measured peak), and the verdict of the default
``max_decode_bytes``.

    python -m bench.decode_budget                 # ~5 minutes on 2 cores
    python -m bench.decode_budget --quick --out /tmp/bench   # 1-2 MP only, seconds
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import textwrap
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from bench.machine import machine_basics, package_version
from bot.config import PhotoLimits
from bot.services import photo_intake  # noqa: F401  (registers pillow-heif: HEIC saving too)
from bot.services.decode_budget import BYTES_PER_PIXEL, FIXED_BYTES, DecodeKind

NAME = "decode_budget"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MEGAPIXELS = (4, 12, 24)
QUICK_MEGAPIXELS = (1, 2)

Builder = Callable[[int, int], bytes]


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _texture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth gradient: cheap to build at any size, not one colour (a real photo's decoder
    works the same on it; the peak is about buffers, not content)."""
    grad = Image.linear_gradient("L").resize((width, height))
    if mode == "L":
        return grad
    rgb = Image.merge("RGB", (grad, grad.transpose(Image.Transpose.ROTATE_180), grad))
    if mode == "RGBA":
        rgb.putalpha(grad)
    return rgb


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + kind + body + crc


def _raw_png(width: int, height: int, depth: int, colour_type: int, channels: int) -> bytes:
    """A PNG of mid-grey rows, compressed row block by row block (16-bit PNGs: Pillow writes
    only greyscale ones itself)."""
    row = b"\x00" + bytes([0x80, 0x40]) * (width * channels * depth // 16)
    comp = zlib.compressobj(6)
    parts, done = [], 0
    while done < height:
        n = min(256, height - done)
        parts.append(comp.compress(row * n))
        done += n
    parts.append(comp.flush())
    ihdr = (
        width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([depth, colour_type, 0, 0, 0])
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def _palette(width: int, height: int, transparent: bool) -> bytes:
    image = _texture(width, height, "L").convert("P")
    options = {"transparency": 0} if transparent else {}
    return _save(image, "PNG", compress_level=1, **options)


def _colour_gif(width: int, height: int, transparent: bool) -> bytes:
    image = _texture(width, height).quantize(64)
    return _save(image, "GIF", **({"transparency": 0} if transparent else {}))


def _gif_frames(width: int, height: int, frames: int) -> bytes:
    first = _texture(width, height, "L").convert("P")
    rest = [first.point(lambda v, k=k: (v + k) % 256) for k in range(1, frames)]
    return _save(first, "GIF", save_all=True, append_images=rest, duration=40)


CASES: dict[str, tuple[DecodeKind, Builder]] = {
    "jpeg baseline": (DecodeKind.JPEG, lambda w, h: _save(_texture(w, h), "JPEG", quality=90)),
    "jpeg progressive": (
        DecodeKind.JPEG_PROGRESSIVE,
        lambda w, h: _save(_texture(w, h), "JPEG", quality=90, progressive=True),
    ),
    "png grey 8-bit": (
        DecodeKind.PNG,
        lambda w, h: _save(_texture(w, h, "L"), "PNG", compress_level=1),
    ),
    "png rgb 8-bit": (DecodeKind.PNG, lambda w, h: _save(_texture(w, h), "PNG", compress_level=1)),
    "png rgba 8-bit": (
        DecodeKind.PNG_ALPHA,
        lambda w, h: _save(_texture(w, h, "RGBA"), "PNG", compress_level=1),
    ),
    "png grey 16-bit": (DecodeKind.PNG_16_GREY, lambda w, h: _raw_png(w, h, 16, 0, 1)),
    "png rgb 16-bit": (DecodeKind.PNG, lambda w, h: _raw_png(w, h, 16, 2, 3)),
    "png rgba 16-bit": (DecodeKind.PNG_ALPHA, lambda w, h: _raw_png(w, h, 16, 6, 4)),
    "png palette": (DecodeKind.PALETTE, lambda w, h: _palette(w, h, False)),
    "png palette + tRNS": (DecodeKind.PALETTE_ALPHA, lambda w, h: _palette(w, h, True)),
    "webp lossy": (
        DecodeKind.WEBP_LOSSY,
        lambda w, h: _save(_texture(w, h), "WEBP", quality=80, method=0),
    ),
    "webp lossy rgba": (
        DecodeKind.WEBP_LOSSY,
        lambda w, h: _save(_texture(w, h, "RGBA"), "WEBP", quality=80, method=0),
    ),
    "webp lossless": (
        DecodeKind.WEBP_LOSSLESS,
        lambda w, h: _save(_texture(w, h), "WEBP", lossless=True, quality=0, method=0),
    ),
    "heic": (DecodeKind.HEIF, lambda w, h: _save(_texture(w, h), "HEIF", quality=50)),
    "gif grey": (DecodeKind.PALETTE, lambda w, h: _save(_texture(w, h, "L"), "GIF")),
    "gif colour": (DecodeKind.PALETTE, lambda w, h: _colour_gif(w, h, False)),
    "gif colour + transparency": (DecodeKind.PALETTE_ALPHA, lambda w, h: _colour_gif(w, h, True)),
    "tiff raw": (DecodeKind.TIFF, lambda w, h: _save(_texture(w, h), "TIFF")),
    "tiff deflate": (
        DecodeKind.TIFF,
        lambda w, h: _save(_texture(w, h), "TIFF", compression="tiff_adobe_deflate"),
    ),
}
# Refused on the header whatever their pixels cost: what the refusal itself costs.
ANIMATED: dict[str, Builder] = {
    "gif 64 frames": lambda w, h: _gif_frames(w, h, 64),
}

_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from bot.config import PhotoLimits
    from bot.errors import InvalidPhoto
    from bot.services import decode_budget, photo_intake

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def window(work):
        start = status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        try:
            outcome = work()
        except InvalidPhoto as exc:
            outcome = exc.reason
        return outcome, status("VmHWM") - start

    path, fmt, warm = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    data = path.read_bytes()
    lifted = PhotoLimits(max_bytes=1 << 40, max_pixels=1 << 40, max_jpeg_pixels=1 << 40,
                         max_decode_bytes=1 << 40, min_side=16)
    # Load the decoder's code and caches first, so that no window counts them.
    try:
        if fmt == "TIFF":
            photo_intake._normalize(warm.read_bytes(), warm.name, fmt, lifted)
        else:
            photo_intake.normalize_photo(warm.read_bytes(), warm.name, lifted)
    except InvalidPhoto:  # an animated warm-up: refused after its header, as intended
        pass

    def refuse():
        photo_intake.normalize_photo(data, path.name, PhotoLimits())
        return "accepted"

    def decode():
        # TIFF is refused on its magic bytes; past the sniff it takes the same pipeline.
        if fmt == "TIFF":
            photo = photo_intake._normalize(data, path.name, fmt, lifted)
        else:
            photo = photo_intake.normalize_photo(data, path.name, lifted)
        return [photo.width, photo.height]

    def header():
        from PIL import Image
        import io
        with Image.open(io.BytesIO(data)) as image:
            kind, pixels = decode_budget.decode_plan(image, image.format, data,
                                                     lifted.max_stored_side)
            return [str(kind), pixels]

    default_outcome, default_peak = window(refuse)
    (kind, counted), _ = window(header)
    outcome, peak = window(decode)
    print(json.dumps({"kind": kind, "counted_pixels": counted, "outcome": outcome,
                      "peak_bytes": peak, "default_outcome": default_outcome,
                      "default_peak_bytes": default_peak}))
    """
)


def probe(path: Path, fmt: str, warm: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), fmt, str(warm)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _size(megapixels: float) -> tuple[int, int]:
    """4:3, like a phone photo."""
    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    return int(height * 4 / 3), height


def measure(megapixels: tuple[float, ...], workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for name, (kind, build) in CASES.items():
        for mp in megapixels:
            rows.append(_one(name, kind, build, mp, workdir))
    for name, build in ANIMATED.items():
        rows.append(_one(name, DecodeKind.PALETTE, build, min(megapixels), workdir))
    return rows


def _one(name: str, kind: DecodeKind, build: Builder, mp: float, workdir: Path) -> dict[str, Any]:
    width, height = _size(mp)
    data = build(width, height)
    fmt = "TIFF" if kind is DecodeKind.TIFF else ""
    path = workdir / f"{name.replace(' ', '_').replace('+', '')}-{mp}mp"
    path.write_bytes(data)
    warm = workdir / "warm-up"
    warm.write_bytes(build(320, 240))
    try:
        result = probe(path, fmt, warm)
    finally:
        path.unlink()
    counted = result["counted_pixels"]
    estimate = FIXED_BYTES + BYTES_PER_PIXEL[DecodeKind(result["kind"])] * counted
    if result["kind"] != kind:
        raise AssertionError(f"{name}: intake took it for {result['kind']}, not {kind}")
    row = {
        "case": name,
        "kind": result["kind"],
        "width": width,
        "height": height,
        "file_bytes": len(data),
        "counted_pixels": counted,
        "outcome": result["outcome"],
        "peak_mb": round(result["peak_bytes"] / 2**20, 1),
        "bytes_per_pixel": round(result["peak_bytes"] / counted, 2),
        "estimate_mb": round(estimate / 2**20, 1),
        "estimate_covers_peak": estimate >= result["peak_bytes"],
        "default_limits_outcome": result["default_outcome"],
        "default_limits_peak_mb": round(result["default_peak_bytes"] / 2**20, 1),
    }
    print(json.dumps(row), file=sys.stderr)
    return row


def per_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind: the marginal bytes per counted pixel (slope between the smallest and largest
    file of each case), the largest plain ratio, the estimate in use, and whether the estimate
    (FIXED_BYTES + it × pixels) covered every measured peak."""
    out: dict[str, dict[str, Any]] = {}
    by_case: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["case"] in ANIMATED or not isinstance(row["outcome"], list):
            continue
        by_case.setdefault(row["case"], []).append(row)
        kind = out.setdefault(
            row["kind"], {"slope_max": 0.0, "ratio_max": 0.0, "covers_every_peak": True}
        )
        kind["ratio_max"] = max(kind["ratio_max"], row["bytes_per_pixel"])
        kind["covers_every_peak"] &= row["estimate_covers_peak"]
        kind["estimate"] = BYTES_PER_PIXEL[DecodeKind(row["kind"])]
    for case_rows in by_case.values():
        small, large = case_rows[0], case_rows[-1]
        if large["counted_pixels"] > small["counted_pixels"]:
            slope = (
                (large["peak_mb"] - small["peak_mb"])
                * 2**20
                / (large["counted_pixels"] - small["counted_pixels"])
            )
            kind = out[large["kind"]]
            kind["slope_max"] = round(max(kind["slope_max"], slope), 2)
    return out


def machine_info() -> dict[str, Any]:
    return {
        **machine_basics(),
        "Pillow": package_version("pillow"),
        "pillow-heif": package_version("pillow-heif"),
    }


def render_markdown(doc: dict[str, Any]) -> str:
    limit_mb = doc["max_decode_bytes"] / 2**20
    lines = [
        "# Decode budget: peak memory of intake per format (cpu)",
        "",
        "Generated by `bench/decode_budget.py`. Peak RSS above the interpreter's baseline (VmHWM"
        " after clear_refs) while `normalize_photo` decodes and normalises one file in a fresh"
        " process, every limit lifted; then the same file against the default limits"
        f" (`max_decode_bytes` = {limit_mb:g} MB). Measured {doc['measured_at']} on"
        f" {doc['machine']['cpu_model']}, Pillow {doc['machine']['Pillow']}, pillow-heif"
        f" {doc['machine']['pillow-heif']}.",
        "",
        "## Bytes of peak memory per counted pixel",
        "",
        "Counted pixels: a baseline JPEG's after `Image.draft`, every other kind's full size."
        " Slope: the extra peak per extra pixel between the smallest and the largest file of"
        f" a case; the estimate is {FIXED_BYTES / 2**20:g} MB (`FIXED_BYTES`) plus"
        " `BYTES_PER_PIXEL` × pixels.",
        "",
        "| kind | largest slope | largest peak ÷ pixels | `BYTES_PER_PIXEL` | covers every peak |",
        "|---|---|---|---|---|",
    ]
    for kind, f in doc["per_kind"].items():
        covers = "yes" if f["covers_every_peak"] else "**no**"
        lines.append(
            f"| {kind} | {f['slope_max']:.2f} | {f['ratio_max']:.2f} | {f['estimate']:g}"
            f" | {covers} |"
        )
    lines += [
        "",
        "## Every file",
        "",
        "| case | size | file | counted px | peak MB | B/px | estimate MB | default limits"
        " | refusal peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        verdict = "accepted" if isinstance(r["default_limits_outcome"], list) else None
        lines.append(
            f"| {r['case']} | {r['width']}×{r['height']} | {r['file_bytes'] / 1024:.0f} KB"
            f" | {r['counted_pixels'] / 1e6:.1f} MP | {r['peak_mb']} | {r['bytes_per_pixel']}"
            f" | {r['estimate_mb']} | {verdict or r['default_limits_outcome']}"
            f" | {r['default_limits_peak_mb']} |"
        )
    lines += ["", *(f"- {note}" for note in doc["notes"]), ""]
    return "\n".join(lines)


NOTES = [
    "A baseline JPEG is decoded at the Image.draft scale (1/2 to 1/8 of each side), so its "
    "bytes per pixel are per drafted pixel; a progressive one buffers every coefficient of the "
    "full image and is counted at full size.",
    "Test images are smooth gradients: decoders allocate by size, not content (a photo's "
    "entropy changes the file size and the time, not the buffers).",
    "TIFF is not accepted by intake (refused on its magic bytes, at no cost); it is measured "
    "through the same pipeline past the sniff, for reference.",
    "Animated files (GIF, APNG, WebP) are refused after the header: the many-frame GIF row "
    "shows what reading its header and refusing it costs; no frame is decoded.",
    "The refusal peak column is the same file against the default limits: a file refused on its "
    "header (too_costly_to_decode, too_many_pixels) costs well under its decode.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 MP only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        print("decode_budget: needs Linux (/proc/self/clear_refs)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(QUICK_MEGAPIXELS if args.quick else MEGAPIXELS, Path(tmp))
    doc = {
        "format": 1,
        "benchmark": NAME,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "max_decode_bytes": PhotoLimits().max_decode_bytes,
        "per_kind": per_kind(rows),
        "rows": rows,
        "notes": NOTES,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "decode-budget-cpu"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(render_markdown(doc))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
