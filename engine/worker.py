"""The worker: one thread owns the model on one device; the asyncio side only submits.

Render requests that are compatible (same ``key``) are gathered into one batch, up to
``max_batch`` images, waiting at most ``gather_window_ms`` for company, but only when company
is likely (see ``_gather``): a lone request reaching an idle engine starts after a short settle
(``SETTLE_S``), so the window costs nothing at low load. Each request gets its
progress (on its own event loop) and its images; cancelling the awaiting task drops the
request before its batch starts, or discards its rows when the batch is already running
(its batch mates' images are unaffected: they depend only on their own seeds). A failure
is isolated: a failing batch of several requests is retried one request at a time, and on
out-of-memory the batch is split in two and retried once. ``call`` runs any other model work
(encode, inspect) on the same thread, in submission order with the renders. A request submitted
with a ``preview`` callback gets small live previews of its images while it denoises, at most
one every ``preview_interval_s`` (engine/preview.py); they are handed over, never kept.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from engine.errors import EngineClosed, EngineError, RequestCancelled, UnknownPersonalizer
from engine.personalizers.base import BatchOutcome, StepCallback
from engine.types import RenderRequest, RenderResult

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Requests submitted in the same event-loop turn (an ``asyncio.gather``, a burst of claims)
# reach the queue within microseconds: this short wait lets them share a batch without
# charging the whole gather window to every lone request.
SETTLE_S = 0.002
Progress = Callable[[float], None]
# Live previews of a request's images (in seed order; a cancelled batch mate's are left out).
Preview = Callable[[list["Image"]], None]
# Previews are worth a Discord message edit: at most one every few seconds by default.
PREVIEW_INTERVAL_S = 3.0


class BatchRunner(Protocol):
    """What the worker needs from the engine."""

    def key(self, request: RenderRequest) -> Hashable:
        """The batch compatibility key; raises for a request that cannot be rendered."""
        ...

    def run(
        self, samples: Sequence[RenderRequest], seeds: Sequence[int], on_step: StepCallback
    ) -> BatchOutcome: ...

    def result(
        self, request: RenderRequest, images: list[Any], timings: dict[str, float]
    ) -> RenderResult: ...


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the submitter's loop (thread-safe; ignores a gone future)."""

        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the submitter's loop is closed: nobody is waiting
            logger.debug("dropping a result for a closed event loop")


@dataclass(eq=False)
class _RenderJob(_Job):
    request: RenderRequest | None = None
    key: Hashable = None
    progress: Progress | None = None
    preview: Preview | None = None
    # Seconds since the render submitted before this one: a small gap means a burst.
    gap: float = float("inf")

    def report(self, fraction: float) -> None:
        if self.progress is not None:
            self._hand_over(self.progress, fraction, "progress")

    def show(self, images: list[Image]) -> None:
        if self.preview is not None and images:
            self._hand_over(self.preview, images, "preview")

    def _hand_over(self, callback: Callable[[T], None], value: T, what: str) -> None:
        """Call ``callback(value)`` on the submitter's loop, unless the job was cancelled."""
        if self.cancelled.is_set():
            return

        def call() -> None:
            try:
                callback(value)
            except Exception:  # a broken callback must not break the render
                logger.exception("%s callback failed", what)

        try:
            self.loop.call_soon_threadsafe(call)
        except RuntimeError:
            pass


@dataclass(eq=False)
class _CallJob(_Job):
    fn: Callable[[], Any] | None = None


class Worker:
    def __init__(
        self,
        runner: BatchRunner,
        *,
        max_batch: int,
        gather_window_ms: int,
        setup: Callable[[], None] | None = None,
        name: str = "avatarbot-engine",
        preview_interval_s: float = PREVIEW_INTERVAL_S,
    ) -> None:
        self._runner = runner
        self._preview_interval = preview_interval_s
        self._max_batch = max_batch
        self._window = gather_window_ms / 1000.0
        self._setup = setup
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._batch_ids = itertools.count(1)
        self._last_render_at = float("-inf")
        self._thread.start()

    # -- asyncio side ------------------------------------------------------------------------

    async def submit(
        self,
        request: RenderRequest,
        progress: Progress | None = None,
        preview: Preview | None = None,
    ) -> RenderResult:
        loop = asyncio.get_running_loop()
        job = _RenderJob(
            loop=loop,
            future=loop.create_future(),
            request=request,
            progress=progress,
            preview=preview,
        )
        result: RenderResult = await self._outcome(job)
        return result

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread (model work other than rendering)."""
        loop = asyncio.get_running_loop()
        value: T = await self._outcome(_CallJob(loop=loop, future=loop.create_future(), fn=fn))
        return value

    async def _outcome(self, job: _Job) -> Any:
        """Queue ``job`` and wait for its outcome. A caller that gives up drops its job before
        it starts, or has a running render's rows discarded."""
        self._enqueue(job)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancelled.set()
            job.future.cancel()  # nobody will read its outcome
            with self._cond:
                self._cond.notify_all()
            raise

    async def aclose(self) -> None:
        """Finish the batch in progress, refuse pending work, stop the thread."""
        with self._cond:
            self._closing = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            job.resolve(error=EngineClosed("the engine is shutting down"))
        await asyncio.to_thread(self._thread.join)

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            if self._closing:
                raise EngineClosed("the engine is shut down")
            if isinstance(job, _RenderJob):
                now = time.monotonic()
                job.gap = now - self._last_render_at
                self._last_render_at = now
            self._pending.append(job)
            self._cond.notify_all()

    # -- worker thread -----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self._setup is not None:
                self._setup()
        except BaseException as exc:  # no model: fail everything that comes
            # Precise already (an unknown personalizer names the known ones), and the caller
            # that waits for the setup (create_engine) gets it raised and reports it: logged
            # here too it would reach an operator twice.
            if isinstance(exc, EngineError | UnknownPersonalizer):
                logger.debug("engine worker setup failed: %s", exc)
            else:
                logger.exception("engine worker setup failed")
            self._fail_forever(exc)
            return
        while True:
            job = self._next_job()
            if job is None:
                return
            if isinstance(job, _CallJob):
                self._run_call(job)
            elif isinstance(job, _RenderJob):
                self._run_renders(self._gather(job))

    def _next_job(self) -> _Job | None:
        with self._cond:
            while True:
                while self._pending:
                    job = self._pending.popleft()
                    if job.cancelled.is_set():
                        job.resolve(error=RequestCancelled("cancelled before it started"))
                        continue
                    return job
                if self._closing:
                    return None
                self._cond.wait()

    def _gather(self, first: _RenderJob) -> list[_RenderJob]:
        """``first`` plus compatible pending renders.

        The full gather window is spent only when company is likely: a batch mate was already
        found, or ``first`` came within a window of the render before it (a burst, or load).
        Otherwise only ``SETTLE_S`` (same-turn submissions), so an idle engine adds no latency.
        """
        try:
            first.key = self._runner.key(_request(first))
        except Exception as exc:
            first.resolve(error=exc)
            return []
        batch = [first]
        size = _request(first).count
        started = time.monotonic()
        settle = started + min(self._window, SETTLE_S)
        full = started + self._window
        with self._cond:
            while size < self._max_batch:
                for job in list(self._pending):
                    if not isinstance(job, _RenderJob) or job.cancelled.is_set():
                        continue
                    if job.key is None:
                        try:
                            job.key = self._runner.key(_request(job))
                        except Exception as exc:
                            self._pending.remove(job)
                            job.resolve(error=exc)
                            continue
                    count = _request(job).count
                    if job.key == first.key and size + count <= self._max_batch:
                        self._pending.remove(job)
                        batch.append(job)
                        size += count
                likely = len(batch) > 1 or first.gap < self._window
                remaining = (full if likely else settle) - time.monotonic()
                if size >= self._max_batch or remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
        return batch

    def _run_renders(self, jobs: list[_RenderJob], *, may_split: bool = True) -> None:
        jobs = [job for job in jobs if not self._drop_if_cancelled(job)]
        if not jobs:
            return
        batch_id = next(self._batch_ids)
        samples = [_request(j) for j in jobs for _ in range(_request(j).count)]
        seeds = [seed for j in jobs for seed in _request(j).seeds]
        steps = samples[0].steps
        on_step = _BatchSteps(jobs, self._preview_interval)
        started = time.perf_counter()
        try:
            outcome = self._runner.run(samples, seeds, on_step)
        except torch.OutOfMemoryError as oom:
            _free_device_memory()
            if may_split and len(jobs) > 1:
                half = len(jobs) // 2
                logger.warning("out of memory on a batch of %d images: splitting", len(samples))
                self._run_renders(jobs[:half], may_split=False)
                self._run_renders(jobs[half:], may_split=False)
                return
            logger.exception("out of memory rendering batch %d", batch_id)
            for job in jobs:
                job.resolve(error=oom)
            return
        except Exception as exc:
            if len(jobs) > 1:
                # Find the culprit: the others must not fail with it.
                logger.warning(
                    "batch %d failed (%s): retrying its requests one by one", batch_id, exc
                )
                for job in jobs:
                    self._run_renders([job], may_split=False)
                return
            logger.exception("render failed")
            jobs[0].resolve(error=exc)
            return
        elapsed = time.perf_counter() - started
        logger.debug(
            "batch %d: %d requests, %d images, %d steps in %.3fs",
            batch_id,
            len(jobs),
            len(samples),
            steps,
            elapsed,
        )
        image_of = dict(zip(outcome.kept, outcome.images, strict=True))
        offset = 0
        for job in jobs:
            request = _request(job)
            positions = range(offset, offset + request.count)
            offset += request.count
            if self._drop_if_cancelled(job):
                continue
            images = [image_of[p] for p in positions if p in image_of]
            if len(images) != request.count:  # cannot happen: only whole requests leave
                job.resolve(error=RuntimeError("the batch lost this request's images"))
                continue
            timings = {
                "queued": started - job.submitted,
                "batch": elapsed,
                "batch_images": float(len(samples)),
            }
            job.report(1.0)
            job.resolve(self._runner.result(request, list(images), timings))

    def _run_call(self, job: _CallJob) -> None:
        assert job.fn is not None
        try:
            value = job.fn()
        except BaseException as exc:
            job.resolve(error=exc)
        else:
            job.resolve(value)

    @staticmethod
    def _drop_if_cancelled(job: _RenderJob) -> bool:
        if job.cancelled.is_set():
            job.resolve(error=RequestCancelled("the render was cancelled"))
            return True
        return False

    def _fail_forever(self, exc: BaseException) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            job.resolve(error=exc)


class _BatchSteps:
    """The step callback of one batch: progress to every request, which samples are still
    wanted, and (``PreviewingStepCallback``) previews to the requests that asked for them,
    at most one every ``interval`` seconds, the first after one interval."""

    def __init__(self, jobs: Sequence[_RenderJob], interval: float) -> None:
        self._jobs = list(jobs)
        self._interval = interval
        self._last_preview = time.monotonic()
        self._owners = [job for job in self._jobs for _ in range(_request(job).count)]

    def __call__(self, done: int, total: int) -> list[bool]:
        for job in self._jobs:
            job.report(done / total)
        return [not job.cancelled.is_set() for job in self._owners]

    def preview_due(self) -> bool:
        wanted = any(j.preview is not None and not j.cancelled.is_set() for j in self._jobs)
        return wanted and time.monotonic() - self._last_preview >= self._interval

    def preview(self, images: Mapping[int, Image]) -> None:
        self._last_preview = time.monotonic()
        for job in self._jobs:
            job.show([image for p, image in sorted(images.items()) if self._owners[p] is job])


def _request(job: _RenderJob) -> RenderRequest:
    assert job.request is not None
    return job.request


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
