"""Shared fixtures. Feature-specific fixtures live in tests/fixtures/ and load as plugins."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

# Fixture modules, loaded when present so each feature can add its own without editing here.
_PLUGINS = [
    "tests.fixtures.databases",
    "tests.fixtures.photos",
    "tests.fixtures.engine",
    "tests.fixtures.services",
    "tests.fixtures.discord",
]
pytest_plugins = [name for name in _PLUGINS if importlib.util.find_spec(name) is not None]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the whole suite: the tiny models gain nothing from more,
    and on a shared 2-core machine torch's spinning OpenMP workers made the suite several times
    slower (measured: 270 s vs 40 s for the InstantBooth tests under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
