"""The GPU benchmark: one command, one device, about eight minutes, model builds included.

    python -m bench.gpu                          # on a CUDA machine: bench/results/gpu-<device>.*
    python -m bench.gpu --quick --out /tmp/b     # the same code paths on the CPU, tiny models

Sections (``--sections a,b,...``; each part is skipped with a note when the global deadline,
``--deadline-s``, leaves it too little time, and results are rewritten after every part, so a
run cut short still leaves what it measured):

a. ``sd15-shaped`` at 512 px, 25 steps, batch 1/4/8/16, eager and compiled: images/s, it/s,
   peak GPU memory, measured FLOPs per image and MFU.
b. 8 concurrent requests batched by the engine's worker vs one by one (bench/batching.py).
c. Avatar creation vs DreamBooth-LoRA 400 steps at 512 px (bench/create_vs_finetune.py).
d. Engine.render vs a bare diffusers call (bench/engine_overhead.py).
e. ``/avatar render`` → images posted: the bot on SimCord with this run's engine.
f. ``flux2-klein-shaped`` at 1024 px, 4 steps, batch 1 and 4, eager and compiled, when the
   profile is registered.
g. Upscale x2 and Vary (subtle, strong) of one image vs its render (bench/refine.py).

Order: the DreamBooth baseline (its own model copy, freed before the engine loads), the eager
engine (a, b, d, c, e, g), the compiled engine (a, b), then FLUX.2. Timing figures are reported
next to the issue's targets, never asserted.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # the deadline counts from here: imports and builds included
_RUNS = 0

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench import batching, create_vs_finetune, engine_overhead, refine  # noqa: E402
from bench.common import (  # noqa: E402
    BenchContext,
    engine_settings,
    machine_info,
    sample_photos,
    setup_logging,
)
from bench.gpu_measure import (  # noqa: E402
    GUIDANCE,
    SCHEDULER,
    bot_latency,
    build_engine,
    close_engine,
    throughput,
)
from bench.gpu_plan import (  # noqa: E402
    ESTIMATES,
    WARMUP_BUILD_ESTIMATE_S,
    Plan,
    describe_device,
    make_plan,
    parse_args,
    versions,
)
from bench.gpu_report import SECTION_TITLES  # noqa: E402
from bench.gpu_run import Recorder  # noqa: E402

logger = logging.getLogger(__name__)


class GpuBench(Recorder):
    """One run: the plan, the deadline, the results document (rewritten after every part)."""

    def __init__(self, plan: Plan, args: argparse.Namespace, argv: list[str]) -> None:
        self.plan = plan
        device = describe_device(plan.device)
        self.peak = device["peak_tflops"]
        stem = f"gpu-{device['slug']}" + ("-quick" if plan.quick else "")
        args.out.mkdir(parents=True, exist_ok=True)
        self.flops: dict[int, dict[str, Any]] = {}
        wanted = set(args.sections)
        results: dict[str, Any] = {
            "format": 1,
            "benchmark": "gpu",
            "command": " ".join(["python -m bench.gpu", *argv]),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished_at": None,
            "elapsed_s": None,
            "deadline_s": float(args.deadline_s),
            "quick": plan.quick,
            "device": device,
            "dtype": None,
            "versions": versions(plan.device),
            "machine": machine_info(plan.device),
            "plan": {**vars(plan), "sections": sorted(wanted)},
            "engines": {},
            "sections": {
                key: {"title": title, "parts": {}}
                for key, title in SECTION_TITLES.items()
                if key in wanted
            },
            "headlines": [],
            "notes": [
                f"Random weights ({plan.profile}, {plan.flux_profile}): the images are noise by "
                "design; "
                + (
                    "--quick: tiny models on the CPU check the code paths, their numbers say "
                    "nothing about a GPU."
                    if plan.quick
                    else "the FLOPs, memory and time are the real architectures'."
                ),
                f"dtype: --dtype {plan.dtype} (auto: the engine's choice, bf16 on CUDA devices "
                "with bf16, else fp16; fp32 on a CPU); 'dtype' above is what the engines used.",
            ],
        }
        super().__init__(
            args.out / f"{stem}.json",
            results,
            deadline_s=float(args.deadline_s),
            started=_STARTED,
            quick=plan.quick,
            wanted=wanted,
        )

    async def engine(
        self,
        label: str,
        profile: str,
        *,
        compiled: bool,
        max_batch: int,
        buckets: tuple[int, ...],
        family: str = "sd15",
    ) -> tuple[Any, Any] | None:
        """Build an engine and encode the sample photos with it; None when it could not."""
        built: dict[str, Any] = {}

        async def build() -> dict[str, Any]:
            engine, info = await build_engine(
                profile, self.plan, compiled=compiled, max_batch=max_batch, buckets=buckets
            )
            built["engine"] = engine
            try:
                started = time.perf_counter()
                built["features"] = await engine.encode(sample_photos(self.plan.photos), "person")
                info["first_encode_s"] = time.perf_counter() - started
            except BaseException:
                await close_engine(engine)
                raise
            return info

        mode = "compiled" if compiled else "eager"
        info = await self.part(
            "engine",
            label,
            build,
            estimate_key=f"engine.{family} {mode}",
            estimate_s=WARMUP_BUILD_ESTIMATE_S if compiled and self.plan.engine_warmup else None,
        )
        if info is None:
            return None
        self.results["dtype"] = self.results["dtype"] or info["dtype"]
        return built["engine"], built["features"]

    # -- the run -------------------------------------------------------------------------------

    def context(self) -> BenchContext:
        from engine.profiles import resolve_profile

        settings = engine_settings(self.plan.profile, self.plan.device)
        return BenchContext(
            profile=resolve_profile(settings),
            device=self.plan.device,
            settings=settings,
            out=self.path.parent,
            quick=self.plan.quick,
            machine=self.results["machine"],
            photos=sample_photos(self.plan.photos),
        )

    def render_args(self, **more: Any) -> argparse.Namespace:
        plan = self.plan
        return argparse.Namespace(
            size=plan.size, steps=plan.steps, guidance=GUIDANCE, scheduler=SCHEDULER, **more
        )

    async def run(self) -> None:
        self.write()
        try:
            await self.sections()
        except BaseException as exc:
            self.results["notes"].append(f"The run stopped early: {type(exc).__name__}: {exc}")
            raise
        else:
            self.results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        finally:
            not_done = [
                f"{key}.{name} ({part['status']})"
                for key, section in self.results["sections"].items()
                for name, part in section["parts"].items()
                if part.get("status") != "done"
            ]
            if not_done:
                self.results["notes"].append("Not measured: " + ", ".join(not_done) + ".")
            self.write()

    async def sections(self) -> None:
        plan, wanted = self.plan, self.wanted
        ctx = self.context()
        baseline: dict[str, Any] | None = None
        if "c" in wanted:
            train = argparse.Namespace(
                train_size=None,
                train_steps=plan.dreambooth_steps,
                target_steps=plan.dreambooth_target,
                warmup_steps=plan.dreambooth_warmup,
                create_repeats=plan.create_repeats,
            )

            async def dreambooth() -> dict[str, Any]:
                return create_vs_finetune.measure_baseline(ctx, train)

            baseline = await self.part("c", "dreambooth", dreambooth)
        if wanted & set("abcdeg"):
            await self.eager_engine(ctx, baseline)
        if wanted & set("ab"):
            await self.compiled_engine(ctx)
        if "f" in wanted:
            await self.flux()

    async def eager_engine(self, ctx: BenchContext, baseline: dict[str, Any] | None) -> None:
        plan, wanted = self.plan, self.wanted
        parts = [
            ("a", "eager"),
            ("b", "eager"),
            ("d", "eager"),
            ("c", "create"),
            ("e", "eager"),
            ("g", "eager"),
        ]
        label = f"{plan.profile} eager"
        built = await self.engine(
            label, plan.profile, compiled=False, max_batch=plan.max_batch, buckets=plan.buckets
        )
        if built is None:
            self.skip_all(parts, f"the engine '{label}' was not built")
            return
        engine, features = built
        load_s = self.results["engines"][label]["build_s"]
        try:
            if "a" in wanted:
                await self.part("a", "eager", lambda: self.throughput(engine, features, False))
            if "b" in wanted:
                await self.part("b", "eager", lambda: self.batching(engine, features, ctx))
            if "d" in wanted:

                async def overhead() -> dict[str, Any]:
                    args = self.render_args(overhead_repeats=plan.overhead_repeats)
                    return await engine_overhead.measure(engine, features, ctx, args)

                await self.part("d", "eager", overhead)
            if "c" in wanted and baseline is None:
                self.skip("c", "create", "the DreamBooth-LoRA baseline did not run")
            elif "c" in wanted and baseline is not None:
                known = baseline

                async def create() -> dict[str, Any]:
                    args = argparse.Namespace(create_repeats=plan.create_repeats)
                    made = await create_vs_finetune.measure_creation(engine, ctx, args)
                    section = create_vs_finetune.build_section(ctx, known, made, load_s)
                    section.pop("baseline", None)  # recorded as the dreambooth part
                    keys = ("extrapolated", "measured_steps", "train_resolution", "target_steps")
                    return {**section, **{k: known[k] for k in keys}}

                await self.part("c", "create", create)
            if "e" in wanted:
                await self.part("e", "eager", lambda: bot_latency(engine, features, plan))
            if "g" in wanted:

                async def refinements() -> dict[str, Any]:
                    args = self.render_args(refine_repeats=plan.repeats)
                    return await refine.measure(engine, features, ctx, args)

                await self.part("g", "eager", refinements)
        finally:
            await close_engine(engine)

    async def compiled_engine(self, ctx: BenchContext) -> None:
        plan = self.plan
        parts = [("a", "compiled"), ("b", "compiled")]
        if plan.device != "cuda" and not plan.compile_on_cpu:
            self.skip_all(
                parts,
                "--quick on a CPU: compiled cases skipped (a CPU torch.compile of the tiny "
                "UNet costs ~30 s per shape); --compile-on-cpu runs them",
            )
            return
        label = f"{plan.profile} compiled"
        built = await self.engine(
            label, plan.profile, compiled=True, max_batch=plan.max_batch, buckets=plan.buckets
        )
        if built is None:
            self.skip_all(parts, f"the engine '{label}' was not built")
            return
        engine, features = built
        try:
            done: dict[str, Any] | None = None
            if "a" in self.wanted:
                done = await self.part(
                    "a", "compiled", lambda: self.throughput(engine, features, True)
                )
            if "b" in self.wanted:
                # b renders batches of 1 and of `concurrency`: sizes a did not compile yet
                # compile in b's warm-up.
                compiled = {row["batch"] for row in (done or {}).get("rows", [])}
                new = {1, plan.concurrency} - compiled
                estimate = ESTIMATES["b.compiled"][1 if plan.quick else 0]
                await self.part(
                    "b",
                    "compiled",
                    lambda: self.batching(engine, features, ctx),
                    estimate_s=estimate + len(new) * self.compile_estimate(True),
                )
        finally:
            await close_engine(engine)
            torch.compiler.reset()

    async def flux(self) -> None:
        plan = self.plan
        from engine.profiles import known_profiles

        try:
            registered = plan.flux_profile in known_profiles()
        except Exception as exc:
            registered, why = False, f"the profile plug-ins failed to import: {exc!r}"
        else:
            why = f"profile {plan.flux_profile} is not registered in this build"
        if not registered:
            self.skip_all([("f", "eager"), ("f", "compiled")], why)
            return
        flops: dict[int, dict[str, Any]] = {}  # counted on the eager engine, for both
        for mode in ("eager", "compiled"):
            compiled = mode == "compiled"
            batches = tuple(reversed(plan.flux_batches)) if compiled else plan.flux_batches
            if mode == "compiled" and plan.device != "cuda" and not plan.compile_on_cpu:
                self.skip("f", mode, "--quick on a CPU: compiled cases skipped (--compile-on-cpu)")
                continue
            label = f"flux {mode}"
            built = await self.engine(
                label,
                plan.flux_profile,
                compiled=compiled,
                max_batch=max(batches),
                buckets=batches,
                family="flux",
            )
            if built is None:
                self.skip("f", mode, f"the engine '{label}' was not built")
                continue
            engine, features = built
            try:

                async def measure(
                    engine: Any = engine,
                    features: Any = features,
                    batches: tuple[int, ...] = batches,
                    compiled: bool = compiled,
                ) -> dict[str, Any]:
                    return await throughput(
                        engine,
                        features,
                        size=plan.flux_size,
                        steps=plan.flux_steps,
                        batches=batches,
                        repeats=plan.repeats,
                        remaining=self.remaining,
                        flops=flops,
                        peak_tflops=self.peak,
                        compile_estimate_s=self.compile_estimate(compiled),
                    )

                await self.part("f", mode, measure)
            finally:
                await close_engine(engine)
                if compiled:
                    torch.compiler.reset()

    def compile_estimate(self, compiled: bool) -> float:
        """What a new batch size's first render may add: a compile, unless the engine's own
        warm-up compiled every bucket already."""
        return self.plan.compile_estimate_s if compiled and not self.plan.engine_warmup else 0.0

    async def throughput(self, engine: Any, features: Any, compiled: bool) -> dict[str, Any]:
        plan = self.plan
        return await throughput(
            engine,
            features,
            size=plan.size,
            steps=plan.steps,
            batches=plan.compiled_batches if compiled else plan.batches,
            repeats=plan.repeats,
            remaining=self.remaining,
            flops=self.flops,
            peak_tflops=self.peak,
            compile_estimate_s=self.compile_estimate(compiled),
        )

    async def batching(self, engine: Any, features: Any, ctx: BenchContext) -> dict[str, Any]:
        args = self.render_args(
            concurrency=[self.plan.concurrency], batch_repeats=self.plan.batch_rounds
        )
        section = await batching.measure(engine, features, ctx, args)
        return {
            "level": section["levels"][0],
            "same_images_together_and_alone": section["same_images_together_and_alone"],
            "settings": section["settings"],
            "notes": section["notes"],
        }


def main(argv: list[str] | None = None) -> int:
    global _STARTED, _RUNS
    if _RUNS:  # another run in the same process (tests): its own clock
        _STARTED = time.perf_counter()
    _RUNS += 1
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:
        torch.set_num_threads(1)  # tiny models gain nothing from more on a shared CPU
    bench = GpuBench(make_plan(args), args, argv)
    asyncio.run(bench.run())
    bench.log(f"results: {bench.path} and {bench.path.with_suffix('.md')}")
    for head in bench.results["headlines"]:
        value = head["value"]
        shown = "–" if value is None else f"{value:.4g}"
        bench.log(
            f"  {head['section']}. {head['figure']}: {shown}  (target {head['target'] or '–'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
