"""The architecture's one-way dependencies, checked in fresh interpreters (DESIGN.md).

`engine` must not load discord or db; `bot.services` must not load discord or torch-side
libraries. A fresh interpreter per check, so earlier imports in this process cannot hide a leak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = {
    "engine": {"discord", "db", "bot"},
    "bot.services": {"discord", "torch", "diffusers", "transformers"},
    "db": {"discord", "torch", "diffusers", "transformers", "engine"},
    "bot.errors": {"discord", "torch"},
    "bot.config": {"discord", "torch"},
}


def _loaded_after_import(module: str) -> set[str]:
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"pkg = importlib.import_module({module!r})\n"
        "for info in pkgutil.walk_packages(getattr(pkg, '__path__', []), pkg.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_package_does_not_load_forbidden_modules(module: str) -> None:
    leaked = _loaded_after_import(module) & FORBIDDEN[module]
    assert not leaked, f"importing {module} (and all its submodules) loaded {sorted(leaked)}"
