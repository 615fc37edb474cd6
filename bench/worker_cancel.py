"""Worker cancellation: how long a running batch takes to stop once its only request is
cancelled, versus the time the whole run would take.

No model: a fake runner sleeps ``--step-ms`` per denoising step (40 steps by default), the way
``tests/engine/test_worker.py``'s FakeRunner renders. The request is cancelled once
``--cancel-after`` steps have run; the figure is the time from ``task.cancel()`` until the
worker is free again (a ``Worker.call`` returns), with the steps the runner actually ran. The
test only checks that the run stops early (steps run); this measures how quickly.

    python -m bench.worker_cancel --steps 40 --step-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

from bench.common import setup_logging, summary
from engine import RenderRequest, RenderResult
from engine.personalizers.base import BatchOutcome, StepCallback
from engine.worker import Worker

logger = logging.getLogger(__name__)

NAME = "worker_cancel"
WAIT_S = 60.0


class SlowRunner:
    """A FakeRunner-like runner: ``step_seconds`` per step; ``reached`` is set at step
    ``signal_at``; ``steps_run`` records how many steps each batch reported."""

    def __init__(self, step_seconds: float, signal_at: int) -> None:
        self.step_seconds = step_seconds
        self.signal_at = signal_at
        self.reached = threading.Event()
        self.steps_run: list[int] = []

    def key(self, request: RenderRequest) -> Hashable:
        return request.batch_key

    def run(
        self, samples: Sequence[RenderRequest], seeds: Sequence[int], on_step: StepCallback
    ) -> BatchOutcome:
        steps = samples[0].steps
        alive = list(range(len(samples)))
        for step in range(steps):
            time.sleep(self.step_seconds)
            wanted = on_step(step + 1, steps)
            if step + 1 == self.signal_at:
                self.reached.set()
            alive = [i for i in alive if wanted[i]]
            if not alive:
                self.steps_run.append(step + 1)
                return BatchOutcome(images=[], kept=[])
        self.steps_run.append(steps)
        return BatchOutcome(images=[f"img-{seeds[i]}" for i in alive], kept=alive)

    def result(
        self, request: RenderRequest, images: list[Any], timings: dict[str, float]
    ) -> RenderResult:
        return RenderResult(images, request.seeds, timings, request.personalizer)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--steps", type=int, default=40, help="denoising steps of the request")
    parser.add_argument("--step-ms", type=float, default=50.0, help="fake time per step")
    parser.add_argument(
        "--cancel-after", type=int, default=4, help="steps run before the cancellation"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed cancellations")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def _cancel_once(step_seconds: float, steps: int, cancel_after: int) -> tuple[float, int]:
    """(seconds from cancel() to a free worker, steps the runner ran)."""
    runner = SlowRunner(step_seconds, signal_at=cancel_after)
    worker = Worker(runner, max_batch=1, gather_window_ms=0)
    loop = asyncio.get_running_loop()
    try:
        request = RenderRequest(prompt="p", width=64, height=64, steps=steps, seed=1, count=1)
        task = asyncio.create_task(worker.submit(request))
        reached = loop.run_in_executor(None, runner.reached.wait, WAIT_S)
        if not await asyncio.wait_for(reached, WAIT_S + 5):
            raise RuntimeError(f"the run never reached step {cancel_after}")
        started = time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.wait_for(worker.call(lambda: None), WAIT_S)  # the worker is free
        elapsed = time.perf_counter() - started
    finally:
        await worker.aclose()
    return elapsed, runner.steps_run[0]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    step_seconds = args.step_ms / 1000.0
    times: list[float] = []
    steps_run: list[int] = []
    for _ in range(args.repeats):
        elapsed, ran = await _cancel_once(step_seconds, args.steps, args.cancel_after)
        times.append(elapsed)
        steps_run.append(ran)
    full_run_s = args.steps * step_seconds
    stats = summary(times)
    return {
        "description": "Time from cancelling a running request to a free worker (fake runner).",
        "cancel_to_free": stats,
        "steps_run": steps_run,
        "full_run_s": full_run_s,
        "remaining_run_s": (args.steps - args.cancel_after) * step_seconds,
        "settings": {
            "steps": args.steps,
            "step_ms": args.step_ms,
            "cancel_after": args.cancel_after,
            "repeats": args.repeats,
        },
    }


def main(argv: list[str] | None = None) -> float:
    """Print the figures; return the median seconds from cancel() to a free worker."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    section = asyncio.run(measure(args))
    median = float(section["cancel_to_free"]["median_s"])
    print(
        f"{NAME}: cancel -> free worker: median {median * 1000:.1f} ms "
        f"(max {section['cancel_to_free']['max_s'] * 1000:.1f} ms) over {args.repeats} runs; "
        f"steps run {section['steps_run']} of {args.steps}; "
        f"the full run takes {section['full_run_s']:.2f} s, "
        f"the rest after the cancel {section['remaining_run_s']:.2f} s"
    )
    return median


if __name__ == "__main__":
    main()
