"""What every benchmark shares: arguments, the machine's description, sample photos, timing
helpers, and writing results (one JSON document per profile and device, plus a Markdown
summary regenerated from it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image, ImageEnhance, ImageOps

from bench.machine import cpu_model, package_version, ram_gib

logger = logging.getLogger(__name__)

T = TypeVar("T")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FORMAT = 1
# Render size and steps for large models on a CPU (SD1.5 at 512 px takes minutes per image).
CPU_RENDER_SIZE = 128
CPU_RENDER_STEPS = 2


# -- arguments --------------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", default="tiny", help="engine profile (tiny, sd15-shaped, ...)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cuda", "cpu"), help="where to run"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="folder for engine-<profile>-<device>.*"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smallest settings (seconds on tiny): checks that the benchmark runs, not speed",
    )
    parser.add_argument("--photos", type=int, default=5, help="photos of the avatar (1..8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the engine's progress")
    return parser


@dataclass
class BenchContext:
    """What one benchmark run is about: the profile on the device it really runs on."""

    profile: Any  # engine.profiles.Profile
    device: str
    settings: Any  # engine.config.EngineSettings
    out: Path
    quick: bool
    machine: dict[str, Any]
    photos: list[Image.Image] = field(default_factory=list)


def prepare_context(args: argparse.Namespace, **settings_overrides: Any) -> BenchContext:
    """Resolve the device (a profile may pin one: tiny runs on the CPU), apply ``--threads``,
    describe the machine, load the sample photos."""
    from engine.profiles import resolve_profile

    if args.threads:
        torch.set_num_threads(args.threads)
    requested = resolve_device(args.device)
    profile = resolve_profile(engine_settings(args.profile, requested))
    device = profile.device or requested
    return BenchContext(
        profile=profile,
        device=device,
        settings=engine_settings(args.profile, device, **settings_overrides),
        out=args.out,
        quick=args.quick,
        machine=machine_info(device),
        photos=sample_photos(args.photos),
    )


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def resolve_device(name: str) -> str:
    """``auto`` → cuda when available, else cpu. Asking for cuda without one fails loudly."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    return name


def render_defaults(profile: Any, device: str) -> tuple[int, int, int]:
    """(image side, steps, timed repeats) for render benchmarks: the profile's own on a GPU;
    on a CPU small and few for the large models, so a run takes minutes, not hours."""
    if device != "cpu":
        return profile.default_size, profile.default_steps, 10
    if not is_large_on_cpu(profile, device):
        return profile.default_size, profile.default_steps, 15
    return CPU_RENDER_SIZE, CPU_RENDER_STEPS, 3


def is_large_on_cpu(profile: Any, device: str) -> bool:
    """A model too big to render at its own size in a CPU benchmark (SD1.5-sized)."""
    return device == "cpu" and profile.default_size > CPU_RENDER_SIZE


def engine_settings(profile: str, device: str, **overrides: Any) -> Any:
    from engine.config import EngineSettings

    return EngineSettings(profile=profile, device=device, offline=True, **overrides)


# -- the machine ------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": ram_gib(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": package_version("diffusers"),
        "transformers": package_version("transformers"),
        "peft": package_version("peft"),
        "device": device,
    }
    try:
        load = os.getloadavg()
        # The machine may be shared: the load when the run started says how noisy it was.
        info["load_average_1m"] = round(load[0], 2)
    except OSError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 1024**3, 1)
        info["cuda"] = torch.version.cuda
    return info


# -- inputs -----------------------------------------------------------------------------------


def sample_photos(count: int = 5) -> list[Image.Image]:
    """``count`` distinct photos of one person: scikit-image's astronaut (a real photo, a
    real face for the detector) mirrored, cropped, rotated, rescaled and re-exposed."""
    from skimage import data

    base = Image.fromarray(data.astronaut())
    variants = [
        base,
        ImageOps.mirror(base),
        base.crop((40, 10, 460, 430)).resize((512, 512), Image.Resampling.BICUBIC),
        ImageEnhance.Brightness(base).enhance(1.15).rotate(6, Image.Resampling.BICUBIC),
        ImageEnhance.Contrast(base.resize((384, 384), Image.Resampling.BICUBIC)).enhance(0.85),
        ImageOps.mirror(base.crop((20, 0, 492, 472))),
        ImageEnhance.Color(base).enhance(0.6),
        base.rotate(-5, Image.Resampling.BICUBIC),
    ]
    if count > len(variants):
        raise ValueError(f"at most {len(variants)} sample photos")
    return variants[:count]


# -- timing -----------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], device: str) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds, device work included."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return value, time.perf_counter() - start


def summary(times: Sequence[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
        "all_s": [round(t, 6) for t in times],
    }


# -- results ----------------------------------------------------------------------------------


def stats_row(stats: dict[str, Any]) -> dict[str, Any]:
    """A table row's timing columns from ``summary``'s statistics."""
    return {"median_s": stats["median_s"], "min_s": stats["min_s"], "max_s": stats["max_s"]}


def max_pixel_difference(a: Any, b: Any) -> int | None:
    """The largest difference of any pixel channel between two images (None if one is
    missing): 0 means the same image."""
    if a is None or b is None:
        return None
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def result_stem(profile: str, device: str) -> str:
    return f"engine-{profile}-{device}"


def record(out_dir: Path, profile: str, device: str, name: str, section: dict[str, Any]) -> Path:
    """Merge ``section`` as ``name`` into ``engine-<profile>-<device>.json`` (other sections
    stay: benchmarks run separately) and regenerate the Markdown summary. Returns the JSON
    path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result_stem(profile, device)}.json"
    document: dict[str, Any] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("%s was not valid JSON: starting it afresh", path)
    if document.get("format") != RESULTS_FORMAT:
        document = {}
    section = dict(section)
    section["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    section.setdefault("machine", machine_info(device))
    document.update(
        {
            "format": RESULTS_FORMAT,
            "profile": profile,
            "device": device,
        }
    )
    document.setdefault("benchmarks", {})[name] = section
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=_jsonable) + "\n")
    path.with_suffix(".md").write_text(render_markdown(document))
    return path


def headline_text(path: Path, name: str) -> str:
    """One line per headline figure of benchmark ``name`` in the results at ``path``."""
    document = json.loads(path.read_text())
    section = document["benchmarks"][name]
    lines = [f"{name} ({document['profile']}, {document['device']}) → {path}"]
    for head in section.get("headline", []):
        target = f" (target {head['target']})" if head.get("target") else ""
        lines.append(f"  {head['figure']}: {_fmt(head['ratio'])}{target}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def render_markdown(document: dict[str, Any]) -> str:
    """A readable summary: the headline ratios, then each benchmark's settings and figures."""
    profile, device = document.get("profile", "?"), document.get("device", "?")
    benchmarks: dict[str, Any] = document.get("benchmarks", {})
    lines = [
        f"# Engine benchmarks: `{profile}` on {device}",
        "",
        "Generated from the JSON next to this file by `bench/common.py`; each ratio is measured "
        "inside one run (both sides on the same machine, model and device).",
        "",
        "| benchmark | figure | ratio | target | met | measured |",
        "|---|---|---|---|---|---|",
    ]
    for name, section in benchmarks.items():
        for head in section.get("headline", []):
            met = head.get("meets_target")
            lines.append(
                f"| {name} | {head['figure']} | {_fmt(head['ratio'])} | "
                f"{head.get('target', '')} | {'' if met is None else ('yes' if met else 'no')} | "
                f"{section.get('measured_at', '')} |"
            )
    for name, section in benchmarks.items():
        lines += ["", f"## {name}", ""]
        if section.get("description"):
            lines += [section["description"], ""]
        for note in section.get("notes", []):
            lines.append(f"- {note}")
        if section.get("notes"):
            lines.append("")
        rows = section.get("table")
        if rows:
            columns = list(rows[0])
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in rows:
                lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
            lines.append("")
        settings = section.get("settings", {})
        if settings:
            lines.append(
                "Settings: " + ", ".join(f"`{k}`={_fmt(v)}" for k, v in settings.items()) + "."
            )
            lines.append("")
        machine = section.get("machine", {})
        if machine:
            lines.append(
                "Machine: "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in machine.items() if v is not None)
                + "."
            )
    return "\n".join(lines).rstrip() + "\n"
