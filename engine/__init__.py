"""The image engine: models, personalizers, subject checks, the GPU worker. No discord, no db.

Importing ``engine`` is cheap (no torch): the types and errors load eagerly, the engine itself
(``create_engine``, ``DiffusionEngine``) and the subject checks' ``PhotoReport`` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import EngineSettings
from engine.errors import (
    CorruptFeatures,
    EngineClosed,
    EngineError,
    InvalidRequest,
    MissingWeights,
    RequestCancelled,
    StaleFeatures,
    UnknownPersonalizer,
    UnknownProfile,
)
from engine.types import ConceptFeatures, ConceptKind, RenderRequest, RenderResult

if TYPE_CHECKING:
    from engine.engine import DiffusionEngine, create_engine
    from engine.subject_checks import FaceBox, PhotoReport

_LAZY = {
    "DiffusionEngine": "engine.engine",
    "create_engine": "engine.engine",
    "PhotoReport": "engine.subject_checks",
    "FaceBox": "engine.subject_checks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "ConceptFeatures",
    "ConceptKind",
    "CorruptFeatures",
    "DiffusionEngine",
    "EngineClosed",
    "EngineError",
    "EngineSettings",
    "FaceBox",
    "InvalidRequest",
    "MissingWeights",
    "PhotoReport",
    "RenderRequest",
    "RenderResult",
    "RequestCancelled",
    "StaleFeatures",
    "UnknownPersonalizer",
    "UnknownProfile",
    "create_engine",
]
