"""What a benchmark result records about the machine it ran on, without importing torch (the
scale-out benchmark's processes never load it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_basics() -> dict[str, Any]:
    """What every result says about the machine first (each benchmark adds its own
    packages and devices after these keys)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": ram_gib(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def package_version(package: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
