"""What the GPU benchmark (bench/gpu.py) measures: engines built with or without the fast path,
throughput and FLOPs per batch size, and the bot's render → posted latency; the other sections
reuse the existing benchmarks' measurements (bench/batching.py, bench/create_vs_finetune.py,
bench/engine_overhead.py).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import IDENTITY_STRENGTH, PROMPT, engine_settings, synchronize
from bench.gpu_plan import Plan

GUIDANCE = 6.0  # the SD1.5 profiles' (bench/engine_overhead.py's default)
SCHEDULER = "dpmpp_2m"


# -- engines ----------------------------------------------------------------------------------


def fast_path_facts(engine: Any) -> dict[str, Any] | None:
    """What the engine's fast path really did (``DiffusionEngine.fast_path``), or None for an
    engine without one."""
    fast = getattr(engine, "fast_path", None)
    if fast is None:
        return None
    facts = {}
    for name in ("channels_last", "fuse_qkv", "compile", "compile_vae", "compile_mode", "warmup"):
        facts[name] = getattr(fast, name, None)
    buckets = getattr(fast, "buckets", None)
    facts["buckets"] = list(buckets) if buckets is not None else None
    warmup = getattr(fast, "warmup_seconds", getattr(engine, "warmup_seconds", None))
    facts["warmup_seconds"] = float(warmup) if warmup is not None else None
    return facts


async def build_engine(
    profile: str, plan: Plan, *, compiled: bool, max_batch: int, buckets: Sequence[int]
) -> tuple[Any, dict[str, Any]]:
    """An engine for ``profile``: eager (compile and compile_vae off) or compiled (compile on,
    compile_vae as ``plan.compile_vae``; every bucket compiled at start only with
    ``plan.engine_warmup``); the other fast-path switches stay "auto" (on with CUDA)."""
    from engine import create_engine
    from engine.config import FastPathSettings

    fast = FastPathSettings(
        compile="on" if compiled else "off",
        compile_vae=plan.compile_vae if compiled else "off",  # type: ignore[arg-type]
        compile_mode=plan.compile_mode,  # type: ignore[arg-type]
        batch_buckets=tuple(buckets),
        warmup="on" if compiled and plan.engine_warmup else "off",
    )
    settings = engine_settings(
        profile, plan.device, max_batch=max_batch, dtype=plan.dtype, fast=fast
    )
    started = time.perf_counter()
    engine = await create_engine(settings)
    seconds = time.perf_counter() - started
    facts = fast_path_facts(engine)
    info: dict[str, Any] = {
        "profile": profile,
        "build_s": seconds,
        "model_load_s": float(engine.model.load_seconds),
        "device": str(engine.device),
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "max_batch": max_batch,
        "requested_fast": settings.fast.model_dump(mode="json"),
        "fast_path": facts,
        "notes": [],
    }
    if compiled and not plan.engine_warmup:
        info["notes"].append(
            "the engine's warm-up was off: each batch size compiled on its first, untimed "
            "render here ('warm-up s' in the throughput tables)"
        )
    if facts is None:
        info["notes"].append(
            "the engine exposes no fast_path (engine/acceleration.py not in this build): the "
            "fast-path settings had no visible effect, 'compiled' ran eager"
        )
    return engine, info


async def close_engine(engine: Any) -> None:
    await engine.aclose()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- throughput (sections a and f) ------------------------------------------------------------


def make_requests(
    engine: Any, features: Any, size: int, steps: int, seeds: Sequence[int]
) -> list[Any]:
    from engine import RenderRequest

    personalizer = engine.default_personalizer
    guidance = float(getattr(engine, "default_guidance", GUIDANCE))
    return [
        RenderRequest(
            prompt=PROMPT,
            width=size,
            height=size,
            steps=steps,
            guidance=guidance,
            seed=seed,
            count=1,
            identity_strength=IDENTITY_STRENGTH,
            scheduler=SCHEDULER,
            personalizer=personalizer,
            features=features,
        )
        for seed in seeds
    ]


def _sdpa_flops(
    query: Sequence[int], key: Sequence[int], value: Sequence[int], *_: Any, **__: Any
) -> int:
    """FLOPs of one scaled-dot-product attention (Q·Kᵀ and P·V), for the CPU kernel that
    torch's counter does not know."""
    b, h, s_q, d = query
    s_k, d_v = key[-2], value[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def count_flops(engine: Any, features: Any, batch: int, size: int, steps: int) -> dict[str, Any]:
    """Measured FLOPs per image at one batch's shape, counted with ``FlopCounterMode`` over a
    render of ``batch`` images (CFG doubles the denoiser's rows): Stable Diffusion renders one
    step (every step costs the same) and per image = (denoiser forward × steps + VAE decode) /
    batch; other families (FLUX.2 [klein] caches its reference tokens after the first step)
    render all their few steps. Runs on the engine's thread (the counter is a thread-local
    dispatch mode), on eager models only."""
    from torch.utils.flop_counter import FlopCounterMode

    model = engine.model
    pipe = model.pipe
    denoiser = getattr(pipe, "unet", None)
    if denoiser is None:
        denoiser = getattr(pipe, "transformer", None)
    if denoiser is None:
        raise RuntimeError("the pipeline has neither a unet nor a transformer")
    vae = getattr(pipe, "vae", None)
    decoder = getattr(vae, "decoder", None) if vae is not None else None
    family = getattr(engine.profile, "pipeline_family", "stable-diffusion")
    counted_steps = 1 if family == "stable-diffusion" else steps
    personalizer = model.personalizers[engine.default_personalizer]
    samples = make_requests(engine, features, size, counted_steps, range(batch))
    calls = 0

    def on_call(*_: Any) -> None:
        nonlocal calls
        calls += 1

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _sdpa_flops
    handle = denoiser.register_forward_pre_hook(on_call)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as fc:
            personalizer.run_batch(
                pipe,
                samples,
                list(range(batch)),
                scheduler_config=model.scheduler_config,
                on_step=lambda done, total: [True] * batch,
            )
    finally:
        handle.remove()
    counts = fc.get_flop_counts()

    def flops_of(module: Any) -> int:
        if module is None:
            return 0
        return int(sum(counts.get(type(module).__name__, {}).values()))

    denoised = flops_of(denoiser)
    decode = flops_of(decoder)
    return {
        "denoiser_flops_per_forward": denoised / max(calls, 1),
        "denoiser_forwards_counted": calls,
        "denoiser_steps_counted": counted_steps,
        "vae_decode_flops_per_image": decode / batch,
        "flops_per_image": (denoised * steps / counted_steps + decode) / batch,
        "counted_render_flops": int(fc.get_total_flops()),
    }


async def render_together(engine: Any, requests: Sequence[Any]) -> tuple[float, list[Any]]:
    device = engine.device.type
    synchronize(device)
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.render(r) for r in requests))
    synchronize(device)
    return time.perf_counter() - started, list(results)


def _peak_gib(device: str) -> tuple[float | None, float | None]:
    if device != "cuda":
        return None, None
    return (
        torch.cuda.max_memory_allocated() / 1024**3,
        torch.cuda.max_memory_reserved() / 1024**3,
    )


async def count_host_syncs(engine: Any, requests: Sequence[Any]) -> int | None:
    """Implicit host-device synchronisations in one more render of the batch (CUDA only):
    torch's sync debug mode warns on each (``.item()``, nonzero, copies to the host). A
    denoising loop free of them shows a handful per render (the final copies of the images),
    not one or more per step."""
    if engine.device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            await render_together(engine, requests)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


async def throughput(
    engine: Any,
    features: Any,
    *,
    size: int,
    steps: int,
    batches: Sequence[int],
    repeats: int,
    remaining: Callable[[], float],
    flops: dict[int, dict[str, Any]],
    peak_tflops: float | None,
    compile_estimate_s: float = 0.0,
) -> dict[str, Any]:
    """Images/s, it/s and peak memory per batch size: ``batch`` one-image requests sent
    together (the worker batches them), one untimed warm-up, then ``repeats`` timed rounds.
    ``flops`` (batch → count_flops) is filled on an eager engine and reused by a compiled one;
    ``compile_estimate_s``: what a new batch size's first render may add (a compiled engine
    without its warm-up), for the deadline."""
    device = engine.device.type
    eager = not ((fast_path_facts(engine) or {}).get("compile"))
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    per_image_s: float | None = None
    for batch in batches:
        if per_image_s is not None:
            needed = 1.5 * (repeats + 1) * batch * per_image_s + 5 + compile_estimate_s
            if remaining() < needed:
                notes.append(
                    f"batch {batch} skipped: {remaining():.0f} s left, needs ~{needed:.0f}"
                )
                continue
        requests = make_requests(engine, features, size, steps, range(100, 100 + batch))
        if batch not in flops and eager:
            try:
                flops[batch] = await engine.call(
                    lambda b=batch: count_flops(engine, features, b, size, steps)
                )
            except Exception as exc:  # MFU is then omitted, the timing goes on
                notes.append(f"FLOP count at batch {batch} failed: {exc!r}")
        first_s, _ = await render_together(engine, requests)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        walls: list[float] = []
        worker: list[float] = []
        formed: set[int] = set()
        for _ in range(repeats):
            wall, results = await render_together(engine, requests)
            walls.append(wall)
            worker.append(max(r.timings["batch"] for r in results))
            formed |= {int(r.timings["batch_images"]) for r in results}
        peak, reserved = _peak_gib(device)
        syncs = await count_host_syncs(engine, requests)
        wall_s, worker_s = statistics.median(walls), statistics.median(worker)
        images_per_s = batch / wall_s
        per_image_s = wall_s / batch
        counted = flops.get(batch, {})
        flops_per_image = counted.get("flops_per_image")
        mfu = None
        if flops_per_image and peak_tflops:
            mfu = flops_per_image * images_per_s / (peak_tflops * 1e12)
        rows.append(
            {
                "batch": batch,
                "images_per_s": images_per_s,
                "images_per_s_worker": batch / worker_s,
                "seconds_per_image": per_image_s,
                "it_per_s": steps / wall_s,
                "wall_s_median": wall_s,
                "worker_batch_s_median": worker_s,
                "wall_all_s": [round(t, 6) for t in walls],
                "first_render_s": first_s,
                "batches_formed": sorted(formed),
                "peak_memory_gib": peak,
                "peak_reserved_gib": reserved,
                "flops_per_image": flops_per_image,
                "flops": counted or None,
                "mfu": mfu,
                "host_syncs_per_render": syncs,
            }
        )
    notes += [
        f"Per batch size: {len(batches)} sizes, one untimed warm-up render, then {repeats} "
        "timed rounds (median); each round sends `batch` one-image requests together through "
        "Engine.render (the worker batches them; 'batches formed' says what it formed).",
        "images/s and it/s use the caller's wall time (prompt encoding, denoising, VAE decode, "
        "PIL conversion, the worker's gather window: up to its gather_window_ms when a batch "
        "is smaller than max_batch); 'images/s (worker)' uses the worker's own batch time.",
        "it/s = denoising steps of the whole batch per second of the whole render (a lower "
        "bound on the denoising loop's own it/s).",
        "FLOPs measured with torch.utils.flop_counter.FlopCounterMode on the eager engine at "
        "each batch's shape (CFG rows included): per image = denoiser FLOPs per step × steps "
        "+ VAE decode (Stable Diffusion: one step counted; FLUX.2: all); MFU = FLOPs/image × "
        "images/s ÷ the device's dense bf16/fp16 peak (compiled rows reuse the eager count).",
    ]
    if device == "cuda":
        notes.append(
            "Peak memory: torch.cuda.max_memory_allocated over the timed rounds (reset after "
            "the warm-up), weights included."
        )
    return {
        "profile": engine.profile.name,
        "size": size,
        "steps": steps,
        "guidance": make_requests(engine, features, size, steps, [0])[0].guidance,
        "scheduler": SCHEDULER,
        "personalizer": engine.default_personalizer,
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "repeats": repeats,
        "gather_window_ms": engine.settings.gather_window_ms,
        "max_batch": engine.settings.max_batch,
        "rows": sorted(rows, key=lambda row: row["batch"]),
        "notes": notes,
    }


# -- the bot on SimCord (section e) -----------------------------------------------------------


async def bot_latency(engine: Any, features: Any, plan: Plan) -> dict[str, Any]:
    """``/avatar render`` → the images' follow-up on SimCord (bench/interactions.py's clock)
    with the bot's engine port wrapping ``engine``: one interaction at a time, then a burst."""
    import simcord

    from bench.interactions import photo_files, run_scenario
    from bot.app import create_bot
    from bot.config import QuotaCeilings, QuotaDefaults, SafetySettings, Settings
    from bot.engine_adapter import EngineAdapter
    from engine.safety import NudeNetChecker, OutputChecker

    size, steps = engine.native_size, engine.default_steps
    # The engine alone, for the same render (one image at the bot's defaults).
    alone = []
    for seed in range(3):
        elapsed, _ = await render_together(
            engine, make_requests(engine, features, size, steps, [seed])
        )
        alone.append(elapsed)
    engine_s = statistics.median(alone[1:])
    safety = SafetySettings()
    # No quota may refuse a benchmark render (the defaults allow 4 renders a minute).
    generous = {
        "renders_per_day": 1000,
        "queued_per_member": 1000,
        "queued_per_guild": 1000,
        "renders_per_minute": 1000,
        "creates_per_hour": 1000,
    }

    # As bot.engine_adapter builds it for a profile without diffusers' safety checker.
    port = EngineAdapter(engine, OutputChecker(NudeNetChecker(safety.threshold, safety.classes)))
    posted: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="avatarbot-gpu-bench-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            engine=engine.settings,
            safety=safety,
            quotas=QuotaDefaults(**generous),
            quota_ceilings=QuotaCeilings(**generous),
        )
        bot = create_bot(settings, engine_port=port)  # the caller keeps the engine
        async with simcord.run(bot, settle_timeout=1800.0) as env:
            guild = env.create_guild(name="bench")
            channel = guild.create_text_channel("renders")
            members = [guild.add_member(env.create_user(f"m{i}")) for i in range(2)]
            for member in members:
                form = await member.slash(channel, "avatar create")
                await member.submit_modal(
                    form,
                    {
                        "name": "Me",
                        "kind": ["person"],
                        "photos": photo_files(),
                        "consent": ["accepted"],
                    },
                )
            await members[0].slash(channel, "avatar render", avatar="Me", prompt="warm up")

            async def invoke(member: Any, i: int) -> Any:
                result = await member.slash(
                    channel, "avatar render", avatar="Me", prompt=f"scene {i}", seed=i
                )
                posted.append(result)
                return result

            single = [
                await run_scenario(env, channel, members, 1, invoke)
                for _ in range(plan.bot_sequential)
            ]
            burst = await run_scenario(env, channel, members, plan.bot_burst, invoke)
            images = sum(len(f.attachments) for r in posted for f in r.followups)
        await bot.close()
    deliver = [run["deliver_s"]["p50"] for run in single if run["deliver_s"]]
    ack = [run["ack_ms"]["p50"] for run in single if run["ack_ms"]]
    render_to_posted = statistics.median(deliver) if deliver else None
    interactions = plan.bot_sequential + plan.bot_burst
    return {
        "profile": engine.profile.name,
        "size": size,
        "steps": steps,
        "render_to_posted_s": render_to_posted,
        "engine_render_s": engine_s,
        "bot_overhead_s": None if render_to_posted is None else render_to_posted - engine_s,
        "summary": {
            "render → posted, one at a time, median s": render_to_posted,
            "engine.render alone (same size and steps), median s": engine_s,
            "acknowledge p50 ms (one at a time, median)": statistics.median(ack) if ack else None,
            f"burst of {plan.bot_burst}: render → posted p50 s": burst["deliver_s"].get("p50"),
            f"burst of {plan.bot_burst}: render → posted p99 s": burst["deliver_s"].get("p99"),
            f"burst of {plan.bot_burst}: acknowledge p99 ms": burst["ack_ms"].get("p99"),
            "interactions answered": sum(r["answered"] for r in [*single, burst]),
            "images posted": images,
        },
        "interactions": interactions,
        "images_posted": images,
        "single": single,
        "burst": burst,
        "notes": [
            "The real bot (create_bot, SQLite, nudenet output check) on SimCord, its engine port "
            "wrapping this run's eager engine; two members create avatars first (not timed) "
            "and one warm-up render runs.",
            "render → posted = bench/interactions.py's 'deliver': INTERACTION_CREATE handed to "
            "discord.py → the follow-up with the images reaching the (simulated) Discord API; "
            f"{plan.bot_sequential} interactions one at a time, then a burst of "
            f"{plan.bot_burst} sent together.",
            "engine.render alone: the same render (one image, the bot's size and steps) "
            "awaited directly, median of 2 after one warm-up; the difference is the bot's own "
            "work (queue, database, progress edits, safety check, PNG encoding, upload).",
        ],
    }
