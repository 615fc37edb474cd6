"""The worker's scheduling, with a fake model: batching, progress, cancellation, failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import pytest
import torch

from engine import EngineClosed, InvalidRequest, MissingWeights, RenderRequest, RenderResult
from engine.personalizers.base import BatchOutcome, StepCallback
from engine.worker import Worker

# Every wait on another task or thread is bounded: a hang fails the test instead of stalling it.
WAIT_S = 10.0


class FakeRunner:
    """Renders "images" named after their seeds; can pause, fail or run out of memory.

    ``hold_at``: before reporting that step, the runner sets ``held`` and waits for ``release``,
    so a test can act while a batch is known to be mid-run. ``steps_run`` records, per batch,
    how many steps it reported before it returned.
    """

    def __init__(self, hold_at: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.steps_run: list[int] = []
        self.fail_prompt = "boom"
        self.oom_above: int | None = None
        self.threads: set[int] = set()
        self.hold_at = hold_at
        self.held = threading.Event()
        self.release = threading.Event()

    def key(self, request: RenderRequest) -> Hashable:
        if request.prompt == "invalid":
            raise InvalidRequest("refused by key")
        return request.batch_key

    def run(
        self, samples: Sequence[RenderRequest], seeds: Sequence[int], on_step: StepCallback
    ) -> BatchOutcome:
        self.threads.add(threading.get_ident())
        self.batches.append(list(seeds))
        if self.oom_above is not None and len(samples) > self.oom_above:
            raise torch.OutOfMemoryError("fake: out of memory")
        if any(s.prompt == self.fail_prompt for s in samples):
            raise RuntimeError("boom")
        steps = samples[0].steps
        alive = list(range(len(samples)))
        for step in range(steps):
            if step + 1 == self.hold_at:
                self.held.set()
                self.release.wait(WAIT_S)
            wanted = on_step(step + 1, steps)
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


def _req(seed: int, count: int = 1, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {"prompt": "p", "width": 64, "height": 64, "steps": 3}
    values.update(kw)
    return RenderRequest(seed=seed, count=count, **values)


def _worker(runner: FakeRunner, max_batch: int = 4, window_ms: int = 50) -> Worker:
    return Worker(runner, max_batch=max_batch, gather_window_ms=window_ms)


async def _wait_thread_event(event: threading.Event) -> None:
    """Wait, without blocking the loop, for an event set on another thread (bounded)."""
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.run_in_executor(None, event.wait, WAIT_S), WAIT_S + 5)


def _block_worker(worker: Worker) -> tuple[asyncio.Task[Any], threading.Event, threading.Event]:
    """Occupy the worker thread: (the task, set once the thread is busy, the gate to free it)."""
    busy, gate = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        gate.wait(WAIT_S)

    return asyncio.create_task(worker.call(hold)), busy, gate


def _track_queue(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> Callable[[int], Awaitable[None]]:
    """A wait until ``n`` jobs have reached the worker's queue since this call."""
    queued = 0
    changed = asyncio.Event()
    enqueue = worker._enqueue

    def counting(job: Any) -> None:
        nonlocal queued
        enqueue(job)
        queued += 1
        changed.set()

    monkeypatch.setattr(worker, "_enqueue", counting)

    async def until(n: int) -> None:
        async def wait() -> None:
            while queued < n:
                changed.clear()
                await changed.wait()

        await asyncio.wait_for(wait(), WAIT_S)

    return until


async def test_compatible_requests_share_a_batch_up_to_max_batch() -> None:
    runner = FakeRunner()
    worker = _worker(runner, max_batch=4)
    requests = [_req(1), _req(10, count=2), _req(20, width=128), _req(30), _req(40)]
    results = await asyncio.gather(*(worker.submit(r) for r in requests))
    await worker.aclose()
    assert [r.images for r in results] == [
        ["img-1"],
        ["img-10", "img-11"],
        ["img-20"],
        ["img-30"],
        ["img-40"],
    ]
    # 4 compatible images fill the first batch; the other size and the overflow wait.
    assert runner.batches == [[1, 10, 11, 30], [20], [40]]
    assert results[0].timings["batch_images"] == 4.0
    assert len(runner.threads) == 1


async def test_a_lone_request_on_an_idle_worker_skips_the_gather_window() -> None:
    # A 60 s window: waiting it would trip wait_for; a burst still batches.
    runner = FakeRunner()
    worker = _worker(runner, max_batch=4, window_ms=60_000)
    alone = await asyncio.wait_for(worker.submit(_req(1)), timeout=30)
    assert alone.timings["batch_images"] == 1.0
    await asyncio.wait_for(worker.call(lambda: None), timeout=30)  # the worker is idle again
    burst = [_req(10), _req(20), _req(30), _req(40)]  # fills max_batch: no window either
    results = await asyncio.wait_for(asyncio.gather(*(worker.submit(r) for r in burst)), timeout=30)
    await worker.aclose()
    assert runner.batches == [[1], [10, 20, 30, 40]]
    assert all(r.timings["batch_images"] == 4.0 for r in results)


async def test_progress_arrives_on_the_callers_loop_in_order() -> None:
    runner = FakeRunner()
    worker = _worker(runner)
    seen: list[tuple[float, int]] = []
    await worker.submit(_req(1, steps=4), lambda f: seen.append((f, threading.get_ident())))
    await worker.aclose()
    fractions = [f for f, _ in seen]
    assert fractions[:4] == [0.25, 0.5, 0.75, 1.0] and fractions[-1] == 1.0
    assert {thread for _, thread in seen} == {threading.get_ident()}


async def test_cancel_before_the_batch_drops_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = FakeRunner()
    worker = _worker(runner)
    queued = _track_queue(worker, monkeypatch)
    blocker, busy, gate = _block_worker(worker)
    await _wait_thread_event(busy)
    doomed = asyncio.create_task(worker.submit(_req(7)))
    kept = asyncio.create_task(worker.submit(_req(8, width=128)))
    await queued(3)  # the blocker, then both renders wait behind it
    doomed.cancel()
    gate.set()
    await blocker
    result = await kept
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await worker.aclose()
    assert result.images == ["img-8"]
    assert runner.batches == [[8]]


async def test_cancel_during_the_batch_keeps_the_others() -> None:
    # The batch pauses before step 2 until the cancellation (sent at step 1) has landed.
    runner = FakeRunner(hold_at=2)
    worker = _worker(runner)
    tasks: list[asyncio.Task[RenderResult]] = []

    def cancel_second(fraction: float) -> None:
        if fraction < 1.0:
            tasks[1].cancel()

    tasks.append(asyncio.create_task(worker.submit(_req(1, steps=6), cancel_second)))
    tasks.append(asyncio.create_task(worker.submit(_req(2, steps=6))))
    tasks.append(asyncio.create_task(worker.submit(_req(3, steps=6))))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(tasks[1], WAIT_S)
    runner.release.set()
    first = await asyncio.wait_for(tasks[0], WAIT_S)
    third = await asyncio.wait_for(tasks[2], WAIT_S)
    await worker.aclose()
    assert runner.steps_run == [6]  # the survivors ran to the end
    assert runner.batches == [[1, 2, 3]]
    assert (first.images, third.images) == (["img-1"], ["img-3"])


async def test_a_batch_whose_requests_are_all_cancelled_stops_early() -> None:
    # How long the stop takes is measured by bench/worker_cancel.py; here: how many steps ran.
    runner = FakeRunner(hold_at=1)
    worker = _worker(runner)
    task = asyncio.create_task(worker.submit(_req(1, steps=40)))
    await _wait_thread_event(runner.held)  # the batch is running, paused before step 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT_S)
    runner.release.set()
    await asyncio.wait_for(worker.call(lambda: None), WAIT_S)  # the worker is free again
    # The run stopped at the first step after the cancellation, not after all 40.
    assert runner.steps_run == [1]
    after = await asyncio.wait_for(worker.submit(_req(5)), WAIT_S)
    await worker.aclose()
    assert after.images == ["img-5"]
    assert runner.steps_run == [1, 3]


async def test_a_failing_request_does_not_fail_its_batch_mates() -> None:
    runner = FakeRunner()
    worker = _worker(runner)
    outcomes = await asyncio.gather(
        worker.submit(_req(1)),
        worker.submit(_req(2, prompt="boom")),
        worker.submit(_req(3)),
        worker.submit(_req(4, prompt="invalid")),
        return_exceptions=True,
    )
    later = await worker.submit(_req(9))
    await worker.aclose()
    assert isinstance(outcomes[0], RenderResult) and outcomes[0].images == ["img-1"]
    assert isinstance(outcomes[1], RuntimeError)
    assert isinstance(outcomes[2], RenderResult) and outcomes[2].images == ["img-3"]
    assert isinstance(outcomes[3], InvalidRequest)
    assert later.images == ["img-9"]
    # The whole batch, then each request alone to isolate the failure.
    assert runner.batches[:4] == [[1, 2, 3], [1], [2], [3]]


async def test_out_of_memory_splits_the_batch_once() -> None:
    runner = FakeRunner()
    runner.oom_above = 2
    worker = _worker(runner)
    results = await asyncio.gather(*(worker.submit(_req(s)) for s in (1, 2, 3, 4)))
    await worker.aclose()
    assert [r.images for r in results] == [["img-1"], ["img-2"], ["img-3"], ["img-4"]]
    assert runner.batches == [[1, 2, 3, 4], [1, 2], [3, 4]]


async def test_out_of_memory_after_the_split_fails_the_requests() -> None:
    runner = FakeRunner()
    runner.oom_above = 0
    worker = _worker(runner)
    outcomes = await asyncio.gather(
        worker.submit(_req(1)), worker.submit(_req(2)), return_exceptions=True
    )
    ok = await worker.call(lambda: "alive")
    await worker.aclose()
    assert all(isinstance(o, torch.OutOfMemoryError) for o in outcomes)
    assert ok == "alive"


async def test_close_refuses_new_and_pending_work(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = FakeRunner()
    worker = _worker(runner)
    queued = _track_queue(worker, monkeypatch)
    blocker, busy, gate = _block_worker(worker)
    await _wait_thread_event(busy)
    pending = asyncio.create_task(worker.submit(_req(1)))
    await queued(2)  # the blocker, then the render waiting behind it
    closing = asyncio.create_task(worker.aclose())
    # Closing refuses the queued render while the worker is still busy with the blocker.
    await asyncio.wait({pending}, timeout=WAIT_S)
    assert pending.done() and not blocker.done()
    gate.set()
    await closing
    await blocker
    with pytest.raises(EngineClosed):
        await pending
    with pytest.raises(EngineClosed):
        await worker.submit(_req(2))
    assert runner.batches == []


async def test_setup_failure_reaches_every_caller() -> None:
    def setup() -> None:
        raise MissingWeights("base model", "/nowhere", "Check the path.")

    worker = Worker(FakeRunner(), max_batch=2, gather_window_ms=0, setup=setup)
    with pytest.raises(MissingWeights):
        await worker.call(lambda: None)
    with pytest.raises(MissingWeights):
        await worker.submit(_req(1))
    await worker.aclose()
