"""The real engine behind the services' ``EnginePort`` (bot/services/ports.py).

The services never import torch; this module (outside them) may. It turns the engine's types
into plain data both ways: features become safetensors bytes, images become PNG bytes, the
engine's errors become ``AvatarbotError``s with user-safe messages (or stay internal errors,
logged with their detail). CPU-bound conversions run in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL.Image import Image

from bot.config import Settings
from bot.errors import InvalidInput
from bot.services.ports import (
    EncodedFeatures,
    EngineFacts,
    EnginePort,
    ProgressCallback,
    RenderOutput,
    RenderSpec,
    StaleFeaturesError,
    SubjectKind,
    SubjectReport,
)
from engine.config import EngineSettings

if TYPE_CHECKING:
    from engine.engine import DiffusionEngine

logger = logging.getLogger(__name__)


class EngineAdapter:
    """Wraps a started ``DiffusionEngine``; build one with ``await EngineAdapter.create(...)``."""

    def __init__(self, engine: DiffusionEngine) -> None:
        self.engine = engine
        self._facts: EngineFacts | None = None

    @classmethod
    async def create(cls, settings: EngineSettings) -> EngineAdapter:
        """Load the profile named by ``settings`` (seconds on ``tiny``, longer on real
        weights; raises the engine's ``MissingWeights`` with how to get them)."""
        from engine.engine import create_engine

        return cls(await create_engine(settings))

    # -- facts -----------------------------------------------------------------------------

    def facts(self) -> EngineFacts:
        """What the services must know of this engine (published for bots without one)."""
        if self._facts is None:
            engine = self.engine
            self._facts = EngineFacts(
                profile=engine.profile.name,
                default_personalizer=engine.default_personalizer,
                encoders={p: engine.encoder_id_for(p) for p in engine.personalizers},
                native_size=int(engine.native_size),
                default_steps=engine.default_steps,
                max_prompt_tokens=engine.max_prompt_tokens,
                tokenizer_json=engine.tokenizer_json(),
            )
        return self._facts

    # -- work ------------------------------------------------------------------------------

    async def inspect(self, images: Sequence[Image], kind: SubjectKind) -> list[SubjectReport]:
        reports = await self.engine.inspect(images, kind)
        return [
            SubjectReport(
                problems=tuple(r.problems),
                warnings=tuple(r.warnings),
                faces=None if r.faces is None else len(r.faces),
            )
            for r in reports
        ]

    async def encode(
        self, images: Sequence[Image], kind: SubjectKind, personalizer: str
    ) -> EncodedFeatures:
        features = await self.engine.encode(images, kind, personalizer)
        data = await asyncio.to_thread(features.to_bytes)
        return EncodedFeatures(encoder_id=features.encoder_id, data=data)

    async def render(
        self, spec: RenderSpec, features: bytes, progress: ProgressCallback | None = None
    ) -> RenderOutput:
        from engine.errors import InvalidRequest, StaleFeatures
        from engine.types import ConceptFeatures, RenderRequest

        try:
            concept = await asyncio.to_thread(ConceptFeatures.from_bytes, features)
            extra = {} if spec.scheduler is None else {"scheduler": spec.scheduler}
            request = RenderRequest(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                width=spec.width,
                height=spec.height,
                steps=spec.steps,
                guidance=spec.guidance,
                seed=spec.seed,
                count=spec.count,
                identity_strength=spec.identity_strength,
                personalizer=spec.personalizer,
                features=concept,
                **extra,  # type: ignore[arg-type]
            )
            # The engine's worker already calls ``progress`` on this event loop.
            result = await self.engine.render(request, progress)
        except StaleFeatures as exc:
            raise StaleFeaturesError(str(exc)) from exc
        except InvalidRequest as exc:
            # The services bound every option first; reaching this is a mismatch of limits.
            logger.warning("engine refused a render: %s", exc)
            raise InvalidInput("These render settings are not supported by the engine.") from exc
        pngs = await asyncio.to_thread(_encode_pngs, result.images)
        return RenderOutput(
            pngs=tuple(pngs), seeds=tuple(int(s) for s in result.seeds), timings=result.timings
        )

    async def aclose(self) -> None:
        await self.engine.aclose()


def _encode_pngs(images: Sequence[Image]) -> list[bytes]:
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=False)
        out.append(buffer.getvalue())
    return out


async def build_engine_port(settings: Settings) -> EnginePort:
    """The engine the settings name, as the services' port (the bot and the CLI use this)."""
    return await EngineAdapter.create(settings.engine)
