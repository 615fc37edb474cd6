"""The GPU benchmark's plan (bench/gpu.py): its options, the sizes and repeats of a GPU run or
of ``--quick`` on the CPU, what each part needs of the deadline, and the device's description.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR
from bench.gpu_report import SECTION_TITLES, device_slug, peak_tflops
from bench.machine import cpu_model, package_version


@dataclass(frozen=True)
class Plan:
    """Every size, count and repeat of one run (GPU defaults, or --quick's on the CPU)."""

    quick: bool
    device: str
    profile: str
    size: int
    steps: int
    batches: tuple[int, ...]
    # The compiled engine's order: each new batch size compiles on its first render (unless
    # engine_warmup), so the most telling sizes go first in case the deadline stops the rest.
    compiled_batches: tuple[int, ...]
    repeats: int
    max_batch: int
    buckets: tuple[int, ...]
    concurrency: int
    batch_rounds: int
    overhead_repeats: int
    create_repeats: int
    photos: int
    dreambooth_steps: int
    dreambooth_warmup: int
    dreambooth_target: int
    bot_sequential: int
    bot_burst: int
    flux_profile: str
    flux_size: int
    flux_steps: int
    flux_batches: tuple[int, ...]
    dtype: str
    compile_mode: str
    compile_vae: str
    compile_on_cpu: bool
    # The engine's own warm-up (every bucket × every personalizer at start) for compiled
    # engines; off: each batch size compiles on its first, untimed render here.
    engine_warmup: bool
    # Seconds one new batch shape takes to compile (the deadline's guess, per new size).
    compile_estimate_s: float


SECTIONS = tuple(SECTION_TITLES)
# Eight minutes, less 30 s for a part that outruns its estimate (a compile cannot be cut).
DEFAULT_DEADLINE_S = 450.0
QUICK_DEADLINE_S = 300.0
# Seconds a part needs before it may start, (GPU, quick): a part is skipped, with a note, when
# less is left. sd15-shaped builds take ~20 s (random weights made on the CPU); a compiled
# part's first batch size compiles (~1 min for SD1.5's UNet and VAE decoder on an H100).
ESTIMATES: dict[str, tuple[float, float]] = {
    "c.dreambooth": (45, 2),
    "engine.sd15 eager": (40, 2),
    "a.eager": (40, 2),
    "b.eager": (35, 2),
    "d.eager": (30, 2),
    "c.create": (20, 2),
    "e.eager": (45, 5),
    "engine.sd15 compiled": (40, 2),
    "a.compiled": (90, 30),
    "b.compiled": (25, 2),
    "engine.flux eager": (60, 2),
    "f.eager": (30, 2),
    "engine.flux compiled": (60, 2),
    "f.compiled": (90, 30),
    # Five rounds of a render, two varies and two upscales to 1024 px (one tiled).
    "g.eager": (45, 5),
}
# With the engine's own warm-up, a compiled build compiles everything first.
WARMUP_BUILD_ESTIMATE_S = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu",
        description="The GPU benchmark: one command, one device, about eight minutes.",
    )
    parser.add_argument("--quick", action="store_true", help="CPU, tiny profiles, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for gpu-<device>.*")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="e.g. a,b,d")
    parser.add_argument("--deadline-s", type=float, default=None, help="global time budget")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16"))
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    parser.add_argument(
        "--compile-vae",
        default="auto",
        choices=("auto", "on", "off"),
        help="the compiled engines' VAE decoder (auto: the engine's choice, on with CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per batch size")
    parser.add_argument(
        "--dreambooth-steps",
        type=int,
        default=None,
        help="DreamBooth-LoRA steps actually timed (default 100 on a GPU, extrapolated to 400; "
        "400: no extrapolation)",
    )
    parser.add_argument(
        "--compile-on-cpu",
        action="store_true",
        help="with --quick: also the compiled cases (a CPU torch.compile costs minutes)",
    )
    parser.add_argument(
        "--engine-warmup",
        action="store_true",
        help="compiled engines compile every bucket for every personalizer at start, as in "
        "production (minutes); default: each batch size compiles on its first, untimed render",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}: choose from {','.join(SECTIONS)}")
    if args.deadline_s is None:
        args.deadline_s = QUICK_DEADLINE_S if args.quick else DEFAULT_DEADLINE_S
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            quick=True,
            device="cpu",
            profile="tiny",
            size=64,
            steps=2,
            batches=(1, 4),
            compiled_batches=(4, 1),
            repeats=args.repeats or 2,
            max_batch=4,
            buckets=(1, 2, 4),
            concurrency=4,
            batch_rounds=1,
            overhead_repeats=2,
            create_repeats=1,
            photos=2,
            dreambooth_steps=3,
            dreambooth_warmup=1,
            dreambooth_target=400,
            bot_sequential=2,
            bot_burst=3,
            flux_profile="tiny-flux2",
            flux_size=64,
            flux_steps=2,
            flux_batches=(1, 2),
            dtype="auto",
            compile_mode=args.compile_mode,
            compile_vae=args.compile_vae,
            compile_on_cpu=args.compile_on_cpu,
            engine_warmup=args.engine_warmup,
            compile_estimate_s=30.0,
        )
    if not torch.cuda.is_available():
        raise SystemExit("python -m bench.gpu needs a CUDA device; on a CPU use --quick")
    return Plan(
        quick=False,
        device="cuda",
        profile="sd15-shaped",
        size=512,
        steps=25,
        batches=(1, 4, 8, 16),
        compiled_batches=(16, 8, 1, 4),
        repeats=args.repeats or 3,
        max_batch=16,
        buckets=(1, 4, 8, 16),
        concurrency=8,
        batch_rounds=2,
        overhead_repeats=5,
        create_repeats=3,
        photos=5,
        dreambooth_steps=args.dreambooth_steps or 100,
        dreambooth_warmup=3,
        dreambooth_target=400,
        bot_sequential=3,
        bot_burst=8,
        flux_profile="flux2-klein-shaped",
        flux_size=1024,
        flux_steps=4,
        flux_batches=(1, 4),
        dtype=args.dtype,
        compile_mode=args.compile_mode,
        compile_vae=args.compile_vae,
        compile_on_cpu=False,
        engine_warmup=args.engine_warmup,
        compile_estimate_s=75.0,
    )


def describe_device(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {
            "type": "cpu",
            "name": cpu_model(),
            "slug": "cpu",
            "peak_tflops": None,
            "peak_row": "a CPU: no MFU",
        }
    name = torch.cuda.get_device_name(0)
    peak, row = peak_tflops(name)
    props = torch.cuda.get_device_properties(0)
    return {
        "type": "cuda",
        "name": name,
        "slug": device_slug(name),
        "peak_tflops": peak,
        "peak_row": row,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 1024**3, 1),
        "multiprocessors": props.multi_processor_count,
    }


def versions(device: str) -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("diffusers", "transformers", "peft", "triton", "discord.py", "simcord"):
        found[package] = package_version(package)
    found["cuda"] = torch.version.cuda
    found["cudnn"] = torch.backends.cudnn.version() if device == "cuda" else None
    found["driver"] = None
    if device == "cuda":
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            found["driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return found
