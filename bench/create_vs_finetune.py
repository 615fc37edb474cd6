"""Create vs fine-tune: how much sooner an avatar is usable than with per-user fine-tuning.

Ours: ``engine.inspect`` + ``engine.encode`` of 5 photos (face detection, face crops, the
image encoder) and serialising the features, through the engine's worker: the path the service
takes when a user creates an avatar. The baseline: DreamBooth-LoRA for 400 steps
(``bench/dreambooth.py``) on the same model, device and photos, run before the engine loads
(the engine switches oneDNN off on the CPU for bit-exact batching; the baseline keeps torch's
defaults, which only makes it faster).

    python -m bench.create_vs_finetune --profile sd15-shaped --device auto
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    BenchContext,
    base_parser,
    headline,
    prepare_context,
    record,
    run_main,
    summary,
    synchronize,
)
from bench.dreambooth import (
    INSTANCE_PROMPT,
    LORA_RANK,
    LORA_TARGETS,
    baseline_components,
    release,
    train_dreambooth_lora,
)

NAME = "create_vs_finetune"
TARGET_RATIO = 1000.0
# The largest training resolution we time on a CPU (SD1.5 trains at 512; a 512 step takes
# minutes on a small CPU). A smaller resolution makes the baseline cheaper: our ratio shrinks.
CPU_MAX_TRAIN_SIZE = 128


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--create-repeats", type=int, default=None, help="timed avatar creations (default 5/2)"
    )
    parser.add_argument("--target-steps", type=int, default=400, help="DreamBooth-LoRA steps")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="steps actually timed (default: all of --target-steps, except 10 for large "
        "models on a CPU, extrapolated linearly)",
    )
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps")
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        help=f"training resolution (default: the profile's; at most {CPU_MAX_TRAIN_SIZE} on a CPU)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    add_args(parser)
    return parser.parse_args(argv)


def measure_baseline(ctx: BenchContext, args: argparse.Namespace) -> dict[str, Any]:
    """DreamBooth-LoRA on a private copy of the profile's model (freed afterwards)."""
    native = ctx.profile.default_size
    large_on_cpu = ctx.device == "cpu" and native > CPU_MAX_TRAIN_SIZE
    train_size = args.train_size or (CPU_MAX_TRAIN_SIZE if large_on_cpu else native)
    measured = args.train_steps or (10 if large_on_cpu else args.target_steps)
    warmup = args.warmup_steps
    if ctx.quick:
        measured, warmup = 3, 1
    measured = min(measured, args.target_steps)
    onednn = bool(torch.backends.mkldnn.enabled)
    started = time.perf_counter()
    components = baseline_components(ctx.settings)
    build_s = time.perf_counter() - started
    try:
        training = train_dreambooth_lora(
            components,
            ctx.photos,
            resolution=train_size,
            steps=measured,
            warmup_steps=warmup,
            device=ctx.device,
        )
    finally:
        release(components)
    return {
        "estimated_total_s": training.estimate(args.target_steps),
        "extrapolated": measured < args.target_steps,
        "target_steps": args.target_steps,
        "measured_steps": measured,
        "warmup_steps": warmup,
        "train_resolution": train_size,
        "native_resolution": native,
        "setup_s": training.setup_s,
        "median_step_s": training.median_step_s,
        "mean_step_s": training.mean_step_s,
        "step_s": [round(t, 6) for t in training.step_s],
        "warmup_step_s": [round(t, 6) for t in training.warmup_steps_s],
        "first_loss": training.losses[0],
        "last_loss": training.losses[-1],
        "trainable_parameters": training.trainable_parameters,
        "model_build_s": build_s,
        "onednn": onednn,
    }


async def time_creation(engine: Any, photos: list[Any], device: str) -> dict[str, Any]:
    """One avatar creation as the service does it: inspect, encode, serialise."""
    synchronize(device)
    started = time.perf_counter()
    reports = await engine.inspect(photos, "person")
    inspected = time.perf_counter()
    features = await engine.encode(photos, "person")
    blob = features.to_bytes()
    synchronize(device)
    done = time.perf_counter()
    return {
        "total_s": done - started,
        "inspect_s": inspected - started,
        "encode_s": done - inspected,
        "feature_bytes": len(blob),
        "faces_per_photo": [len(r.faces) if r.faces is not None else None for r in reports],
        "photos_ok": [r.ok for r in reports],
    }


def unseen_photos(photos: list[Any], run: int) -> list[Any]:
    """Copies the engine has never seen: one pixel changed per photo. The face detector
    remembers recent photos (inspect, then encode, of one creation share detections); each
    timed creation must pay its own detections, as a member's new photos would."""
    fresh = []
    for photo in photos:
        copy = photo.copy()
        r, g, b = copy.getpixel((0, 0))[:3]
        copy.putpixel((0, 0), ((r + 1 + run) % 256, g, b))
        fresh.append(copy)
    return fresh


async def measure_creation(
    engine: Any, ctx: BenchContext, args: argparse.Namespace
) -> dict[str, Any]:
    repeats = 1 if ctx.quick else (args.create_repeats or (2 if ctx.device == "cpu" else 5))
    first = await time_creation(engine, unseen_photos(ctx.photos, 0), ctx.device)
    runs = [
        await time_creation(engine, unseen_photos(ctx.photos, run), ctx.device)
        for run in range(1, repeats + 1)
    ]
    return {
        **summary([r["total_s"] for r in runs]),
        "first_s": first["total_s"],
        "inspect_median_s": statistics.median(r["inspect_s"] for r in runs),
        "encode_median_s": statistics.median(r["encode_s"] for r in runs),
        "faces_per_photo": runs[-1]["faces_per_photo"],
        "photos_ok": runs[-1]["photos_ok"],
        "feature_bytes": runs[-1]["feature_bytes"],
        "encoder_id": engine.encoder_id,
        "engine_dtype": str(engine.model.dtype).removeprefix("torch."),
    }


def build_section(
    ctx: BenchContext, baseline: dict[str, Any], create: dict[str, Any], engine_load_s: float
) -> dict[str, Any]:
    baseline_s, create_s = baseline["estimated_total_s"], create["median_s"]
    ratio = baseline_s / create_s
    steps, size, native = (
        baseline["target_steps"],
        baseline["train_resolution"],
        baseline["native_resolution"],
    )
    notes = [
        f"Avatar creation = engine.inspect + engine.encode of {len(ctx.photos)} photos + "
        "ConceptFeatures.to_bytes, through the engine worker (median of "
        f"{create['runs']} after one untimed first creation; each on photos the engine has not "
        "seen, so no face detection is remembered across creations). Faces found per photo: "
        f"{create['faces_per_photo']}.",
        "Split: inspect_s is the face work (HOG detection, landmarks, the descriptors of all "
        "photos as one batch) plus the image statistics; encode_s is the face crops (detections "
        "remembered from inspect, not redone), the image encoder and serialising.",
        f"Baseline = DreamBooth-LoRA (rank {LORA_RANK} on {', '.join(LORA_TARGETS)}), "
        f"{steps} steps, batch 1, at {size}x{size} px, same model builder and seed, same "
        "device; building or loading the models is not counted on either side.",
    ]
    if baseline["extrapolated"]:
        notes.append(
            f"The baseline timed {baseline['measured_steps']} steps after "
            f"{baseline['warmup_steps']} warm-up steps and is extrapolated linearly to {steps} "
            "steps (setup + steps x median step time)."
        )
    if size < native:
        notes.append(
            f"Training at {size} px instead of the model's {native} px makes each baseline "
            f"step roughly {(native / size) ** 2:.0f}x cheaper than the real recipe: the ratio "
            "is an underestimate."
        )
    if ctx.device == "cpu":
        notes.append(
            f"oneDNN was {'on' if baseline['onednn'] else 'off'} for the baseline and off for "
            "the engine (its CPU batch-invariant mode): that favours the baseline."
        )
    return {
        "description": "Time until an avatar is usable (ours) vs a DreamBooth-LoRA fine-tune.",
        "headline": [
            headline(
                f"DreamBooth-LoRA {steps} steps / avatar creation",
                ratio,
                f">= {TARGET_RATIO:g}x",
                ratio >= TARGET_RATIO,
            )
        ],
        "notes": notes,
        "table": [
            {
                "what": "avatar creation (median)",
                "seconds": create_s,
                "inspect_s": create["inspect_median_s"],
                "encode_s": create["encode_median_s"],
            },
            {"what": "avatar creation (first, cold)", "seconds": create["first_s"]},
            {
                "what": f"DreamBooth-LoRA {steps} steps"
                + (" (extrapolated)" if baseline["extrapolated"] else ""),
                "seconds": baseline_s,
            },
            {"what": "DreamBooth-LoRA median step", "seconds": baseline["median_step_s"]},
            {"what": "DreamBooth-LoRA setup", "seconds": baseline["setup_s"]},
            {"what": "engine load (not counted)", "seconds": engine_load_s},
            {"what": "baseline model build (not counted)", "seconds": baseline["model_build_s"]},
        ],
        "ratio": ratio,
        "ratio_vs_first_creation": baseline_s / create["first_s"],
        "create": create,
        "baseline": baseline,
        "settings": {
            "profile": ctx.profile.name,
            "device": ctx.device,
            "engine_dtype": create["engine_dtype"],
            "photos": len(ctx.photos),
            "photo_source": "skimage.data.astronaut variants",
            "encoder_id": create["encoder_id"],
            "target_steps": steps,
            "measured_steps": baseline["measured_steps"],
            "train_resolution": size,
            "train_batch_size": 1,
            "instance_prompt": INSTANCE_PROMPT,
            "lora_rank": LORA_RANK,
            "torch_threads": torch.get_num_threads(),
            "quick": ctx.quick,
        },
        "machine": ctx.machine,
    }


async def run(args: argparse.Namespace) -> Path:
    from engine import create_engine

    ctx = prepare_context(args)
    # The baseline first, on its own copy of the model, freed before the engine loads.
    baseline = measure_baseline(ctx, args)
    started = time.perf_counter()
    engine = await create_engine(ctx.settings)
    load_s = time.perf_counter() - started
    try:
        create = await measure_creation(engine, ctx, args)
    finally:
        await engine.aclose()
    section = build_section(ctx, baseline, create, load_s)
    return record(ctx.out, ctx.profile.name, ctx.device, NAME, section)


def main(argv: list[str] | None = None) -> None:
    run_main(parse_args, run, NAME, argv)


if __name__ == "__main__":
    main()
