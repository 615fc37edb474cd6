"""``DiffusionEngine``: the DESIGN's Engine protocol over one profile on one device.

``create_engine(settings)`` starts the worker thread, which loads the profile (so the model is
created, used and freed by one thread) and then serves renders, encodes and inspections.
``render`` never re-encodes photos: it uses the request's cached features, refused loudly
(``StaleFeatures``) when another encoder made them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image as PILImage

from engine.acceleration import FastPath, apply_fast_path, resolve_fast_path, warm_up
from engine.config import EngineSettings
from engine.errors import UnknownPersonalizer
from engine.loading import (
    is_offline,
    load_base_pipeline,
    load_preview_decoder,
    pick_device,
    pick_dtype,
    quiet_progress_bars,
)
from engine.personalizers import personalizer_factory
from engine.personalizers.base import LoadContext, Personalizer
from engine.pipeline import (
    BatchOutcome,
    StepCallback,
    avatar_pipeline,
    make_pipeline_batch_invariant,
)
from engine.preview import DecoderPreview, attach_decoder
from engine.profiles import Profile, default_guidance, resolve_profile
from engine.types import ConceptFeatures, ConceptKind, Refinement, RenderRequest, RenderResult
from engine.worker import Preview, Progress, Worker

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.likeness import LikenessReference
    from engine.subject_checks import FaceBox, FaceDetector, FaceEmbedder, PhotoReport
    from kinds import LikenessScore

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """Everything the worker thread owns."""

    profile: Profile
    pipe: Any
    device: torch.device
    dtype: torch.dtype
    personalizers: dict[str, Personalizer]
    scheduler_config: Any
    workdir: str
    fast: FastPath = field(default_factory=FastPath)
    detector: FaceDetector | None = None
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(settings: EngineSettings, profile: Profile) -> LoadedModel:
    """Build the profile's pipeline and personalizers (runs in the worker thread)."""
    started = time.perf_counter()
    if profile.cpu_threads is not None:
        # Process-wide in torch: only profiles meant for CPUs (tiny) set it.
        torch.set_num_threads(profile.cpu_threads)
    device = torch.device(profile.device) if profile.device else pick_device(settings.device)
    dtype = torch.float32 if device.type == "cpu" else pick_dtype(settings.dtype, device)
    offline = is_offline(settings.offline)
    cache_dir = str(settings.cache_dir) if settings.cache_dir else None
    batch_invariant = device.type == "cpu"
    fast = resolve_fast_path(settings.fast, device)
    if fast.buckets and settings.max_batch > max(fast.buckets):
        logger.warning(
            "engine.max_batch %d exceeds the largest batch bucket %d: larger batches compile "
            "on first use; add a bucket (engine.fast.batch_buckets)",
            settings.max_batch,
            max(fast.buckets),
        )
    workdir = tempfile.mkdtemp(prefix="avatarbot-engine-")
    try:
        pipe = _build_pipeline(
            settings,
            profile,
            device=device,
            dtype=dtype,
            offline=offline,
            cache_dir=cache_dir,
            workdir=workdir,
            batch_invariant=batch_invariant,
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    personalizers: dict[str, Personalizer] = {}
    try:
        if settings.preview_decoder is not None:
            _attach_preview_decoder(
                settings.preview_decoder,
                profile,
                pipe,
                device=device,
                dtype=dtype,
                offline=offline,
                cache_dir=cache_dir,
            )
        # Random-weight profiles write adapters to a temp folder and read them back: progress
        # bars for that say nothing and clutter the demo. Real weights keep theirs.
        with quiet_progress_bars(profile.is_noise):
            for spec in profile.personalizers:
                context = LoadContext(
                    pipe=pipe,
                    options=spec.options,
                    device=device,
                    dtype=dtype,
                    offline=offline,
                    cache_dir=cache_dir,
                    workdir=workdir,
                    seed=settings.seed,
                    batch_invariant=batch_invariant,
                    static_graph=fast.static_graph,
                )
                with torch.inference_mode(False):
                    personalizers[spec.name] = personalizer_factory(spec.name)(context)
        maps = [m for p in personalizers.values() for m in p.processor_maps()]
        apply_fast_path(pipe, fast, maps)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    model = LoadedModel(
        profile=profile,
        pipe=pipe,
        device=device,
        dtype=dtype,
        personalizers=personalizers,
        scheduler_config=_explicit_config(pipe.scheduler.config),
        workdir=workdir,
        fast=fast,
        detector=_load_detector(),
        load_seconds=time.perf_counter() - started,
    )
    logger.info(
        "engine profile %s loaded on %s (%s) in %.1fs; personalizers: %s",
        profile.name,
        device,
        str(dtype).removeprefix("torch."),
        model.load_seconds,
        ", ".join(f"{n} ({p.encoder_id})" for n, p in personalizers.items()),
    )
    if profile.is_noise:
        logger.warning(
            "engine profile %s runs random weights: it renders noise by design", profile.name
        )
    return model


def _build_pipeline(
    settings: EngineSettings,
    profile: Profile,
    *,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    cache_dir: str | None,
    workdir: str,
    batch_invariant: bool,
) -> Any:
    """The profile's base pipeline on ``device`` in ``dtype`` (its family decides which)."""
    if profile.pipeline_family == "flux2":
        from engine.flux2.loading import build_flux2_pipeline

        return build_flux2_pipeline(
            profile,
            seed=settings.seed,
            device=device,
            dtype=dtype,
            offline=offline,
            cache_dir=cache_dir,
            workdir=workdir,
            batch_invariant=batch_invariant,
        )
    if profile.pipeline_family != "stable-diffusion":
        raise ValueError(f"profile {profile.name}: unknown pipeline family")
    if profile.random_base is not None:
        components = profile.random_base(settings.seed)
    else:
        assert profile.base_model is not None, f"profile {profile.name} names no base model"
        components = load_base_pipeline(
            profile.base_model,
            config=profile.base_config,
            dtype=dtype,
            offline=offline,
            cache_dir=cache_dir,
        ).components
    pipe = avatar_pipeline(components).to(device)
    if pipe.unet.dtype != dtype:  # random weights are built in fp32
        pipe.to(dtype=dtype)
    if batch_invariant:
        _realign(pipe)
        make_pipeline_batch_invariant(pipe)
    return pipe


def _attach_preview_decoder(
    location: str,
    profile: Profile,
    pipe: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    cache_dir: str | None,
) -> None:
    """The operator's tiny VAE decoder for live previews, where previews are shown (SD1.x)."""
    if profile.pipeline_family != "stable-diffusion":
        logger.warning(
            "engine.preview_decoder %s ignored: profile %s shows no live previews",
            location,
            profile.name,
        )
        return
    decoder = load_preview_decoder(
        location,
        latent_channels=int(pipe.vae.config.latent_channels),
        device=device,
        dtype=dtype,
        offline=offline,
        cache_dir=cache_dir,
    )
    attach_decoder(pipe, DecoderPreview(decoder))
    logger.info("live previews decoded by %s", location)


def _realign(pipe: Any) -> None:
    """Copy weights that sit at unaligned addresses (a single-file checkpoint's memory-mapped
    tensors do) into fresh memory: MKL rounds differently on unaligned data, so the same
    weights would render slightly different images depending on how they were loaded."""
    with torch.no_grad():
        for component in pipe.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for tensor in [*component.parameters(), *component.buffers()]:
                if tensor.data_ptr() % 64:
                    tensor.data = tensor.data.clone()


def _explicit_config(config: Any) -> dict[str, Any]:
    """A scheduler config with every value explicit. diffusers marks values a scheduler was
    built with by default (``_use_default_values``) and lets *another* scheduler class built
    from that config use its own defaults instead; a config saved to disk has no such marks.
    Dropping them makes a model behave the same built in memory or loaded from a folder."""
    return {k: v for k, v in dict(config).items() if k != "_use_default_values"}


def _load_detector() -> FaceDetector | None:
    try:
        from engine.subject_checks import FaceDetector
    except ImportError:
        logger.info("subject checks unavailable: no face crops before encoding")
        return None
    return FaceDetector.load()


class _Runner:
    """The worker's view of the loaded model, which ``load`` builds on the worker thread (so
    the model is created, used and freed by one thread); the worker asks for nothing before."""

    def __init__(self, settings: EngineSettings, profile: Profile) -> None:
        self._settings = settings
        self._profile = profile
        self._model: LoadedModel | None = None

    @property
    def model(self) -> LoadedModel:
        assert self._model is not None, "the model is not loaded yet"
        return self._model

    def load(self) -> None:
        """The worker's setup: load the profile, then compile the fast path's buckets."""
        self._model = load_model(self._settings, self._profile)
        self._warm_up()

    def personalizer(self, name: str) -> Personalizer:
        try:
            return self.model.personalizers[name]
        except KeyError:
            raise UnknownPersonalizer(name, sorted(self.model.personalizers)) from None

    def key(self, request: RenderRequest) -> Hashable:
        personalizer = self.personalizer(request.personalizer)
        personalizer.check(request)
        return (request.batch_key, personalizer.batch_key(request))

    def run(
        self, samples: Sequence[RenderRequest], seeds: Sequence[int], on_step: StepCallback
    ) -> BatchOutcome:
        personalizer = self.personalizer(samples[0].personalizer)
        with torch.inference_mode():
            return personalizer.run_batch(
                self.model.pipe,
                samples,
                seeds,
                scheduler_config=self.model.scheduler_config,
                on_step=on_step,
                buckets=self.model.fast.buckets,
            )

    def _warm_up(self) -> None:
        """Compile every batch bucket for every personalizer at the native size, before the
        first request (on the model's thread; a no-op without a compiled fast path)."""
        model, settings = self.model, self._settings
        if not model.fast.warmup:
            return
        size = model.profile.default_size
        guidance = default_guidance(settings, model.profile)
        # Any photo gives features of the right shapes; a person's face crop is not needed.
        photo = PILImage.new("RGB", (size, size), (128, 110, 96))
        cases = {}
        for name, personalizer in model.personalizers.items():
            counts = personalizer.warmup_photo_counts if personalizer.needs_features else (0,)
            for photos in counts:
                features = None
                if photos:
                    with torch.inference_mode():
                        features = personalizer.encode([photo] * photos, ConceptKind.OBJECT)
                request = RenderRequest(
                    prompt="a photo",
                    width=size,
                    height=size,
                    steps=2,
                    guidance=guidance,
                    # Full strength: personalizers that use fewer photos below it (FLUX.2)
                    # then see all of them.
                    identity_strength=1.0,
                    personalizer=name,
                    features=features,
                )

                def render(bucket: int, request: RenderRequest = request) -> None:
                    self.run([request] * bucket, list(range(bucket)), lambda d, t: [True] * bucket)

                label = f"{name} ({photos} photo{'s' if photos > 1 else ''})" if photos else name
                cases[label] = render
        model.warmup_seconds = warm_up(model.fast, settings.max_batch, cases)

    def result(
        self, request: RenderRequest, images: list[Any], timings: dict[str, float]
    ) -> RenderResult:
        return RenderResult(
            images=images,
            seeds=request.seeds,
            timings=timings,
            personalizer=request.personalizer,
            profile=self.model.profile.name,
            is_noise=self.model.profile.is_noise,
        )


class DiffusionEngine:
    """The engine (docs/architecture.md#the-engine) over one loaded profile. Build with
    ``create_engine``."""

    def __init__(self, settings: EngineSettings, worker: Worker, runner: _Runner) -> None:
        self.settings = settings
        self._worker = worker
        self._runner = runner

    # -- facts -------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        return self._runner.model

    @property
    def profile(self) -> Profile:
        return self.model.profile

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def fast_path(self) -> FastPath:
        """The fast-path parts in effect (see engine/acceleration.py)."""
        return self.model.fast

    @property
    def warmup_seconds(self) -> float:
        return self.model.warmup_seconds

    @property
    def personalizers(self) -> list[str]:
        return list(self.model.personalizers)

    @property
    def default_personalizer(self) -> str:
        """The personalizer settings name explicitly, else the profile's default."""
        names = self.model.personalizers
        order = [self.profile.default_personalizer, self.settings.default_personalizer]
        if "default_personalizer" in self.settings.model_fields_set:
            order.reverse()
        for name in order:
            if name in names and names[name].needs_features:
                return name
        return next(iter(names))

    @property
    def encoder_id(self) -> str:
        """The default personalizer's encoder id (features made under another are stale)."""
        return self.encoder_id_for(self.default_personalizer)

    def encoder_id_for(self, personalizer: str | None = None) -> str:
        return self._runner.personalizer(personalizer or self.default_personalizer).encoder_id

    @property
    def native_size(self) -> int:
        return self.profile.default_size

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (8 on Stable Diffusion, 16 on FLUX.2)."""
        return self.profile.size_multiple

    @property
    def default_steps(self) -> int:
        return self.settings.default_steps or self.profile.default_steps

    @property
    def default_guidance(self) -> float:
        return default_guidance(self.settings, self.profile)

    def max_subjects(self, personalizer: str | None = None) -> int:
        """How many subjects one render with ``personalizer`` may show."""
        return self._runner.personalizer(personalizer or self.default_personalizer).max_subjects

    def refines(self, personalizer: str | None = None) -> frozenset[Refinement]:
        """What ``personalizer`` can do with a chosen image (Upscale, Vary: engine/refine.py)."""
        return self._runner.personalizer(personalizer or self.default_personalizer).refinements

    @property
    def is_noise(self) -> bool:
        return self.profile.is_noise

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens the text encoder reads (its window minus start and end tokens, or
        the profile's own limit)."""
        if self.profile.max_prompt_tokens is not None:
            return self.profile.max_prompt_tokens
        return int(self.model.pipe.tokenizer.model_max_length) - 2

    def count_tokens(self, text: str) -> int:
        ids = self.model.pipe.tokenizer(text, add_special_tokens=False).input_ids
        return len(ids)

    def tokenizer_json(self) -> str | None:
        """The text encoder's tokenizer in the ``tokenizers`` library's JSON (the same counts
        as ``count_tokens``, without torch or transformers), or None if it has no such form."""
        backend = getattr(self.model.pipe.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            from tokenizers import Tokenizer

            # The backend keeps the padding and truncation of its last call (a render pads
            # every prompt to the window): a copy without them counts a prompt's own tokens.
            copy = Tokenizer.from_str(backend.to_str())
            copy.no_padding()
            copy.no_truncation()
            return str(copy.to_str())
        except Exception:
            return None

    # -- the Engine protocol ---------------------------------------------------------------

    async def inspect(
        self, photos: Sequence[Image], kind: ConceptKind | str = ConceptKind.PERSON
    ) -> list[PhotoReport]:
        from engine.subject_checks import inspect_photos

        detector = self.model.detector
        kind_name = ConceptKind(kind).value

        def work() -> list[PhotoReport]:
            # A person's photos get identity embeddings (one person per avatar); the embedder
            # is loaded on the model's thread the first time a person is inspected.
            embedder = self._face_embedder() if kind_name == ConceptKind.PERSON.value else None
            return inspect_photos(list(photos), kind_name, detector=detector, embedder=embedder)

        return await self._worker.call(work)

    def _face_embedder(self) -> FaceEmbedder | None:
        if self.model.detector is None:
            return None
        if "face_embedder" not in self.model.extra:
            from engine.subject_checks import FaceEmbedder

            # The descriptor network runs where the model does (the GPU on a CUDA profile).
            device = str(self.model.device)
            self.model.extra["face_embedder"] = FaceEmbedder.load(device=device)
        embedder: FaceEmbedder | None = self.model.extra["face_embedder"]
        return embedder

    async def encode(
        self,
        photos: Sequence[Image],
        kind: ConceptKind | str,
        personalizer: str | None = None,
    ) -> ConceptFeatures:
        """Features of a concept from its photos; for a person, each photo is cropped around
        its face (with margin) when a face detector is available."""
        chosen = self._runner.personalizer(personalizer or self.default_personalizer)
        concept_kind = ConceptKind(kind)
        images = list(photos)

        def work() -> ConceptFeatures:
            boxes = self._face_boxes(images) if concept_kind == ConceptKind.PERSON else None
            with torch.inference_mode():
                return chosen.encode(images, concept_kind, boxes)

        return await self._worker.call(work)

    async def render(
        self,
        request: RenderRequest,
        progress: Progress | None = None,
        preview: Preview | None = None,
    ) -> RenderResult:
        """Render from the request's cached features (never from photos). Raises
        ``StaleFeatures`` for features of another encoder, before anything is queued.
        ``preview`` gets live previews of the images while they denoise (engine/worker.py)."""
        self._runner.key(request)
        return await self._worker.submit(request, progress, preview)

    @property
    def text_encoder_id(self) -> str:
        """Names the text encoder's weights (sentence embeddings compare only under one)."""
        from engine.text_embedding import text_encoder_id

        profile = self.profile
        return text_encoder_id(profile.name, profile.pipeline_family, profile.base_model)

    async def embed_texts(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """Unit-length sentence embeddings of ``texts`` from the loaded text encoder, one per
        text, computed on the model's thread (engine/text_embedding.py). Raises
        ``TextEncoderUnavailable`` when the pipeline has no usable text encoder."""
        from engine.text_embedding import embed_texts

        items = [str(t) for t in texts]
        model = self.model

        def work() -> list[tuple[float, ...]]:
            vectors = embed_texts(model.pipe, model.profile.pipeline_family, items)
            return [tuple(float(x) for x in row) for row in vectors.tolist()]

        result: list[tuple[float, ...]] = await self._worker.call(work)
        return result

    # -- likeness (engine/likeness.py) -------------------------------------------------------

    def likeness_methods(self) -> dict[str, str]:
        """Subject kind -> how this engine scores a render's likeness to such an avatar: a
        person's face where the face models are installed, a pet's or object's image
        similarity where the profile has an image encoder. Kinds missing are not scored."""
        from engine.image_similarity import image_method
        from engine.likeness import FACE_METHOD

        methods: dict[str, str] = {}
        if self.model.detector is not None and self._face_embedder() is not None:
            methods[ConceptKind.PERSON.value] = FACE_METHOD
        image = image_method(self.model)
        if image is not None:
            methods[ConceptKind.PET.value] = methods[ConceptKind.OBJECT.value] = image
        return methods

    async def likeness_reference(
        self,
        images: Sequence[Image],
        kind: ConceptKind | str,
        face_embeddings: Sequence[Sequence[float]] = (),
    ) -> LikenessReference | None:
        """An avatar's enrolled identity: a person's from the face embeddings its photos'
        checks computed (``inspect``; never a second face pass), a pet's or object's from
        its photos' image embeddings. None when this engine does not score ``kind``."""
        from engine.likeness import face_reference

        concept_kind = ConceptKind(kind)
        if concept_kind.value not in self.likeness_methods():
            return None
        if concept_kind == ConceptKind.PERSON:
            return face_reference(face_embeddings)
        from engine.image_similarity import image_reference

        model, photos = self.model, list(images)
        reference: LikenessReference | None = await self._worker.call(
            lambda: image_reference(model, photos)
        )
        return reference

    async def likeness(
        self, images: Sequence[Image], reference: LikenessReference
    ) -> list[LikenessScore]:
        """Each image's likeness to ``reference``, on the model's thread. Raises ValueError
        for a reference this engine cannot score (another method)."""
        from engine.likeness import FACE_METHOD, score_faces

        model, rendered = self.model, list(images)

        def work() -> list[LikenessScore]:
            if reference.method == FACE_METHOD:
                detector, embedder = model.detector, self._face_embedder()
                if detector is None or embedder is None:
                    raise ValueError("face likeness needs the face models (the `faces` extra)")
                return score_faces(rendered, reference, detector, embedder)
            from engine.image_similarity import score_images

            return score_images(model, rendered, reference)

        scores: list[LikenessScore] = await self._worker.call(work)
        return scores

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model's thread (for tools and tests that need the pipeline)."""
        return await self._worker.call(fn)

    async def aclose(self) -> None:
        await self._worker.aclose()
        shutil.rmtree(self.model.workdir, ignore_errors=True)

    def _face_boxes(self, images: Sequence[Image]) -> list[FaceBox | None] | None:
        detector = self.model.detector
        if detector is None:
            return None
        from engine.subject_checks import select_faces

        boxes: list[FaceBox | None] = []
        for image in images:
            faces = select_faces(detector.detect(image))
            boxes.append(faces[0] if faces else None)
        return boxes


async def create_engine(settings: EngineSettings) -> DiffusionEngine:
    """Start an engine for ``settings``: resolve the profile, load it on the worker thread.

    Raises ``UnknownProfile``, ``MissingWeights`` (with what is missing and how to get it) or
    ``UnknownPersonalizer`` when the profile cannot load.
    """
    runner = _Runner(settings, resolve_profile(settings))
    worker = Worker(
        runner,
        max_batch=settings.max_batch,
        gather_window_ms=settings.gather_window_ms,
        setup=runner.load,
        preview_interval_s=settings.preview_interval_s,
    )
    try:
        await worker.call(lambda: None)  # waits for setup; re-raises its failure
    except BaseException:
        await worker.aclose()
        raise
    return DiffusionEngine(settings, worker, runner)
