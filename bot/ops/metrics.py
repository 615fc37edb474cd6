"""The metrics of one process, on a Prometheus registry of its own (never the global one:
tests run several bots and workers in one interpreter).

Services are handed a ``Metrics`` (bot/services/container.py) and call its few typed hooks;
nothing else imports prometheus_client. Queue depth and GPU memory are read when scraped
(``refresh``), everything else is counted where it happens:

- ``avatarbot_jobs{kind,status}``: render_jobs rows by kind and status (one grouped COUNT);
- ``avatarbot_job_duration_seconds{kind,outcome}``: a job's work on this worker (render,
  encode), from its start to its outcome (``done`` or ``failed``);
- ``avatarbot_images_rendered_total``: images rendered here (``rate()`` gives images/s);
- ``avatarbot_output_checks_total{flagged}``: the output check's verdicts;
- ``avatarbot_delivery_failures_total{outcome}``: deliveries that failed for now
  (``postponed``, retried by the next sweep) or for good (``abandoned``);
- ``avatarbot_gpu_memory_{allocated,reserved,peak}_bytes{device}``: torch's CUDA allocator,
  only in a process that has an engine on CUDA (no samples otherwise).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from db.session import Database

logger = logging.getLogger(__name__)

# Seconds: a tiny-profile render takes ~1 s on a CPU, a real one 3-60 s on a GPU, an encode
# a few seconds; the job timeout is 900 s.
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class GpuMemory:
    device: str
    allocated: int
    reserved: int
    peak: int


GpuProbe = Callable[[], Sequence[GpuMemory]]


def torch_gpu_memory() -> list[GpuMemory]:
    """CUDA memory per device from torch's allocator; empty when torch is not loaded in this
    process (it is never imported here: the scale-out bot must not load it) or has no CUDA."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return []
        return [
            GpuMemory(
                device=f"cuda:{index}",
                allocated=int(torch.cuda.memory_allocated(index)),
                reserved=int(torch.cuda.memory_reserved(index)),
                peak=int(torch.cuda.max_memory_allocated(index)),
            )
            for index in range(torch.cuda.device_count())
        ]
    except Exception:  # a scrape must never fail for this
        logger.debug("could not read CUDA memory", exc_info=True)
        return []


class Metrics:
    """The process's metrics (see the module docstring for the names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge(
            "avatarbot_jobs",
            "Jobs in the database by kind and status (queue depth: status=queued).",
            ["kind", "status"],
            registry=r,
        )
        self.job_duration = Histogram(
            "avatarbot_job_duration_seconds",
            "Time a job's work took on this worker, by kind (render, encode) and outcome.",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.images_rendered = Counter(
            "avatarbot_images_rendered",
            "Images rendered by this process (rate() gives images per second).",
            registry=r,
        )
        self.output_checks = Counter(
            "avatarbot_output_checks",
            "Output check verdicts on rendered images.",
            ["flagged"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "avatarbot_delivery_failures",
            "Deliveries to Discord that failed: postponed (retried) or abandoned.",
            ["outcome"],
            registry=r,
        )
        self.gpu_allocated = Gauge(
            "avatarbot_gpu_memory_allocated_bytes",
            "GPU memory held by tensors (torch allocator).",
            ["device"],
            registry=r,
        )
        self.gpu_reserved = Gauge(
            "avatarbot_gpu_memory_reserved_bytes",
            "GPU memory reserved by torch's caching allocator.",
            ["device"],
            registry=r,
        )
        self.gpu_peak = Gauge(
            "avatarbot_gpu_memory_peak_bytes",
            "Peak GPU memory held by tensors since the process started.",
            ["device"],
            registry=r,
        )
        # Make the labelled counters visible at 0 before their first event.
        for flagged in ("true", "false"):
            self.output_checks.labels(flagged=flagged)
        for outcome in ("postponed", "abandoned"):
            self.delivery_failures.labels(outcome=outcome)

    # -- hooks (the services call these) ---------------------------------------------------

    def job_finished(self, kind: str, outcome: str, seconds: float) -> None:
        self.job_duration.labels(kind=kind, outcome=outcome).observe(max(seconds, 0.0))

    def rendered(self, flagged: Sequence[bool]) -> None:
        """Images rendered and stored, one output-check verdict each."""
        self.images_rendered.inc(len(flagged))
        for verdict in flagged:
            self.output_checks.labels(flagged="true" if verdict else "false").inc()

    def delivery_failed(self, *, abandoned: bool = False) -> None:
        self.delivery_failures.labels(outcome="abandoned" if abandoned else "postponed").inc()

    # -- read on scrape --------------------------------------------------------------------

    async def refresh(self, database: Database | None, gpu: GpuProbe | None = None) -> None:
        """Read queue depth from the database and GPU memory from torch (if given)."""
        if database is not None:
            try:
                await self._refresh_jobs(database)
            except Exception as exc:
                logger.warning("metrics: could not count jobs: %s", exc)
        if gpu is not None:
            for memory in gpu():
                self.gpu_allocated.labels(device=memory.device).set(memory.allocated)
                self.gpu_reserved.labels(device=memory.device).set(memory.reserved)
                self.gpu_peak.labels(device=memory.device).set(memory.peak)

    async def _refresh_jobs(self, database: Database) -> None:
        from sqlalchemy import func, select

        from db.models import RenderJob
        from kinds import JobKind, JobStatus

        async with database.begin(readonly=True) as session:
            rows = (
                await session.execute(
                    select(RenderJob.kind, RenderJob.status, func.count()).group_by(
                        RenderJob.kind, RenderJob.status
                    )
                )
            ).all()
        counts = {(str(kind), str(status)): int(n) for kind, status, n in rows}
        for kind in JobKind:
            for status in JobStatus:
                key = (str(kind.value), str(status.value))
                self.jobs.labels(kind=key[0], status=key[1]).set(counts.pop(key, 0))
        for (kind_name, status_name), n in counts.items():  # values this build does not know
            self.jobs.labels(kind=kind_name, status=status_name).set(n)

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)
