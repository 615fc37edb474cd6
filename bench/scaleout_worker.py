"""One render worker process of the scale-out benchmark (bench/scaleout.py).

    python -m bench.scaleout_worker PG_URL RENDER_SECONDS [--render-log FILE] [--lease S] [--reap S]

Builds the services on PostgreSQL with ``FixedTimeEngine`` (a render is a fixed sleep, so the
benchmark measures the queue and the job runtime, not the CPU), starts the LISTEN/NOTIFY
listener and the job loop with one slot, prints ``READY <worker id> <pid>`` once the loop runs
and keeps running until SIGTERM or SIGINT; then it stops the loop (``Services.aclose``),
prints ``STOPPED <renders> <encodes>`` and exits 0. ``--render-log`` appends one line per
finished render to FILE (the fault-injection soak, bench/soak.py, counts renders per job from
these files); ``--lease`` and ``--reap`` set the job loop's lease and reap periods.

This module and the engine below import only ``bot.services``, ``bot.config`` and ``db``
(never torch): eight of these processes share a small machine in the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
import tempfile
import time
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
    PreviewCallback,
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
    ``render`` sleeps (reporting progress at the end) and returns ``spec.settings.count`` tiny PNGs.
    """

    def __init__(self, render_seconds: float, render_log: Path | None = None) -> None:
        self.render_seconds = render_seconds
        # The soak's record (bench/soak.py): one ``<seed> <unix time>`` line per finished
        # render, the file opened in append mode per line (a SIGKILL cuts one line at most).
        # The soak gives every job its own seed, so the lines count each job's renders.
        self.render_log = render_log
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

    async def likeness_reference(
        self,
        images: Sequence[Image.Image],
        kind: SubjectKind,
        face_embeddings: Sequence[tuple[float, ...]] = (),
    ) -> EncodedFeatures | None:
        return None  # it publishes no likeness methods: never asked

    async def render(
        self,
        spec: RenderSpec,
        features: bytes,
        progress: ProgressCallback | None = None,
        *,
        extra_subjects: Sequence[bytes] = (),
        preview: PreviewCallback | None = None,
    ) -> RenderOutput:
        # No latents, so no live previews (``preview`` is never called).
        await asyncio.sleep(self.render_seconds)
        if progress is not None:
            progress(1.0)
        self.renders += 1
        seeds = tuple(spec.settings.seed + i for i in range(spec.settings.count))
        if self.render_log is not None:
            with self.render_log.open("a") as log:
                log.write(f"{seeds[0] if seeds else -1} {time.time():.6f}\n")
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


LEASE_SECONDS = 30.0
REAP_SECONDS = 5.0


def worker_config(
    lease_seconds: float = LEASE_SECONDS, reap_seconds: float = REAP_SECONDS
) -> DispatcherConfig:
    """One job at a time per process: N processes are N render slots."""
    return DispatcherConfig(
        concurrency=1, lease_seconds=lease_seconds, reap_seconds=reap_seconds, poll_seconds=5.0
    )


async def serve(database_url: str, engine: FixedTimeEngine, config: DispatcherConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    database = Database.from_url(database_url)
    # As ``avatarbot worker`` starts: started while the database is down, it waits for it.
    await database.wait_until_reachable()
    with tempfile.TemporaryDirectory(prefix="avatarbot-scaleout-") as tmp:
        settings = bench_settings(Path(tmp), database_url)
        services = await build_services(settings, database, engine, dispatcher_config=config)
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
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout_worker")
    parser.add_argument("pg_url")
    parser.add_argument("render_seconds", type=float)
    parser.add_argument("--render-log", type=Path, default=None)
    parser.add_argument("--lease", type=float, default=LEASE_SECONDS)
    parser.add_argument("--reap", type=float, default=REAP_SECONDS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    engine = FixedTimeEngine(args.render_seconds, args.render_log)
    return asyncio.run(serve(args.pg_url, engine, worker_config(args.lease, args.reap)))


if __name__ == "__main__":
    raise SystemExit(main())
