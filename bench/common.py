"""The one benchmark harness: arguments, the machine's description, sample photos, the render
request every engine benchmark times, timing (wall and process CPU time), alternating pairs,
the engine-vs-bare overhead figures, headline ratios, running a benchmark on an engine, and
writing results (one JSON document per profile and device, plus a Markdown summary
regenerated from it). Each benchmark module keeps only its measurement function."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from PIL import Image, ImageEnhance, ImageOps

from bench.machine import machine_basics, package_version

logger = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FORMAT = 1
# Render size and steps for large models on a CPU (SD1.5 at 512 px takes minutes per image).
CPU_RENDER_SIZE = 128
CPU_RENDER_STEPS = 2
# What the SD1.5-style render benchmarks ask for (engine_overhead, batching, bench.gpu).
PROMPT = "a portrait photo of a person, studio light"
IDENTITY_STRENGTH = 0.7


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


def add_render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=None, help="image side in px")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=6.0, help="CFG scale (>1: CFG on)")
    parser.add_argument("--scheduler", default="dpmpp_2m")
    add_gather_window_arg(parser)


def add_gather_window_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gather-window-ms",
        type=int,
        default=None,
        help="the engine's batching window (default: EngineSettings' default)",
    )


def engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The engine settings the render arguments change (only what was given)."""
    if args.gather_window_ms is None:
        return {}
    return {"gather_window_ms": args.gather_window_ms}


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
        **machine_basics(),
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


@dataclass(frozen=True)
class Timed(Generic[T]):
    """What a timed call returned, its wall time and the process's CPU time for it (CPU time
    counts work done, not time spent descheduled on a shared machine)."""

    value: T
    wall_s: float
    cpu_s: float


def timed(fn: Callable[[], T], device: str) -> Timed[T]:
    """``fn()`` timed, device work included."""
    synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    value = fn()
    synchronize(device)
    return Timed(value, time.perf_counter() - started, time.process_time() - cpu_started)


async def timed_async(fn: Callable[[], Awaitable[T]], device: str) -> Timed[T]:
    """``await fn()`` timed, device work included."""
    synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    value = await fn()
    synchronize(device)
    return Timed(value, time.perf_counter() - started, time.process_time() - cpu_started)


@dataclass
class Pairs(Generic[T, U]):
    """The samples of two sides measured in alternating pairs (and of a side run after each
    pair, when there is one)."""

    first: list[Timed[T]] = field(default_factory=list)
    second: list[Timed[U]] = field(default_factory=list)
    after: list[Timed[Any]] = field(default_factory=list)


async def alternate(
    repeats: int,
    first: Callable[[], Awaitable[Timed[T]]],
    second: Callable[[], Awaitable[Timed[U]]],
    after: Callable[[], Awaitable[Timed[Any]]] | None = None,
) -> Pairs[T, U]:
    """``repeats`` pairs of both sides, alternating which goes first: drift in a shared
    machine's load hits both sides alike. ``after`` (information only) runs after each pair."""
    pairs: Pairs[T, U] = Pairs()
    for i in range(repeats):
        if i % 2 == 0:
            pairs.first.append(await first())
            pairs.second.append(await second())
        else:
            pairs.second.append(await second())
            pairs.first.append(await first())
        if after is not None:
            pairs.after.append(await after())
    return pairs


def summary(times: Sequence[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
        "all_s": [round(t, 6) for t in times],
    }


# -- ratios -----------------------------------------------------------------------------------


def headline(
    figure: str, ratio: float, target: str | None = None, meets: bool | None = None
) -> dict[str, Any]:
    """One headline figure; with a target, whether it was met (None: not judged here)."""
    head: dict[str, Any] = {"figure": figure, "ratio": ratio}
    if target is not None:
        head.update({"target": target, "meets_target": meets})
    return head


@dataclass(frozen=True)
class Overhead:
    """``Engine.render`` against a bare diffusers call, from alternating pairs: the figures
    every engine-overhead benchmark reports. Engine samples hold the ``RenderResult``; its
    ``queued`` timing is the worker's gather-window wait."""

    engine: dict[str, Any]
    queued: dict[str, Any]
    without_wait: dict[str, Any]
    bare: dict[str, Any]
    engine_cpu: dict[str, Any]
    bare_cpu: dict[str, Any]
    ratio: float
    paired: float
    ratio_without_wait: float
    cpu_ratio: float

    @classmethod
    def of(cls, engine: Sequence[Timed[Any]], bare: Sequence[Timed[Any]]) -> Overhead:
        engine_t = [s.wall_s for s in engine]
        bare_t = [s.wall_s for s in bare]
        queued = [float(s.value.timings["queued"]) for s in engine]
        engine_s, bare_s = summary(engine_t), summary(bare_t)
        without_wait = summary([t - q for t, q in zip(engine_t, queued, strict=True)])
        engine_cpu, bare_cpu = summary([s.cpu_s for s in engine]), summary([s.cpu_s for s in bare])
        return cls(
            engine=engine_s,
            queued=summary(queued),
            without_wait=without_wait,
            bare=bare_s,
            engine_cpu=engine_cpu,
            bare_cpu=bare_cpu,
            ratio=engine_s["median_s"] / bare_s["median_s"],
            # Pairs ran back to back: their ratio cancels slow drift in the machine's load.
            paired=statistics.median(e / b for e, b in zip(engine_t, bare_t, strict=True)),
            ratio_without_wait=without_wait["median_s"] / bare_s["median_s"],
            cpu_ratio=engine_cpu["median_s"] / bare_cpu["median_s"],
        )

    def headline(
        self, figure: str, device: str, slowdown: float, first_target: str | None = None
    ) -> list[dict[str, Any]]:
        """The ratio of the medians (``figure``), of the pairs, without the gather-window wait
        and, on a CPU, of CPU times, each against ``1 + slowdown``."""
        target = f"<= {1 + slowdown:g}"
        figures = [
            (figure, self.ratio),
            ("same, median of the per-pair ratios", self.paired),
            ("same, without the worker's gather-window wait", self.ratio_without_wait),
        ]
        if device == "cpu":
            # CPU time counts work done, not time spent descheduled by other processes.
            figures.append(("same, process CPU time instead of wall time", self.cpu_ratio))
        return [
            headline(
                name,
                ratio,
                first_target if i == 0 and first_target else target,
                ratio <= 1 + slowdown,
            )
            for i, (name, ratio) in enumerate(figures)
        ]

    def table(self, bare_rows: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The timing rows: the engine's, then ``bare_rows`` (what, statistics), then CPU."""
        rows = [
            ("Engine.render", self.engine),
            ("  of which queued (gather window)", self.queued),
            ("  without the queue wait", self.without_wait),
            *bare_rows,
            ("Engine.render, CPU time", self.engine_cpu),
            ("bare call, CPU time", self.bare_cpu),
        ]
        return [{"what": what, **stats_row(stats)} for what, stats in rows]

    def ratios(self) -> dict[str, float]:
        return {
            "ratio": self.ratio,
            "ratio_without_gather_wait": self.ratio_without_wait,
            "paired_ratio_median": self.paired,
            "cpu_time_ratio": self.cpu_ratio,
        }

    def notes(self, repeats: int, window_ms: int) -> list[str]:
        return [
            f"{repeats} alternating engine/bare pairs after one warm-up of each; medians.",
            f"A lone request waits up to the gather window ({window_ms} ms) for batch mates: "
            f"the median 'queued' time was {self.queued['median_s'] * 1000:.1f} ms.",
        ]


# -- running ----------------------------------------------------------------------------------

# A render benchmark's measurement: (engine, the photos' features, context, arguments) → its
# results section.
Measure = Callable[[Any, Any, BenchContext, argparse.Namespace], Awaitable[dict[str, Any]]]


async def run_on_engine(
    args: argparse.Namespace,
    name: str,
    measure: Measure,
    personalizer: str | None = None,
    stem: Callable[[str, str], str] | None = None,
    **overrides: Any,
) -> Path:
    """A render benchmark's run: the context (engine settings from the render arguments and
    ``overrides``), a fresh engine with the sample photos encoded as a person (by
    ``personalizer``, else the engine's default), ``measure``, and its section recorded (in
    ``stem(profile, device)``'s file when given). Returns the results path."""
    from engine import create_engine

    ctx = prepare_context(args, **engine_overrides(args), **overrides)
    engine = await create_engine(ctx.settings)
    try:
        extra = (personalizer,) if personalizer else ()
        features = await engine.encode(ctx.photos, "person", *extra)
        section = await measure(engine, features, ctx, args)
    finally:
        await engine.aclose()
    profile = ctx.profile.name
    file_stem = stem(profile, ctx.device) if stem else None
    return record(ctx.out, profile, ctx.device, name, section, file_stem)


def render_settings_record(
    ctx: BenchContext, engine: Any, size: int, steps: int, guidance: float, **more: Any
) -> dict[str, Any]:
    """A render benchmark's ``settings``: what every one records, ``more`` in between."""
    return {
        "profile": ctx.profile.name,
        "device": ctx.device,
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "size": size,
        "steps": steps,
        "guidance": guidance,
        **more,
        "torch_threads": torch.get_num_threads(),
        "quick": ctx.quick,
    }


def run_main(
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, Path]],
    name: str,
    argv: list[str] | None = None,
) -> None:
    """A benchmark's command line: parse, log, run, print the headline figures."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    path = asyncio.run(run(args))
    print(headline_text(path, name))


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


def record(
    out_dir: Path,
    profile: str,
    device: str,
    name: str,
    section: dict[str, Any],
    stem: str | None = None,
) -> Path:
    """Merge ``section`` as ``name`` into ``<stem>.json`` (default
    ``engine-<profile>-<device>``; other sections stay: benchmarks run separately) and
    regenerate the Markdown summary. Returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem or result_stem(profile, device)}.json"
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
