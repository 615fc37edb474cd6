"""The render pipeline, as named stages (diffusers' own shape):

    check_inputs → encode_prompt → personalizer.prepare → prepare_latents → denoise (+decode)

Denoising is the stock ``StableDiffusionPipeline.__call__``, fed precomputed prompt embeddings,
per-sample image embeddings, initial latents drawn from one CPU ``torch.Generator`` per image,
and the same generators for the scheduler's noise, so an image depends on its own seed only,
never on its batch mates.

Image-to-image (``RenderRequest.init_image``, engine/refine.py) runs through the same loop:
the source, VAE-encoded deterministically, is noised to the timestep ``strength`` selects
(diffusers' img2img recipe, ``get_timesteps``), and the scheduler's schedule is cut to start
there. A request with ``tile`` denoises in overlapping tiles whose noise predictions are
averaged with feathered weights at every step (MultiDiffusion), so no seams need blending
afterwards and the scheduler still sees one latent image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image as PILImage

from engine.acceleration import bucket_for, denoiser_of
from engine.errors import InvalidRequest
from engine.personalizers.base import (
    BatchOutcome,
    DenoiseBatch,
    Personalizer,
    PreviewingStepCallback,
    StepCallback,
)
from engine.preview import previewer_for
from engine.types import SCHEDULER_NAMES, RenderRequest

if TYPE_CHECKING:
    # diffusers' lazily imported pipelines are opaque to mypy: type them as Any.
    StableDiffusionPipeline = Any
else:
    from diffusers import StableDiffusionPipeline

logger = logging.getLogger(__name__)

# name → (scheduler class, config overrides)
SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
}
assert set(SCHEDULERS) == set(SCHEDULER_NAMES), "engine.types.SCHEDULER_NAMES is out of date"


class AvatarPipeline(StableDiffusionPipeline):
    """The stock pipeline, except that precomputed IP-Adapter embeddings are taken as already
    laid out for the batch: one row per UNet row (2B under CFG, negatives first).

    The stock method broadcasts ONE set of embeddings to the whole batch; a batch of several
    users' requests needs one set per sample. Live images (``ip_adapter_image``) still take the
    stock path.

    With ``latents_are_noised`` set (image-to-image), the latents passed in are already noised
    to the first timestep: they are not scaled by the scheduler's ``init_noise_sigma``.
    """

    latents_are_noised = False

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.latents_are_noised and latents is not None:
            return latents.to(device)
        return super().prepare_latents(  # type: ignore[no-any-return]
            batch_size, num_channels_latents, height, width, dtype, device, generator, latents
        )

    def prepare_ip_adapter_image_embeds(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: list[torch.Tensor] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
    ) -> list[torch.Tensor]:
        if ip_adapter_image is not None or ip_adapter_image_embeds is None:
            return super().prepare_ip_adapter_image_embeds(
                ip_adapter_image,
                ip_adapter_image_embeds,
                device,
                num_images_per_prompt,
                do_classifier_free_guidance,
            )
        rows = num_images_per_prompt * (2 if do_classifier_free_guidance else 1)
        for embeds in ip_adapter_image_embeds:
            if embeds.shape[0] != rows:
                raise ValueError(f"image embeddings have {embeds.shape[0]} rows, need {rows}")
        # Kept so that samples dropped mid-denoising can leave this list too (it is the one
        # the denoising loop reads).
        self.batch_image_embeds = [embeds.to(device=device) for embeds in ip_adapter_image_embeds]
        return self.batch_image_embeds


def avatar_pipeline(components: Mapping[str, Any]) -> AvatarPipeline:
    """An ``AvatarPipeline`` of these modules (a loaded stock pipeline's ``components``, or a
    random-weight profile's), without diffusers' safety checker, progress bar off."""
    modules = {**components, "safety_checker": None}
    modules.setdefault("image_encoder", None)
    modules.setdefault("feature_extractor", None)
    avatar = AvatarPipeline(**modules, requires_safety_checker=False)
    avatar.set_progress_bar_config(disable=True)
    return avatar


class RowwiseLinear(torch.nn.Linear):
    """A Linear that multiplies a 2-D input one row at a time.

    CPU BLAS computes a matmul with a few rows by other kernels than one with many, so the
    UNet's time embedding (one row per sample) would depend on the batch size in the last bits.
    One row at a time always takes the same kernel; 3-D inputs (tokens) are unaffected.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 and x.shape[0] > 1:
            return torch.cat([F.linear(row, self.weight, self.bias) for row in x.split(1)])
        return super().forward(x)


def make_batch_invariant(module: torch.nn.Module) -> int:
    """Swap every ``nn.Linear`` under ``module`` for a ``RowwiseLinear`` sharing its weights.

    Used on the CPU, with oneDNN convolutions off and the VAE decoding one image at a time,
    so that an image is bit-identical alone or batched. Returns the number of swaps.
    """
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                rowwise = RowwiseLinear.__new__(RowwiseLinear)
                rowwise.__dict__.update(child.__dict__)
                setattr(parent, name, rowwise)
                swapped += 1
    return swapped


def make_pipeline_batch_invariant(pipe: Any) -> None:
    """Make an image bit-identical alone or batched on the CPU, for either family: oneDNN off
    (its convolution algorithms depend on the batch size), every ``nn.Linear`` of the
    denoiser (Stable Diffusion's UNet, FLUX.2's transformer) row-wise on 2-D inputs (the
    timestep embedding and modulations: one row per sample), VAE slicing (one image per
    decode). FLUX.2's personalizer also encodes prompts one at a time."""
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    make_batch_invariant(denoiser_of(pipe))
    pipe.vae.enable_slicing()
    logger.info("CPU batch-invariant mode: oneDNN off, row-wise linears, per-image VAE decode")


def select_scheduler_rows(scheduler: Any, keep: Sequence[int], batch: int) -> None:
    """Keep only ``keep``'s rows of a scheduler's per-sample state (multistep solvers remember
    earlier model outputs: DPM-Solver's ``model_outputs``, PNDM's ``ets``...)."""

    def select(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[0] == batch:
            return value[list(keep)]
        if isinstance(value, list):
            return [select(v) for v in value]
        return value

    for name, value in list(vars(scheduler).items()):
        if isinstance(value, torch.Tensor | list):
            setattr(scheduler, name, select(value))


def check_inputs(
    samples: Sequence[RenderRequest], seeds: Sequence[int], personalizer: Personalizer
) -> None:
    """One batch = compatible samples that this personalizer accepts, a seed each."""
    if not samples:
        raise InvalidRequest("empty batch")
    if len(seeds) != len(samples):
        raise InvalidRequest(f"{len(samples)} samples but {len(seeds)} seeds")
    keys = {(s.batch_key, personalizer.batch_key(s)) for s in samples}
    if len(keys) != 1:
        raise InvalidRequest(f"incompatible requests in one batch: {sorted(map(str, keys))}")
    for sample in samples:
        personalizer.check(sample)


def padded_batch(
    samples: Sequence[RenderRequest], seeds: Sequence[int], buckets: Sequence[int]
) -> tuple[list[RenderRequest], list[int]]:
    """The batch padded up to its bucket (a compiled denoiser sees no other batch size) by
    repeating its last sample and seed; the padding rows are computed and dropped."""
    extra = (bucket_for(len(samples), buckets) if buckets else len(samples)) - len(samples)
    return [*samples, *[samples[-1]] * extra], [*seeds, *[seeds[-1]] * extra]


def seeded_noise(
    seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """(len(seeds), *shape) noise from one CPU generator per image (the same on every device,
    never depending on batch mates); the generators, advanced, go on to the scheduler."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    noise = randn_tensor((len(seeds), *shape), generator=generators, device=device, dtype=dtype)
    return noise, generators


def encode_prompt(
    pipe: StableDiffusionPipeline, samples: Sequence[RenderRequest], do_cfg: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings per sample: (B, L, D) positives and, under CFG, negatives."""
    positive, negative = pipe.encode_prompt(
        [s.prompt for s in samples],
        pipe._execution_device,
        1,
        do_cfg,
        negative_prompt=[s.negative_prompt for s in samples] if do_cfg else None,
    )
    return positive, negative


def prepare_latents(
    pipe: StableDiffusionPipeline,
    seeds: Sequence[int],
    height: int,
    width: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial latents, one seeded generator per image (``seeded_noise``)."""
    factor = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    return seeded_noise(seeds, shape, pipe._execution_device, dtype)


def start_step(steps: int, strength: float) -> int:
    """How many of the schedule's ``steps`` an image-to-image render skips (diffusers'
    ``get_timesteps``: the last ``int(steps x strength)`` run), but at least one step runs."""
    return steps - max(1, min(int(steps * strength), steps))


def cut_schedule(scheduler: Any, start: int) -> None:
    """Make every schedule ``scheduler`` sets begin ``start`` steps in: its timesteps and sigmas
    lose their head, so the stock loop (which sets the schedule itself) runs only the tail, and
    the scheduler's own step bookkeeping (multistep solvers' final lower-order step) sees the
    tail as the whole schedule."""
    if not start:
        return
    full_schedule = scheduler.set_timesteps

    def set_tail(*args: Any, **kwargs: Any) -> None:
        full_schedule(*args, **kwargs)
        skip = start * scheduler.order
        scheduler.timesteps = scheduler.timesteps[skip:]
        sigmas = getattr(scheduler, "sigmas", None)
        if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1:
            scheduler.sigmas = sigmas[skip:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

    scheduler.set_timesteps = set_tail


def init_latents(
    pipe: StableDiffusionPipeline, samples: Sequence[RenderRequest], dtype: torch.dtype
) -> torch.Tensor:
    """(B, C, h, w) latents of each sample's init image: resized to the request's size
    (Lanczos), VAE-encoded deterministically (the latent distribution's mode, so a seed gives
    the same image batched or alone) and scaled by the VAE's scaling factor. One encode per
    request (its ``count`` samples share it), one image at a time."""
    vae = pipe.vae
    encoded: dict[int, torch.Tensor] = {}
    rows = []
    for sample in samples:
        if id(sample) not in encoded:
            assert sample.init_image is not None
            size = (sample.width, sample.height)
            image = sample.init_image.convert("RGB").resize(size, PILImage.Resampling.LANCZOS)
            pixels = pipe.image_processor.preprocess(
                image, height=sample.height, width=sample.width
            )
            pixels = pixels.to(device=vae.device, dtype=vae.dtype)
            latent = vae.encode(pixels).latent_dist.mode()
            encoded[id(sample)] = latent * vae.config.scaling_factor
        rows.append(encoded[id(sample)])
    return torch.cat(rows).to(device=pipe._execution_device, dtype=dtype)


def noised_init_latents(
    pipe: StableDiffusionPipeline,
    samples: Sequence[RenderRequest],
    seeds: Sequence[int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Image-to-image starting latents: the init latents noised, with each seed's own noise,
    to the first timestep of the (cut) schedule."""
    first = samples[0]
    scheduler = pipe.scheduler
    cut_schedule(scheduler, start_step(first.steps, first.strength))
    scheduler.set_timesteps(first.steps, device=pipe._execution_device)
    clean = init_latents(pipe, samples, dtype)
    noise, generators = seeded_noise(seeds, tuple(clean.shape[1:]), clean.device, dtype)
    timestep = scheduler.timesteps[:1].repeat(len(samples))
    return scheduler.add_noise(clean, noise, timestep), generators


def tile_origins(size: int, tile: int) -> list[int]:
    """Starts of tiles of ``tile`` covering ``0..size`` with a quarter-tile overlap (more
    where the last tile is pushed back to end at ``size``)."""
    if size <= tile:
        return [0]
    stride = tile - tile // 4
    origins = list(range(0, size - tile, stride))
    return [*origins, size - tile]


def feather(size: int, ramp: int) -> torch.Tensor:
    """Blending weights along one tile side: rising linearly over ``ramp`` cells from each
    edge, so overlapping tiles hand over smoothly; never zero (a border cell has one tile)."""
    index = torch.arange(size, dtype=torch.float32)
    distance = torch.minimum(index + 1, size - index)
    return distance.clamp(max=max(1, ramp)) / max(1, ramp)


@contextmanager
def tiled_denoiser(denoiser: torch.nn.Module, tile: int) -> Iterator[None]:
    """While inside, ``denoiser`` (the UNet) predicts on overlapping ``tile`` x ``tile``
    latent tiles and returns their feather-weighted average (MultiDiffusion: the average of
    the tiles' predictions is what each step applies). Each tile keeps the whole batch, so
    per-row state (CFG halves, per-sample image embeddings) is untouched."""
    whole = denoiser.forward

    def forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        height, width = sample.shape[-2:]
        th, tw = min(tile, height), min(tile, width)
        total = torch.zeros_like(sample)
        weights = torch.zeros((height, width), dtype=sample.dtype, device=sample.device)
        patch = torch.outer(feather(th, th // 4), feather(tw, tw // 4)).to(sample)
        wants_dict = kwargs.pop("return_dict", True)
        for y in tile_origins(height, th):
            for x in tile_origins(width, tw):
                window = (..., slice(y, y + th), slice(x, x + tw))
                out = whole(sample[window], timestep, *args, return_dict=False, **kwargs)[0]
                total[window] += out * patch
                weights[y : y + th, x : x + tw] += patch
        merged = total / weights
        if wants_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=merged)
        return (merged,)

    denoiser.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del denoiser.forward


def preview_sink(
    pipe: StableDiffusionPipeline, on_step: StepCallback | None
) -> Callable[[torch.Tensor, Sequence[int], int], None] | None:
    """Where live previews of a batch go: ``(latents, batch positions, real samples)``;
    None when the caller takes none or this pipeline has no way to make them (neither a
    tiny decoder nor a latent-to-RGB projection for its VAE family). Padding rows (positions
    from ``real`` on) are never previewed."""
    if not isinstance(on_step, PreviewingStepCallback):
        return None
    previewer = previewer_for(pipe)
    if previewer is None:
        return None

    def sink(latents: torch.Tensor, positions: Sequence[int], real: int) -> None:
        if not on_step.preview_due():
            return
        rows = [j for j, position in enumerate(positions) if position < real]
        images = previewer.images(latents[rows])
        on_step.preview({positions[j]: image for j, image in zip(rows, images, strict=True)})

    return sink


class StableDiffusionPersonalizer(Personalizer):
    """A personalizer of the Stable Diffusion family: it conditions the shared pipeline
    (``prepare``) and renders through this module's denoising loop."""

    def run_batch(
        self,
        pipe: Any,
        samples: Sequence[RenderRequest],
        seeds: Sequence[int],
        *,
        scheduler_config: Any,
        on_step: StepCallback | None = None,
        buckets: Sequence[int] = (),
    ) -> BatchOutcome:
        return run_batch(
            pipe,
            self,
            samples,
            seeds,
            scheduler_config=scheduler_config,
            on_step=on_step,
            buckets=buckets,
        )


def run_batch(
    pipe: StableDiffusionPipeline,
    personalizer: Personalizer,
    samples: Sequence[RenderRequest],
    seeds: Sequence[int],
    *,
    scheduler_config: Any,
    on_step: StepCallback | None = None,
    buckets: Sequence[int] = (),
) -> BatchOutcome:
    """Render one batch: ``samples[i]`` with ``seeds[i]``; images in the same order.

    With ``buckets`` (a compiled denoiser), the batch is padded up to the next bucket by
    repeating its last sample, and shrinks mid-denoising (cancellations) only to a smaller
    bucket, keeping some unwanted rows as padding: the denoiser never sees a new batch size.
    Padding rows are dropped from the outcome.
    """
    check_inputs(samples, seeds, personalizer)
    real = len(samples)
    samples, seeds = padded_batch(samples, seeds, buckets)
    first = samples[0]
    do_cfg = first.guidance > 1.0
    # A fresh scheduler per batch (schedulers keep per-run state).
    scheduler_class, overrides = SCHEDULERS[first.scheduler]
    pipe.scheduler = scheduler_class.from_config(scheduler_config, **overrides)
    prompt_embeds, negative_embeds = encode_prompt(pipe, samples, do_cfg)
    batch = DenoiseBatch(
        samples=samples,
        do_cfg=do_cfg,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        device=pipe._execution_device,
        dtype=prompt_embeds.dtype,
    )
    prepared = personalizer.prepare(pipe, batch)
    if prepared.prompt_embeds is not None:
        prompt_embeds = prepared.prompt_embeds
    if prepared.negative_prompt_embeds is not None:
        negative_embeds = prepared.negative_prompt_embeds
    if first.is_image_to_image:
        latents, generators = noised_init_latents(pipe, samples, seeds, prompt_embeds.dtype)
        total = first.steps - start_step(first.steps, first.strength)
    else:
        latents, generators = prepare_latents(
            pipe, seeds, first.height, first.width, prompt_embeds.dtype
        )
        total = first.steps
    alive = list(range(len(samples)))  # batch positions still being denoised
    pipe.batch_image_embeds = None
    preview = preview_sink(pipe, on_step)

    def step_end(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        nonlocal alive
        if on_step is None:
            return {}
        wanted = on_step(step + 1, total)
        if preview is not None and step + 1 < total:
            preview(kwargs["latents"], alive, real)
        keep = [j for j, sample in enumerate(alive) if sample < real and wanted[sample]]
        if not keep:  # every request of the batch is gone: stop denoising
            p._interrupt = True
            alive = []
            return {}
        target = bucket_for(len(keep), buckets) if buckets else len(keep)
        if target >= len(alive) or step + 1 >= total:
            return {}
        if prepared.select_rows is None:
            return {}  # this personalizer cannot shrink: the rows run on, discarded at the end
        if target > len(keep):  # stay on a bucket: some unwanted rows go on as padding
            spare = [j for j in range(len(alive)) if j not in keep]
            keep = sorted(keep + spare[: target - len(keep)])
        rows = keep + [len(alive) + j for j in keep] if do_cfg else keep
        select_scheduler_rows(p.scheduler, keep, len(alive))
        generators[:] = [generators[j] for j in keep]
        if p.batch_image_embeds is not None:
            p.batch_image_embeds[:] = [embeds[rows] for embeds in p.batch_image_embeds]
        prepared.select_rows(keep, rows)
        alive = [alive[j] for j in keep]
        return {"latents": kwargs["latents"][keep], "prompt_embeds": kwargs["prompt_embeds"][rows]}

    tiling = tiled_denoiser(pipe.unet, first.tile // pipe.vae_scale_factor) if first.tile else None
    pipe.latents_are_noised = first.is_image_to_image
    try:
        with prepared.context, tiling or nullcontext():
            output = pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                ip_adapter_image_embeds=prepared.ip_adapter_image_embeds,
                latents=latents,
                generator=generators,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                height=first.height,
                width=first.width,
                cross_attention_kwargs=prepared.cross_attention_kwargs,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
                output_type="pil",
            )
    finally:
        pipe.latents_are_noised = False
    pipe.batch_image_embeds = None
    if not alive:
        return BatchOutcome(images=[], kept=[])
    images = list(output.images)[: len(alive)]
    stayed = [(image, sample) for image, sample in zip(images, alive, strict=True) if sample < real]
    return BatchOutcome(images=[i for i, _ in stayed], kept=[s for _, s in stayed])
