"""Shared fixtures. Feature-specific fixtures live in tests/fixtures/ and load as plugins."""

from __future__ import annotations

import importlib.util

# Fixture modules, loaded when present so each feature can add its own without editing here.
_PLUGINS = [
    "tests.fixtures.databases",
    "tests.fixtures.photos",
    "tests.fixtures.engine",
    "tests.fixtures.services",
    "tests.fixtures.discord",
]
pytest_plugins = [name for name in _PLUGINS if importlib.util.find_spec(name) is not None]
