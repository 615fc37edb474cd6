"""The in-process job dispatcher: claims jobs from the database queue and renders them.

Shape (after RoboDanny's reminder loop): one loop waits on an ``asyncio.Event`` set when a job
is enqueued (and polls every ``poll_seconds`` for jobs queued by other processes), claims the
next job fairly (db/queue.py), and runs it in a task, up to ``concurrency`` at a time so the
engine can batch them. While a job runs its lease is renewed; a renewal that fails means the
job was cancelled, deleted or reaped, and the render is abandoned without writing anything.

Outcomes, each one transaction: ``done`` with its outputs; ``failed`` with a user-safe error
and the refund; a graceful stop puts running jobs back in the queue without counting the
attempt. A crash leaves the job ``running``; at the next start (or when its lease runs out,
for another worker) it is requeued, or failed and refunded after ``MAX_ATTEMPTS`` tries.
Expired outputs are purged every ``maintenance_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.errors import AvatarbotError, InternalError
from bot.services.avatars import AvatarService
from bot.services.crypto import DataCipher
from bot.services.events import JobObserver, ObserverHub
from bot.services.jobs import OUTPUT_PURPOSE, JobService
from bot.services.ledger import refund
from bot.services.ports import EnginePort, RenderOutput, RenderSpec
from bot.services.prompts import styled_prompt
from bot.services.results import JobView, RenderSettings
from db import queue
from db.models import JobStatus
from db.repositories import jobs as jobs_repo
from db.repositories.jobs import NewOutput
from db.session import Database
from db.types import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatcherConfig:
    concurrency: int = 1
    lease_seconds: float = 30.0
    poll_seconds: float = 5.0
    job_timeout_seconds: float = 900.0
    maintenance_seconds: float = 600.0
    # Adopt every running job at start, whatever its lease: only when this process is the
    # queue's sole worker (the embedded SQLite default).
    exclusive: bool = False


@dataclass(frozen=True)
class _Claim:
    id: int
    user_id: int
    avatar_id: int | None
    prompt: str
    settings: RenderSettings


def make_worker_id() -> str:
    """Unique per process incarnation (see db/queue.py)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class JobDispatcher:
    def __init__(
        self,
        database: Database,
        engine: EnginePort,
        jobs: JobService,
        avatars: AvatarService,
        cipher: DataCipher,
        config: DispatcherConfig = DispatcherConfig(),
        worker_id: str | None = None,
    ) -> None:
        self._db = database
        self._engine = engine
        self._jobs = jobs
        self._avatars = avatars
        self._cipher = cipher
        self.config = config
        self.worker_id = worker_id or make_worker_id()
        self._hub = ObserverHub()
        self._wakeup = asyncio.Event()
        # Per running job: its render task (what cancellation stops) and the task running
        # ``_run`` (what ``stop`` waits for).
        self._renders: dict[int, asyncio.Task[RenderOutput]] = {}
        self._owners: dict[int, asyncio.Task[object]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._last_maintenance = 0.0

    # -- public API ------------------------------------------------------------------------

    def add_observer(self, observer: JobObserver) -> Callable[[], None]:
        """Register an observer; returns a function that unregisters it."""
        return self._hub.add(observer)

    def wake(self, job_id: int | None = None) -> None:
        """A job was enqueued: look at the queue now rather than at the next poll."""
        self._wakeup.set()

    def job_cancelled(self, job_id: int) -> None:
        """A job was cancelled (already refunded): abandon its render if it runs here."""
        render = self._renders.get(job_id)
        if render is not None:
            render.cancel()
        task = asyncio.get_running_loop().create_task(self._announce_finished(job_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def started(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        """Recover jobs a crash left behind, purge expired outputs, then run the loop."""
        if self.started:
            return
        self._stopping = False
        await self._maintain(at_start=True)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="dispatcher")
        logger.info("dispatcher %s started", self.worker_id)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, put running jobs back in the queue, wait for hooks (bounded)."""
        was_running = self.started or bool(self._owners)
        self._stopping = True
        self._wakeup.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for render in list(self._renders.values()):
            render.cancel()
        owners = [t for t in self._owners.values() if t is not asyncio.current_task()]
        if owners:
            await asyncio.wait(owners, timeout=grace)
        await self._hub.drain(grace)
        if was_running:
            logger.info("dispatcher %s stopped", self.worker_id)

    async def run_once(self) -> int | None:
        """Claim and run one job to its end in this task; its id, or None if none was queued.
        (Tests and one-shot tools; the loop does the same with ``concurrency`` tasks.)"""
        claim = await self._claim()
        if claim is None:
            return None
        await self._run(claim)
        return claim.id

    async def wait_finished(self, job_id: int, within: float | None = None) -> JobView:
        """Wait until ``job_id`` is done, failed or cancelled (the loop must be running)."""
        deadline = None if within is None else time.monotonic() + within
        while True:
            view = await self._jobs.view(job_id)
            if view.finished:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {view.status} after {within} s")
            await asyncio.sleep(0.05)

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self.config.concurrency)
        backoff = 0.5
        while not self._stopping:
            await slots.acquire()
            # Cleared before claiming, so an enqueue committed after this claim's snapshot
            # still wakes the wait below.
            self._wakeup.clear()
            try:
                claim = await self._claim()
                backoff = 0.5
            except Exception:
                slots.release()
                logger.exception("claiming a job failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if claim is None:
                slots.release()
                await self._idle()
                continue
            task = asyncio.get_running_loop().create_task(self._run(claim), name=f"job-{claim.id}")
            self._background.add(task)  # the loop holds tasks only weakly
            task.add_done_callback(self._background.discard)
            task.add_done_callback(lambda _t: slots.release())

    async def _idle(self) -> None:
        """Wait for a wake-up or the poll interval; run maintenance when it is due."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self.config.poll_seconds)
        if time.monotonic() - self._last_maintenance >= self.config.maintenance_seconds:
            try:
                await self._maintain(at_start=False)
            except Exception:
                logger.exception("queue maintenance failed")

    async def _maintain(self, *, at_start: bool) -> None:
        self._last_maintenance = time.monotonic()
        report = await self._jobs.recover(all_running=at_start and self.config.exclusive)
        for view in report.requeued:
            self._hub.requeued(view)
        for view in report.given_up:
            self._hub.finished(view)
        await self._jobs.purge_expired()

    async def _claim(self) -> _Claim | None:
        async with self._db.begin() as session:
            job = await queue.claim_next(
                session,
                worker_id=self.worker_id,
                lease_seconds=self.config.lease_seconds,
                now=utcnow(),
            )
            if job is None:
                return None
            view = (await self._jobs.views_in(session, [job]))[0]
        self._hub.started(view)
        return _Claim(job.id, job.user_id, job.avatar_id, job.prompt, view.settings)

    # -- one job ---------------------------------------------------------------------------

    async def _run(self, claim: _Claim) -> None:
        """Render one claimed job and write its outcome.

        The render runs in a task of its own, the only thing a job cancellation, a lost lease
        or ``stop`` cancels; the writes after it are never cut off midway.
        """
        if self._stopping:  # claimed just as ``stop`` began: not ours to start any more
            await self._requeue(claim.id)
            return
        loop = asyncio.get_running_loop()
        progress = [0.0]
        render = loop.create_task(
            asyncio.wait_for(self._render(claim, progress), self.config.job_timeout_seconds),
            name=f"render-{claim.id}",
        )
        self._renders[claim.id] = render
        owner = asyncio.current_task()
        if owner is not None:
            self._owners[claim.id] = owner
        keeper = loop.create_task(self._keep_lease(claim.id, render, progress))
        try:
            try:
                output = await render
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._stopping or (current is not None and current.cancelling()):
                    await self._requeue(claim.id)
                    raise
                # Cancelled, deleted or reaped: whoever did it wrote the final state.
                logger.info("job %s abandoned (cancelled, deleted or lease lost)", claim.id)
                return
            except TimeoutError:
                await self._fail(claim, "timeout", "The render took too long and was stopped.")
                return
            except AvatarbotError as exc:
                await self._fail(claim, exc.code, exc.message)
                return
            except Exception:
                error = InternalError()
                logger.exception(
                    "job %s of user %s failed (reference %s)",
                    claim.id,
                    claim.user_id,
                    error.reference,
                )
                await self._fail(claim, "internal_error", error.message)
                return
            keeper.cancel()
            await self._complete(claim, output.pngs, output.seeds, dict(output.timings))
        finally:
            keeper.cancel()
            self._renders.pop(claim.id, None)
            self._owners.pop(claim.id, None)

    async def _render(self, claim: _Claim, progress: list[float]) -> RenderOutput:
        if claim.avatar_id is None:
            raise AvatarbotError("The avatar of this render was deleted.", code="avatar_deleted")
        s = claim.settings
        started = time.perf_counter()
        features = await self._avatars.features_for(claim.avatar_id, s.personalizer)
        prompt, negative = styled_prompt(claim.prompt, s.negative_prompt, s.style)
        spec = RenderSpec(
            prompt=prompt,
            negative_prompt=negative,
            width=s.width,
            height=s.height,
            steps=s.steps,
            guidance=s.guidance,
            seed=s.seed,
            count=s.count,
            identity_strength=s.identity_strength,
            personalizer=s.personalizer,
        )

        def on_progress(fraction: float) -> None:
            progress[0] = fraction
            self._hub.progress(claim.id, fraction)

        output = await self._engine.render(spec, features, on_progress)
        logger.info("job %s rendered in %.2f s", claim.id, time.perf_counter() - started)
        return output

    async def _keep_lease(
        self, job_id: int, render: asyncio.Task[RenderOutput], progress: list[float]
    ) -> None:
        """Renew the lease (recording progress) until cancelled; abandon the job if lost."""
        interval = max(min(self.config.lease_seconds / 3, 2.0), 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._db.begin() as session:
                    held = await queue.renew_lease(
                        session,
                        job_id,
                        self.worker_id,
                        self.config.lease_seconds,
                        utcnow(),
                        progress=progress[0],
                    )
            except Exception:
                # A transient database error: keep rendering; the next renewal may succeed and
                # the lease (3 renewal intervals) covers the gap.
                logger.exception("renewing the lease of job %s failed", job_id)
                continue
            if not held:
                logger.info("job %s is no longer ours; abandoning its render", job_id)
                render.cancel()
                return

    async def _complete(
        self,
        claim: _Claim,
        pngs: tuple[bytes, ...],
        seeds: tuple[int, ...],
        timings: dict[str, float],
    ) -> None:
        now = utcnow()
        s = claim.settings
        async with self._db.begin() as session:
            finished = await queue.finish_job(
                session,
                claim.id,
                worker_id=self.worker_id,
                status=JobStatus.DONE,
                now=now,
                timings=timings,
            )
            if finished is None:
                logger.info("job %s finished after it was taken away; output dropped", claim.id)
                return
            await jobs_repo.add_outputs(
                session,
                claim.id,
                [
                    NewOutput(self._cipher.seal(png, OUTPUT_PURPOSE), seed, s.width, s.height)
                    for png, seed in zip(pngs, seeds, strict=True)
                ],
                now,
            )
            view = (await self._jobs.views_in(session, [finished]))[0]
        self._hub.finished(view)

    async def _fail(self, claim: _Claim, code: str, message: str) -> None:
        now = utcnow()
        async with self._db.begin() as session:
            finished = await queue.finish_job(
                session,
                claim.id,
                worker_id=self.worker_id,
                status=JobStatus.FAILED,
                now=now,
                error_code=code[:64],
                error=message,
            )
            if finished is None:
                return
            await refund(session, finished, now, note=f"failed: {code}")
            view = (await self._jobs.views_in(session, [finished]))[0]
        logger.info("job %s failed (%s), refunded", claim.id, code)
        self._hub.finished(view)

    async def _requeue(self, job_id: int) -> None:
        """Graceful stop: back to the queue; the interrupted attempt does not count."""
        try:
            async with self._db.begin() as session:
                await jobs_repo.requeue_own(session, job_id, self.worker_id)
        except Exception:
            logger.exception("could not requeue job %s at stop; its lease will expire", job_id)

    async def _announce_finished(self, job_id: int) -> None:
        try:
            view = await self._jobs.view(job_id)
        except AvatarbotError:
            return
        if view.finished:
            self._hub.finished(view)
