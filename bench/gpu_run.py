"""The GPU benchmark's bookkeeping (bench/gpu.py): the global deadline, one results document
rewritten after every part (JSON, and the Markdown generated from it), and each part's outcome:
done with its figures, skipped with why, or failed with its error. A part never stops the run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch

from bench.gpu_plan import ESTIMATES
from bench.gpu_report import headlines, render_markdown

# A part still running this long after the deadline is cut (see Recorder.part).
GRACE_S = 30.0


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class Recorder:
    """The deadline (``deadline_s`` from ``started``, a ``time.perf_counter`` value) and the
    results document at ``path`` (``results``: its ``engines`` and ``sections`` hold the
    parts)."""

    def __init__(
        self,
        path: Path,
        results: dict[str, Any],
        *,
        deadline_s: float,
        started: float,
        quick: bool,
        wanted: set[str],
    ) -> None:
        self.path = path
        self.results = results
        self.deadline_s = deadline_s
        self.started = started
        self.quick = quick
        self.wanted = wanted

    def log(self, message: str) -> None:
        print(f"[bench.gpu {time.perf_counter() - self.started:6.1f}s] {message}", flush=True)

    def remaining(self) -> float:
        return self.deadline_s - (time.perf_counter() - self.started)

    def write(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.started
        self.results["headlines"] = headlines(self.results)
        clean = json.loads(json.dumps(finite(self.results), default=str, allow_nan=False))
        self.path.write_text(json.dumps(clean, indent=2) + "\n")
        self.path.with_suffix(".md").write_text(render_markdown(clean))

    def _slot(self, section: str, name: str) -> dict[str, Any]:
        if section == "engine":
            slot: dict[str, Any] = self.results["engines"].setdefault(name, {})
        else:
            slot = self.results["sections"][section]["parts"].setdefault(name, {})
        return slot

    def skip(self, section: str, name: str, reason: str) -> None:
        self._slot(section, name).update({"status": "skipped", "reason": reason})
        self.log(f"{section}.{name}: skipped ({reason})")
        self.write()

    async def part(
        self,
        section: str,
        name: str,
        fn: Callable[[], Awaitable[dict[str, Any]]],
        *,
        estimate_key: str | None = None,
        estimate_s: float | None = None,
    ) -> dict[str, Any] | None:
        """Run one part unless the deadline leaves it too little time; record its payload, or
        why it was skipped or failed (the run goes on either way)."""
        estimate = estimate_s
        if estimate is None:
            estimate = ESTIMATES[estimate_key or f"{section}.{name}"][1 if self.quick else 0]
        left = self.remaining()
        if left < estimate:
            self.skip(section, name, f"deadline: {left:.0f} s left, the part needs ~{estimate:g} s")
            return None
        self.log(f"{section}.{name}: started ({left:.0f} s left)")
        started = time.perf_counter()
        slot = self._slot(section, name)
        try:
            # A part still running GRACE_S after the deadline is cut (a compile or a blocking
            # call cannot be, and finishes first); what it measured so far is lost.
            payload = await asyncio.wait_for(fn(), timeout=max(self.remaining() + GRACE_S, 1))
        except (Exception, SystemExit) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if isinstance(exc, TimeoutError):
                reason = f"cut {GRACE_S:g} s after the deadline"
            slot.clear()
            slot.update(
                {
                    "status": "failed",
                    "reason": reason,
                    "traceback": traceback.format_exc().splitlines()[-15:],
                    "seconds": time.perf_counter() - started,
                }
            )
            self.log(f"{section}.{name}: FAILED: {slot['reason']}")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.write()
            return None
        payload.pop("machine", None)
        slot.clear()
        slot.update({"status": "done", "seconds": time.perf_counter() - started, **payload})
        self.log(f"{section}.{name}: done in {slot['seconds']:.1f} s")
        self.write()
        return payload

    def skip_all(self, parts: list[tuple[str, str]], reason: str) -> None:
        for section, name in parts:
            if section in self.wanted:
                self.skip(section, name, reason)
