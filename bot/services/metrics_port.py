"""What the services report to the process's metrics, as a port.

The Prometheus side (bot/ops/metrics.py) is operations code the services must not import
(tests/test_layering.py): the bot and the worker hand their ``Metrics`` in, which has these
methods; a process without an ops endpoint (the CLI, tests) gets ``NoMetrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class MetricsPort(Protocol):
    def job_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """A job's work ended (``outcome``: done or failed) after ``seconds``."""

    def rendered(self, flagged: Sequence[bool]) -> None:
        """Images rendered and stored, one output-check verdict each."""

    def delivery_failed(self, *, abandoned: bool = False) -> None:
        """Discord refused a delivery: retried later, or given up (``abandoned``)."""


class NoMetrics:
    """Counts nothing: for a process nobody scrapes."""

    def job_finished(self, kind: str, outcome: str, seconds: float) -> None:
        pass

    def rendered(self, flagged: Sequence[bool]) -> None:
        pass

    def delivery_failed(self, *, abandoned: bool = False) -> None:
        pass


__all__ = ["MetricsPort", "NoMetrics"]
