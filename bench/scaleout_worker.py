"""One render worker process of the scale-out benchmark (bench/scaleout.py).

    python -m bench.scaleout_worker PG_URL RENDER_SECONDS

Builds the services on PostgreSQL with ``FixedTimeEngine`` (a render is a fixed sleep, so the
benchmark measures the queue and the job runtime, not the CPU), starts the LISTEN/NOTIFY
listener and the job loop with one slot, prints ``READY <worker id> <pid>`` once the loop runs
and keeps running until SIGTERM or SIGINT; then it stops the loop (``Services.aclose``),
prints ``STOPPED <renders> <encodes>`` and exits 0.

This module and the engine below import only ``bot.services``, ``bot.config`` and ``db``
(never torch): eight of these processes share a small machine in the benchmark.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from PIL import Image

from bot.config import QuotaDefaults, Settings
from bot.services.container import build_services
from bot.services.dispatcher import DispatcherConfig
from bot.services.ports import (
    EncodedFeatures,
    EngineFacts,
    OutputVerdict,
    ProgressCallback,
    RenderOutput,
    RenderSpec,
    SubjectKind,
    SubjectReport,
    TextScreenFacts,
)
from db.session import Database

PERSONALIZER = "ip-adapter"
ENCODER_ID = "fixed:1"
FEATURES = b"fixed-time-engine-features"
READY = "READY"
STOPPED = "STOPPED"


@cache
def tiny_png() -> bytes:
    """One 8x8 PNG, made once per process."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 140, 200)).save(out, "PNG")
    return out.getvalue()


class FixedTimeEngine:
    """An ``EnginePort`` whose render takes ``render_seconds`` of wall time and no CPU.

    ``inspect`` accepts every photo, ``encode`` returns fixed bytes tagged ``ENCODER_ID``,
    ``render`` sleeps (reporting progress at the end) and returns ``spec.count`` tiny PNGs.
    """

    def __init__(self, render_seconds: float) -> None:
        self.render_seconds = render_seconds
        self.renders = 0
        self.encodes = 0

    def facts(self) -> EngineFacts:
        return EngineFacts(
            profile="fixed-time",
            default_personalizer=PERSONALIZER,
            encoders={PERSONALIZER: ENCODER_ID},
            native_size=512,
            default_steps=4,
            max_prompt_tokens=75,
        )

    async def inspect(
        self, images: Sequence[Image.Image], kind: SubjectKind
    ) -> list[SubjectReport]:
        return [SubjectReport() for _ in images]

    async def encode(
        self, images: Sequence[Image.Image], kind: SubjectKind, personalizer: str
    ) -> EncodedFeatures:
        self.encodes += 1
        return EncodedFeatures(self.facts().encoder_id(personalizer), FEATURES)

    async def render(
        self,
        spec: RenderSpec,
        features: bytes,
        progress: ProgressCallback | None = None,
        *,
        extra_subjects: Sequence[bytes] = (),
    ) -> RenderOutput:
        await asyncio.sleep(self.render_seconds)
        if progress is not None:
            progress(1.0)
        self.renders += 1
        seeds = tuple(spec.seed + i for i in range(spec.count))
        return RenderOutput(
            pngs=tuple(tiny_png() for _ in seeds),
            seeds=seeds,
            timings={"render": self.render_seconds},
            # Its images are one blank pixel each: nothing to check, nothing flagged.
            verdicts=tuple(OutputVerdict(flagged=False, checkers=("fixed-time",)) for _ in seeds),
        )

    def text_screen(self) -> TextScreenFacts:
        # Like a random-weight profile: the semantic screen runs and decides nothing.
        return TextScreenFacts(encoder_id="fixed-time", thresholds=None, random_weights=True)

    async def embed_texts(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        return [(1.0,) for _ in texts]

    async def aclose(self) -> None:
        return None


def bench_settings(data_dir: Path, database_url: str) -> Settings:
    """Settings for every process of the benchmark: quotas high enough never to refuse."""
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        quotas=QuotaDefaults(
            renders_per_day=100_000,
            avatars_per_member=3,
            queued_per_member=1000,
            queued_per_guild=100_000,
            # The benchmark is one member flooding the queue on purpose.
            renders_per_minute=1000,
            creates_per_hour=1000,
        ),
        output_retention_hours=24,
    )


def worker_config(lease_seconds: float = 30.0) -> DispatcherConfig:
    """One job at a time per process: N processes are N render slots."""
    return DispatcherConfig(
        concurrency=1, lease_seconds=lease_seconds, reap_seconds=5.0, poll_seconds=5.0
    )


async def serve(database_url: str, render_seconds: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    engine = FixedTimeEngine(render_seconds)
    database = Database.from_url(database_url)
    with tempfile.TemporaryDirectory(prefix="avatarbot-scaleout-") as tmp:
        settings = bench_settings(Path(tmp), database_url)
        services = await build_services(
            settings, database, engine, dispatcher_config=worker_config()
        )
        try:
            await services.start()
            print(f"{READY} {services.dispatcher.worker_id} {os.getpid()}", flush=True)
            await stop.wait()
        finally:
            await services.aclose()
            await engine.aclose()
            await database.dispose()
    print(f"{STOPPED} {engine.renders} {engine.encodes}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.scaleout_worker PG_URL RENDER_SECONDS", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args[0], float(args[1])))


if __name__ == "__main__":
    raise SystemExit(main())
