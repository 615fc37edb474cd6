"""Personalizers and their registry: a name → a factory that builds one on a loaded pipeline.

Built-ins register here; other packages (e.g. ``engine.personalizers.instantbooth``) call
``register_personalizer`` at import. Profiles name the personalizers they load.
"""

from __future__ import annotations

import importlib
import logging

from engine.errors import UnknownPersonalizer
from engine.personalizers.base import PersonalizerFactory

logger = logging.getLogger(__name__)

_FACTORIES: dict[str, PersonalizerFactory] = {}
# Where the built-in and known plug-in factories live; imported on first use so importing the
# registry stays cheap and a missing optional plug-in only fails when a profile asks for it.
_KNOWN_MODULES = {
    "ip-adapter": "engine.personalizers.ip_adapter",
    "none": "engine.personalizers.plain",
    "instantbooth": "engine.personalizers.instantbooth",
    "flux2-klein": "engine.flux2.personalizer",
}


def register_personalizer(name: str, factory: PersonalizerFactory) -> None:
    """Make ``name`` loadable by profiles. Re-registering a name replaces its factory."""
    _FACTORIES[name] = factory


def personalizer_factory(name: str) -> PersonalizerFactory:
    if name not in _FACTORIES and name in _KNOWN_MODULES:
        importlib.import_module(_KNOWN_MODULES[name])
    try:
        return _FACTORIES[name]
    except KeyError:
        raise UnknownPersonalizer(name, sorted(set(_FACTORIES) | set(_KNOWN_MODULES))) from None
