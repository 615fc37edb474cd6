"""The job loop: the only one, in the embedded bot and in every ``avatarbot worker``.

One loop per process (after RoboDanny's reminder loop): it waits on a wake-up, claims the next
job fairly (db/queue.py) while it has free slots, and runs each claimed job in a task of its
own, up to ``concurrency`` at a time so the engine can batch them. Whatever it does, every
``reap_seconds`` it also requeues jobs whose lease expired (their worker died or hung), so a
killed worker's jobs run again within about one lease period, under load too. A loop with
``concurrency=0`` (the bot when separate workers render) claims nothing and only reaps and
purges.

While a job runs, its lease is renewed every ``min(lease/3, progress_seconds)``, recording its
progress and announcing it (the one progress throttle). A renewal that matches nothing means
the job was cancelled, deleted or reaped: the work is abandoned without writing anything.

Outcomes, each one transaction with its event: ``done`` with what the work produced; ``failed``
with a user-safe error and the refund; a stop puts running jobs back in the queue without
counting the attempt. A crash leaves the job ``running`` until its lease expires (or, for the
embedded SQLite worker, its next start adopts it): requeued, or failed and refunded after
``max_attempts`` tries.

Waiting is injectable (``Waker``): the default is an ``asyncio.Event``; the bot passes one built
on discord.py's ``wait_for`` so its test harness sees the wait for what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from bot.config import JobSettings
from bot.errors import AvatarbotError, InternalError
from bot.services.events import JobEvent, JobEventKind, JobEvents
from bot.services.failure_log import FailureLog, one_line
from bot.services.job_settings import CorruptJobSettings
from bot.services.job_work import Claim, JobWork, Outcome
from bot.services.jobs import JobService, release_failed
from bot.services.metrics_port import MetricsPort, NoMetrics
from bot.services.ports import ProgressCallback
from bot.services.results import JobView
from bot.services.workers import WorkerRegistry
from db import queue
from db.faults import is_transient
from db.repositories import jobs as jobs_repo
from db.session import Database
from db.types import utcnow
from kinds import JobKind, JobStatus

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# Retrying the database (claims, outcome writes): first soon, then at most this far apart,
# so work resumes within about RETRY_MAX_SECONDS once the database is back.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0


@dataclass(frozen=True)
class DispatcherConfig:
    # Jobs run at once; 0 = claim nothing (only reap and purge).
    concurrency: int = 1
    lease_seconds: float = 30.0
    reap_seconds: float = 10.0
    # A look at the queue without a wake-up (a lost notification, a clock-based retry).
    poll_seconds: float = 5.0
    progress_seconds: float = 1.5
    job_timeout_seconds: float = 900.0
    maintenance_seconds: float = 600.0
    max_attempts: int = 3
    # Adopt every running job at start, whatever its lease: only when this process is the
    # queue's sole worker (the embedded SQLite default).
    exclusive: bool = False

    @classmethod
    def from_settings(
        cls, jobs: JobSettings, *, concurrency: int, exclusive: bool = False
    ) -> DispatcherConfig:
        return cls(
            concurrency=concurrency,
            lease_seconds=jobs.lease_seconds,
            reap_seconds=jobs.reap_seconds,
            poll_seconds=jobs.poll_seconds,
            progress_seconds=jobs.progress_seconds,
            job_timeout_seconds=jobs.job_timeout_seconds,
            maintenance_seconds=jobs.maintenance_seconds,
            max_attempts=jobs.max_attempts,
            exclusive=exclusive,
        )


@dataclass(frozen=True)
class _Claimed:
    """A job this worker claimed: its kind's work and the work's typed run (None: no work
    for this kind)."""

    id: int
    kind: JobKind
    work: JobWork | None
    run: Claim | None


def _failing(error: InternalError) -> Claim:
    """The run of a job whose settings cannot be read: it fails with ``error``'s reference
    (logged at the claim), refunded like any failure."""

    async def run(progress: ProgressCallback) -> Outcome:
        raise error

    return run


class Waker(Protocol):
    """How the loop sleeps: ``wait`` returns True when ``wake`` was called since ``clear``,
    False when ``seconds`` passed first."""

    def wake(self) -> None: ...

    def clear(self) -> None: ...

    async def wait(self, seconds: float) -> bool: ...


class EventWaker:
    """The default ``Waker``: an ``asyncio.Event``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), max(seconds, 0.0))
        except TimeoutError:
            return False
        return True


def make_worker_id() -> str:
    """Unique per process incarnation (see db/queue.py)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class JobDispatcher:
    def __init__(
        self,
        database: Database,
        jobs: JobService,
        events: JobEvents,
        registry: WorkerRegistry,
        work: Mapping[JobKind, JobWork],
        config: DispatcherConfig = DispatcherConfig(),
        *,
        worker_id: str | None = None,
        waker: Waker | None = None,
        metrics: MetricsPort | None = None,
    ) -> None:
        self._db = database
        self._jobs = jobs
        self._events = events
        self._registry = registry
        self._work = dict(work)
        self.config = config
        self.worker_id = worker_id or make_worker_id()
        self._waker: Waker = waker or EventWaker()
        self.metrics: MetricsPort = metrics if metrics is not None else NoMetrics()
        # Per running job: the task doing its work (what a cancellation stops) and the task
        # running ``_run`` (what ``stop`` waits for).
        self._work_tasks: dict[int, asyncio.Task[Outcome]] = {}
        self._runs: dict[int, asyncio.Task[None]] = {}
        self._progress: dict[int, float] = {}
        # Per running job: until when (monotonic) its lease surely holds, from the claim or
        # the last renewal; outcome writes retry a blinking database until then.
        self._lease_until: dict[int, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._paused = False
        self._unsubscribe: Callable[[], None] | None = None
        self._next_reap = 0.0
        self._next_maintenance = 0.0

    # -- public API ------------------------------------------------------------------------

    @property
    def claims(self) -> bool:
        """True when this loop runs jobs (it has work and slots), False when it only reaps."""
        return self.config.concurrency > 0 and bool(self._work)

    @property
    def started(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def pause(self) -> None:
        """Claim nothing new (running jobs finish); requests still queue. For maintenance, and
        for the demo, which shows a job waiting in line."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._waker.wake()

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll."""
        self._waker.wake()

    async def start(self) -> None:
        """Register, recover what a crash left behind, purge expired outputs, run the loop."""
        if self.started:
            return
        self._stopping = False
        await self._registry.register(self.worker_id)
        self._unsubscribe = self._events.subscribe(self._on_event)
        await self._reap(at_start=True)
        await self._purge()
        now = time.monotonic()
        self._next_reap = now + self.config.reap_seconds
        self._next_maintenance = now + self.config.maintenance_seconds
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="dispatcher")
        logger.info(
            "job loop %s started (%s)",
            self.worker_id,
            f"{self.config.concurrency} slot(s)" if self.claims else "reaping only",
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, hand running jobs back to the queue (not counted as an attempt),
        wait (bounded) for those writes, and mark this loop stopped."""
        was_running = self.started or bool(self._runs)
        self._stopping = True
        self._waker.wake()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._loop_task is not None:
            # Not cancelled: a claim cut off between its commit and the start of its run
            # would leave a job running here that nobody hands back. Woken, the loop ends
            # after the step it is in; a job it claims meanwhile is handed back by ``_run``.
            done, _ = await asyncio.wait({self._loop_task}, timeout=grace)
            if not done:
                self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._work_tasks.values()):
            task.cancel()
        runs = [t for t in self._runs.values() if t is not asyncio.current_task()]
        if runs:
            await asyncio.wait(runs, timeout=grace)
        if was_running:
            try:
                await self._registry.stopped(self.worker_id)
            except Exception:
                logger.exception("could not mark job loop %s stopped", self.worker_id)
            logger.info("job loop %s stopped", self.worker_id)

    async def run_once(self) -> int | None:
        """Claim and run one job to its end in this task; its id, or None if none was queued.
        (One-shot tools and tests; the loop does the same with ``concurrency`` tasks.)"""
        claim = await self._claim()
        if claim is None:
            return None
        await self._run(claim)
        return claim.id

    async def run_job(self, job_id: int) -> JobView:
        """Run the queued jobs until ``job_id`` has run (one-shot tools, e.g. the CLI); its
        final view. Other members' jobs claimed first run too, in the fair order."""
        while True:
            view = await self._jobs.view(job_id)
            if view.finished:
                return view
            if await self.run_once() is None:
                view = await self._jobs.view(job_id)
                if view.finished:
                    return view
                # Not finished, yet nothing to claim: another worker holds it. Its reference
                # is shown to the user, so it is logged here, where it is raised.
                error = InternalError()
                logger.error(
                    "job %s is %s on another worker, not here (reference %s)",
                    job_id,
                    view.status,
                    error.reference,
                    stack_info=True,
                )
                raise error

    # -- the loop --------------------------------------------------------------------------

    def _on_event(self, job_event: JobEvent) -> None:
        if job_event.kind in (JobEventKind.ENQUEUED, JobEventKind.REQUEUED):
            self._waker.wake()
        elif job_event.kind is JobEventKind.CANCELLED:
            task = self._work_tasks.get(job_event.job_id)
            if task is not None:
                task.cancel()

    def _can_claim(self) -> bool:
        return (
            self.claims
            and not self._paused
            and not self._stopping
            and len(self._runs) < self.config.concurrency
        )

    async def _loop(self) -> None:
        # During an outage each step logs one line when it starts failing and one when it
        # works again (bot/services/failure_log.py), not a line per try.
        claiming = FailureLog(logger, "claiming jobs")
        reaping = FailureLog(logger, "reaping expired leases")
        purging = FailureLog(logger, "purging expired jobs")
        backoff = RETRY_FIRST_SECONDS
        while not self._stopping:
            now = time.monotonic()
            if now >= self._next_reap:
                self._next_reap = now + self.config.reap_seconds
                await _guarded(self._reap, reaping)
            if now >= self._next_maintenance:
                self._next_maintenance = now + self.config.maintenance_seconds
                await _guarded(self._purge, purging)
            if self._can_claim():
                # Cleared before claiming: an enqueue committed after this claim's snapshot
                # still wakes the wait below.
                self._waker.clear()
                try:
                    claim = await self._claim()
                except Exception as exc:
                    # Retried at most RETRY_MAX_SECONDS apart, so work resumes within about
                    # that once the database is back.
                    claiming.failed(exc)
                    await self._waker.wait(backoff)
                    backoff = min(backoff * 2, RETRY_MAX_SECONDS)
                    continue
                claiming.worked()
                backoff = RETRY_FIRST_SECONDS
                if claim is not None:
                    task = asyncio.get_running_loop().create_task(
                        self._run(claim), name=f"job-{claim.id}"
                    )
                    task.add_done_callback(_log_unexpected)
                    self._runs[claim.id] = task
                    continue
                deadline = min(self._next_reap, time.monotonic() + self.config.poll_seconds)
            else:
                self._waker.clear()
                deadline = self._next_reap
            deadline = min(deadline, self._next_maintenance)
            if self._stopping:  # set before its wake-up, which ``clear`` may have undone
                break
            await self._waker.wait(deadline - time.monotonic())

    async def _reap(self, *, at_start: bool = False) -> None:
        """Requeue (or give up on) jobs whose lease expired; tell the world we are alive."""
        await self._jobs.recover(
            all_running=at_start and self.config.exclusive,
            max_attempts=self.config.max_attempts,
        )
        if not at_start:
            await self._registry.heartbeat(self.worker_id)

    async def _purge(self) -> None:
        await self._jobs.purge_expired()

    async def _claim(self) -> _Claimed | None:
        started = time.monotonic()  # the lease is dated no earlier than this
        async with self._db.begin() as session:
            job = await queue.claim_next(
                session,
                worker_id=self.worker_id,
                lease_seconds=self.config.lease_seconds,
                now=utcnow(),
            )
            if job is None:
                return None
            await self._events.publish(session, JobEventKind.STARTED, job.id)
            self._lease_until[job.id] = started + self.config.lease_seconds
            kind = JobKind(job.kind)
            work = self._work.get(kind)
            run: Claim | None = None
            if work is not None:
                try:
                    run = work.claim(job, self._jobs.texts(job))
                except CorruptJobSettings:
                    error = InternalError()
                    logger.exception(
                        "job %s: its settings cannot be read (reference %s)",
                        job.id,
                        error.reference,
                    )
                    run = _failing(error)
            return _Claimed(job.id, kind, work, run)

    # -- one job ---------------------------------------------------------------------------

    async def _run(self, claim: _Claimed) -> None:
        """Do one claimed job's work and write its outcome.

        The work runs in a task of its own, the only thing a cancellation, a lost lease or
        ``stop`` cancels; the writes after it are never cut off midway.
        """
        current = asyncio.current_task()
        if current is not None:
            self._runs[claim.id] = current
        try:
            if self._stopping:  # claimed just as ``stop`` began: not ours to start any more
                await self._hand_back(claim.id)
                return
            # A loop without this kind of work never claims it: a bug.
            if claim.work is None or claim.run is None:
                error = InternalError()
                logger.error(
                    "job %s: no work for kind %s here (reference %s)",
                    claim.id,
                    claim.kind,
                    error.reference,
                )
                await self._fail(claim, error.code, error.message)
                return
            await self._execute(claim, claim.work, claim.run)
        finally:
            self._runs.pop(claim.id, None)
            self._progress.pop(claim.id, None)
            self._lease_until.pop(claim.id, None)
            self._waker.wake()  # a slot is free

    async def _execute(self, claim: _Claimed, work: JobWork, run: Claim) -> None:
        loop = asyncio.get_running_loop()
        self._progress[claim.id] = 0.0

        def on_progress(fraction: float) -> None:
            self._progress[claim.id] = fraction

        started = time.perf_counter()
        task: asyncio.Task[Outcome] = loop.create_task(
            asyncio.wait_for(run(on_progress), self.config.job_timeout_seconds),
            name=f"work-{claim.id}",
        )
        self._work_tasks[claim.id] = task
        # The lease keeper is told to stop, never cancelled: cancelled inside its renewal
        # transaction it could leave the connection mid-rollback (and SQLite's write lock
        # held) just when the outcome below needs it.
        keeping = asyncio.Event()
        keeper = loop.create_task(
            self._keep_lease(claim.id, task, keeping), name=f"lease-{claim.id}"
        )
        try:
            outcome: Outcome | None = None
            failure: tuple[str, str] | None = None
            cancelled = blinked = False
            try:
                outcome = await task
            except asyncio.CancelledError:
                cancelled = True
            except TimeoutError:
                failure = ("timeout", "The job took too long and was stopped.")
            except AvatarbotError as exc:
                failure = (exc.code, exc.message)
            except Exception as exc:
                if is_transient(exc):
                    # The database blinked while the work read it: not the job's fault, so
                    # it goes back to the queue without counting an attempt.
                    blinked = True
                    logger.warning(
                        "job %s: the database failed during its work (%s); handing it back",
                        claim.id,
                        one_line(exc),
                    )
                else:
                    error = InternalError()
                    logger.exception("job %s failed (reference %s)", claim.id, error.reference)
                    failure = ("internal_error", error.message)
            keeping.set()
            await keeper
            if blinked:
                await self._hand_back(claim.id)
            elif cancelled:
                current = asyncio.current_task()
                interrupted = current is not None and current.cancelling() > 0
                if self._stopping or interrupted:
                    await self._hand_back(claim.id)
                    if interrupted:
                        raise asyncio.CancelledError
                    return
                # Cancelled, deleted or reaped: whoever did it wrote the final state.
                logger.info("job %s abandoned (cancelled, deleted or lease lost)", claim.id)
            elif failure is not None:
                await self._fail(claim, *failure, work=work)
                self.metrics.job_finished(claim.kind, "failed", time.perf_counter() - started)
            elif outcome is not None and await self._complete(claim, outcome):
                self.metrics.job_finished(claim.kind, "done", time.perf_counter() - started)
                flagged = outcome.flagged()
                if flagged is not None:
                    self.metrics.rendered(flagged)
        finally:
            keeping.set()
            self._work_tasks.pop(claim.id, None)

    async def _keep_lease(
        self, job_id: int, task: asyncio.Task[Outcome], stop: asyncio.Event
    ) -> None:
        """Renew the lease and record progress (announcing it when it moved) until ``stop``
        is set; abandon the job if it is no longer ours."""
        interval = max(min(self.config.lease_seconds / 3, self.config.progress_seconds), 0.05)
        renewing = FailureLog(logger, f"renewing the lease of job {job_id}")
        announced = 0.0
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            fraction = self._progress.get(job_id, 0.0)
            try:
                held = await self._renew(job_id, fraction, announce=fraction > announced)
            except Exception as exc:
                # Keep working: the next renewal may succeed, the lease (3 renewal intervals)
                # covers the gap, and the outcome write retries for what is left of it.
                renewing.failed(exc)
                continue
            renewing.worked()
            if not held:
                logger.info("job %s is no longer ours; abandoning it", job_id)
                task.cancel()
                return
            announced = max(announced, fraction)

    async def _renew(self, job_id: int, fraction: float, *, announce: bool = False) -> bool:
        """Renew this worker's lease on the job (recording its progress); False when the job
        is no longer ours (cancelled, deleted or reaped)."""
        # Counted from before the write: the database dates the lease no earlier.
        started = time.monotonic()
        async with self._db.begin() as session:
            held = await queue.renew_lease(
                session,
                job_id,
                self.worker_id,
                self.config.lease_seconds,
                utcnow(),
                progress=fraction,
            )
            if held and announce:
                await self._events.publish(session, JobEventKind.PROGRESS, job_id)
        if held:
            self._lease_until[job_id] = started + self.config.lease_seconds
        return held

    async def _persist(
        self, job_id: int, what: str, write: Callable[[], Awaitable[_T]]
    ) -> _T | None:
        """Run ``write`` (one transaction), retrying while the database blinks (db/faults.py)
        for as long as this worker's lease on the job holds, renewing the lease between tries.
        None when the lease ran out or the job was taken away first: logged at ERROR, since
        the job's work is then lost and its lease's expiry sends it to another worker.

        If the connection dies during COMMIT, the first try may have been written after all;
        the retry then finds the job no longer running here and writes nothing twice.
        """
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                return await write()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if time.monotonic() + delay >= self._lease_until.get(job_id, 0.0):
                    logger.error(
                        "job %s: its %s could not be written before its lease ran out (%s); "
                        "it will run again",
                        job_id,
                        what,
                        one_line(exc),
                    )
                    return None
                if delay == RETRY_FIRST_SECONDS:
                    logger.warning(
                        "job %s: writing its %s failed (%s); retrying while its lease holds",
                        job_id,
                        what,
                        one_line(exc),
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            try:
                if not await self._renew(job_id, self._progress.get(job_id, 0.0)):
                    logger.error("job %s: taken away while writing its %s; dropped", job_id, what)
                    return None
            except Exception as exc:
                if not is_transient(exc):
                    raise

    async def _complete(self, claim: _Claimed, outcome: Outcome) -> bool:
        """Write the outcome; False when the job was taken away meanwhile (output dropped)."""

        async def write() -> bool:
            now = utcnow()
            async with self._db.begin() as session:
                finished = await queue.finish_job(
                    session,
                    claim.id,
                    worker_id=self.worker_id,
                    status=JobStatus.DONE,
                    now=now,
                    timings=outcome.timings(),
                )
                if finished is None:
                    logger.info("job %s finished after it was taken away; output dropped", claim.id)
                    return False
                await outcome.commit(session, now)
                await self._events.publish(session, JobEventKind.FINISHED, claim.id)
            return True

        return bool(await self._persist(claim.id, "outcome", write))

    async def _fail(
        self, claim: _Claimed, code: str, message: str, *, work: JobWork | None = None
    ) -> None:
        async def write() -> bool:
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
                    return False
                await release_failed(session, finished, now, note=f"failed: {code}")
                if work is not None:  # the kind's own part (a screened prompt counts as withheld)
                    await work.failed(session, finished, code, now)
                await self._events.publish(session, JobEventKind.FINISHED, claim.id)
            return True

        if await self._persist(claim.id, "failure", write):
            logger.info("job %s failed (%s), refunded", claim.id, code)

    async def _hand_back(self, job_id: int) -> None:
        """A stop, or the database blinked during the work: back to the queue; the
        interrupted attempt does not count."""

        async def write() -> None:
            async with self._db.begin() as session:
                if await jobs_repo.requeue_own(session, job_id, self.worker_id, utcnow()):
                    await self._events.publish(session, JobEventKind.REQUEUED, job_id)

        try:
            await self._persist(job_id, "hand-back", write)
        except Exception:
            logger.exception("could not hand job %s back; its lease will expire", job_id)


async def _guarded(step: Callable[[], Awaitable[None]], log: FailureLog) -> None:
    try:
        await step()
    except Exception as exc:
        log.failed(exc)
    else:
        log.worked()


def _log_unexpected(task: asyncio.Task[None]) -> None:
    """A job's task ended with an exception ``_run`` did not handle (a bug): logged now, at
    ERROR, never left for asyncio's "exception was never retrieved" at garbage collection."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("%s ended with an unexpected error", task.get_name(), exc_info=error)
