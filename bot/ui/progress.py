"""Throttling of progress edits: Discord rate-limits message edits, members need no more than
a tick every second or two.

The clock is looked up at call time (``time.monotonic()``), not bound at import, so a test
harness that virtualises time (SimCord does) drives it deterministically.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_MIN_INTERVAL = 1.5


def _monotonic() -> float:
    return time.monotonic()


class ProgressThrottle:
    """Decides, per key (a job id), whether a progress update is worth an edit now.

    The first update of a key always passes; later ones pass when ``min_interval`` seconds
    went by since the last one that passed. Updates that go backwards (a requeued job starts
    again) pass too, so a member never sees a stale, higher figure.
    """

    def __init__(
        self, min_interval: float = DEFAULT_MIN_INTERVAL, clock: Callable[[], float] = _monotonic
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must be >= 0")
        self.min_interval = min_interval
        self._clock = clock
        self._last: dict[int, tuple[float, float]] = {}

    def should_emit(self, key: int, fraction: float) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None:
            at, shown = last
            if fraction >= shown and now - at < self.min_interval:
                return False
        self._last[key] = (now, fraction)
        return True

    def forget(self, key: int) -> None:
        self._last.pop(key, None)

    def __len__(self) -> int:
        return len(self._last)


def progress_bar(fraction: float, width: int = 12) -> str:
    """A text bar for a message: ``▰▰▰▱▱▱ 50%``."""
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "▰" * filled + "▱" * (width - filled) + f" {round(fraction * 100)}%"
