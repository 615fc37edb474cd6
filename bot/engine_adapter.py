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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import PIL.Image
from PIL.Image import Image

from bot.config import SafetySettings, Settings
from bot.errors import AvatarbotError, InvalidInput
from bot.services.ports import (
    EncodedFeatures,
    EngineFacts,
    EnginePort,
    OutputPolicy,
    OutputVerdict,
    PreviewCallback,
    ProgressCallback,
    RenderOutput,
    RenderSpec,
    StaleFeaturesError,
    SubjectReport,
    TextScreenFacts,
)
from engine.config import EngineSettings
from kinds import LikenessScore, SubjectKind

if TYPE_CHECKING:
    from engine.engine import DiffusionEngine
    from engine.safety import OutputChecker, SafetyPolicy
    from engine.subject_checks import PhotoReport
    from engine.types import RenderRequest

logger = logging.getLogger(__name__)


class EngineAdapter:
    """Wraps a started ``DiffusionEngine``; build one with ``await EngineAdapter.create(...)``.

    Every render's images pass the output check (engine/safety.py) on the engine's worker
    thread before they are encoded: ``RenderOutput.verdicts`` has one verdict per image. The
    check fails closed: when it cannot run, the render fails and no image is returned.
    """

    def __init__(self, engine: DiffusionEngine, checker: OutputChecker | None = None) -> None:
        from engine.safety import OutputChecker

        self.engine = engine
        self.checker = checker or OutputChecker()
        self._facts: EngineFacts | None = None

    @classmethod
    async def create(
        cls, settings: EngineSettings, safety: SafetySettings | None = None
    ) -> EngineAdapter:
        """Load the profile named by ``settings`` (seconds on ``tiny``, longer on real
        weights; raises the engine's ``MissingWeights`` with how to get them). ``safety`` is
        the output check's default policy (``SafetySettings()`` when not given)."""
        from bot.ops.logs import adopt_library_loggers

        adopt_library_loggers()
        from engine.engine import create_engine

        engine = await create_engine(settings)
        try:
            checker = await asyncio.to_thread(_output_checker, engine, safety or SafetySettings())
        except BaseException:
            await engine.aclose()
            raise
        return cls(engine, checker)

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
                max_subjects={p: engine.max_subjects(p) for p in engine.personalizers},
                default_guidance=float(engine.default_guidance),
                size_multiple=engine.size_multiple,
                likeness=engine.likeness_methods(),
                refines={
                    p: frozenset(str(r) for r in engine.refines(p)) for p in engine.personalizers
                },
            )
        return self._facts

    # -- work ------------------------------------------------------------------------------

    async def inspect(self, images: Sequence[Image], kind: SubjectKind) -> list[SubjectReport]:
        return [subject_report(r) for r in await self.engine.inspect(images, kind)]

    async def encode(
        self, images: Sequence[Image], kind: SubjectKind, personalizer: str
    ) -> EncodedFeatures:
        features = await self.engine.encode(images, kind, personalizer)
        data = await asyncio.to_thread(features.to_bytes)
        return EncodedFeatures(encoder_id=features.encoder_id, data=data)

    async def render(
        self,
        spec: RenderSpec,
        features: bytes,
        progress: ProgressCallback | None = None,
        *,
        extra_subjects: Sequence[bytes] = (),
        preview: PreviewCallback | None = None,
    ) -> RenderOutput:
        from engine.errors import InvalidRequest, StaleFeatures
        from engine.types import ConceptFeatures, RenderRequest

        try:
            concept = await asyncio.to_thread(ConceptFeatures.from_bytes, features)
            # More avatars in the same picture, in order: "image 2", ...
            others = [
                await asyncio.to_thread(ConceptFeatures.from_bytes, data) for data in extra_subjects
            ]
            settings = spec.settings
            request = RenderRequest(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt,
                width=settings.width,
                height=settings.height,
                steps=settings.steps,
                guidance=settings.guidance,
                seed=settings.seed,
                count=settings.count,
                identity_strength=settings.identity_strength,
                personalizer=settings.personalizer,
                features=concept,
                extra_subjects=tuple(others),
            )
            if settings.refine is not None:
                request = await asyncio.to_thread(self._refined, request, spec)
            # The engine's worker already calls ``progress`` on this event loop.
            result = await self.engine.render(request, progress, _previews(preview))
        except StaleFeatures as exc:
            raise StaleFeaturesError(str(exc)) from exc
        except InvalidRequest as exc:
            # The services bound every option first; reaching this is a mismatch of limits.
            logger.warning("engine refused a render: %s", exc)
            raise InvalidInput("These render settings are not supported by the engine.") from exc
        verdicts = await self.check_outputs(result.images, spec.output_policy)
        likeness = await self._likeness(result.images, spec.likeness_reference)
        pngs = await asyncio.to_thread(_encode_pngs, result.images)
        return RenderOutput(
            pngs=tuple(pngs),
            seeds=tuple(int(s) for s in result.seeds),
            timings=result.timings,
            verdicts=tuple(verdicts),
            likeness=tuple(likeness),
        )

    def _refined(self, base: RenderRequest, spec: RenderSpec) -> RenderRequest:
        """``base`` as the refinement its settings name, of the spec's source image."""
        from engine.refine import Variation, upscale_request, vary_request

        refine = spec.settings.refine
        assert refine is not None  # the caller's condition
        if spec.source_png is None:
            raise AvatarbotError("The image to refine was not found.", code="refine_source_gone")
        with PIL.Image.open(io.BytesIO(spec.source_png)) as opened:
            source = opened.convert("RGB")
        seed, profile = spec.settings.seed, self.engine.profile
        if refine.kind == "upscale":
            return upscale_request(source, base, profile, seed=seed)
        variation = Variation.SUBTLE if refine.kind == "vary_subtle" else Variation.STRONG
        return vary_request(source, base, profile, variation, seed=seed, count=base.count)

    async def _likeness(
        self, images: Sequence[Image], reference: bytes | None
    ) -> list[LikenessScore]:
        """Each image's likeness to the avatar, or none when the spec carried no reference or
        the reference cannot be read or scored here (logged: a render is never lost to its
        likeness figure)."""
        if reference is None:
            return []
        from engine.likeness import LikenessReference

        try:
            enrolled = LikenessReference.from_bytes(reference)
            return await self.engine.likeness(images, enrolled)
        except ValueError as exc:
            logger.warning("likeness not measured: %s", exc)
            return []

    async def likeness_reference(
        self,
        images: Sequence[Image],
        kind: SubjectKind,
        face_embeddings: Sequence[tuple[float, ...]] = (),
    ) -> EncodedFeatures | None:
        reference = await self.engine.likeness_reference(images, kind, face_embeddings)
        if reference is None:
            return None
        return EncodedFeatures(encoder_id=reference.method, data=reference.to_bytes())

    async def check_outputs(
        self, images: Sequence[Image], policy: OutputPolicy | None = None
    ) -> list[OutputVerdict]:
        """The output check's verdict on each image, run on the engine's worker thread.
        Fails closed: a checker that cannot load or run fails the render."""
        from engine.safety import SafetyCheckUnavailable

        engine_policy = _engine_policy(policy)
        try:
            found = await self.engine.call(lambda: self.checker.check(images, engine_policy))
        except SafetyCheckUnavailable as exc:
            logger.error("output check unavailable, render withheld: %s", exc)
            raise AvatarbotError(
                "The safety check of rendered images is unavailable right now, so nothing was "
                "posted. Your render was refunded; please try again later.",
                code="safety_check_unavailable",
            ) from exc
        if len(found) != len(images):  # never deliver an image without its verdict
            raise AvatarbotError(
                "The safety check of rendered images failed, so nothing was posted.",
                code="safety_check_unavailable",
            )
        return [
            OutputVerdict(flagged=v.flagged, scores=dict(v.scores), checkers=v.checkers)
            for v in found
        ]

    # -- the semantic prompt screen -----------------------------------------------------------

    def text_screen(self) -> TextScreenFacts:
        profile = self.engine.profile
        thresholds = profile.screen_thresholds
        return TextScreenFacts(
            encoder_id=self.engine.text_encoder_id,
            thresholds=None if thresholds is None else dict(thresholds),
            random_weights=profile.is_noise,
        )

    async def embed_texts(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        return await self.engine.embed_texts(texts)

    async def aclose(self) -> None:
        await self.engine.aclose()


def subject_report(report: PhotoReport) -> SubjectReport:
    """The engine's verdict on a photo as the services' plain ``SubjectReport``."""
    return SubjectReport(
        problems=tuple(report.problems),
        warnings=tuple(report.warnings),
        faces=None if report.faces is None else len(report.faces),
        embedding=report.embedding,
    )


def _encode_pngs(images: Sequence[Image]) -> list[bytes]:
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=False)
        out.append(buffer.getvalue())
    return out


def _output_checker(engine: DiffusionEngine, safety: SafetySettings) -> OutputChecker:
    """nudenet with the settings' policy, plus diffusers' safety checker when the profile's
    model folder ships one (loaded with the pipeline's device and dtype)."""
    from engine.safety import (
        DiffusersSafetyChecker,
        NudeNetChecker,
        OutputChecker,
        safety_checker_folder,
    )

    cache_dir = str(engine.settings.cache_dir) if engine.settings.cache_dir else None
    folder = safety_checker_folder(engine.profile.base_model, cache_dir=cache_dir)
    diffusers = None
    if folder is not None:
        logger.info("output check: also diffusers' safety checker from %s", folder)
        diffusers = DiffusersSafetyChecker(
            folder, device=str(engine.device), dtype=engine.model.dtype
        )
    return OutputChecker(NudeNetChecker(safety.threshold, safety.classes), diffusers)


def _engine_policy(policy: OutputPolicy | None) -> SafetyPolicy | None:
    from engine.safety import SafetyPolicy

    if policy is None:
        return None
    return SafetyPolicy(policy.threshold, tuple(policy.classes))


async def build_engine_port(settings: Settings) -> EnginePort:
    """The engine the settings name, as the services' port (the bot and the CLI use this)."""
    return await EngineAdapter.create(settings.engine, settings.safety)


# Previews skip the output check (it takes seconds; they come every few), so they leave the
# adapter blurred: at 6 px of Gaussian radius a 64-px preview keeps its colours and layout
# (a face's place, the background) and no detail that could show what the check would withhold.
PREVIEW_BLUR_RADIUS = 6.0
# Previews travel in a PostgreSQL NOTIFY (under 8000 bytes as base64): a 64-px JPEG is ~1-2 KB.
PREVIEW_SIDE = 64
PREVIEW_JPEG_QUALITY = 70


def preview_jpeg(image: Image) -> bytes:
    """``image`` as a preview: at most ``PREVIEW_SIDE`` px, blurred, a small JPEG."""
    from PIL import ImageFilter

    small = image.convert("RGB")
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    blurred = small.filter(ImageFilter.GaussianBlur(PREVIEW_BLUR_RADIUS))
    buffer = io.BytesIO()
    blurred.save(buffer, format="JPEG", quality=PREVIEW_JPEG_QUALITY)
    return buffer.getvalue()


def _previews(preview: PreviewCallback | None) -> Callable[[list[Image]], None] | None:
    """The engine's preview callback for the port's: the first image, encoded (it is small:
    the engine's previews are at most 128 px, so this runs on the loop)."""
    if preview is None:
        return None

    def show(images: list[Image]) -> None:
        preview(preview_jpeg(images[0]))

    return show
