"""The GPU fast path: half precision with SDPA, channels-last, fused QKV projections,
``torch.compile`` of the denoiser and VAE decoder over a fixed set of batch buckets, and a
warm-up that compiles every bucket at engine start.

Every part is a switch in ``FastPathSettings`` ("auto" = on where it helps: CUDA). Half
precision is the engine's dtype choice (bf16/fp16 on CUDA, ``engine.loading.pick_dtype``);
attention is PyTorch's SDPA through diffusers' default ``AttnProcessor2_0`` (and the fused
processor below), so neither needs a switch of its own.

Why buckets: a compiled module is specialised to its input shapes (``dynamic=False``: dynamic
shapes cost speed), so every new batch size would compile again, for minutes on a GPU, in the
middle of serving. The pipeline pads a batch up to the next bucket (``engine.pipeline``), and
the warm-up compiles each bucket once before the first request.

Why processors and hooks must stay the same objects: dynamo guards on them. Personalizers
install their processors per batch (the same stored objects every time) and, when
``LoadContext.static_graph`` is set, keep their hooks installed and switch them by state, so
each (bucket, personalizer) pair compiles once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import FastPathSettings

logger = logging.getLogger(__name__)


# With a compiled denoiser, personalizers pad an avatar's photos to one of these slot counts
# (padding masked out of attention, so it takes no weight): photo counts then neither
# recompile nor split batches. Avatars hold at most 10 photos; most have a few.
PHOTO_SLOT_BUCKETS = (4, 10)


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size`` samples (``size`` itself without buckets, or
    when it is larger than every bucket)."""
    fitting = [b for b in buckets if b >= size]
    return min(fitting) if fitting else size


@dataclass(frozen=True)
class FastPath:
    """The fast-path parts in effect for one loaded engine (settings resolved for its device).

    ``buckets`` is empty when the denoiser is not compiled (any batch size is fine then).
    """

    channels_last: bool = False
    fuse_qkv: bool = False
    compile: bool = False
    compile_vae: bool = False
    compile_mode: str = "default"
    buckets: tuple[int, ...] = ()
    warmup: bool = False

    @property
    def static_graph(self) -> bool:
        return self.compile or self.compile_vae

    def describe(self) -> str:
        parts = [
            name
            for name, on in (
                ("channels-last", self.channels_last),
                ("fused QKV", self.fuse_qkv),
                (f"compiled denoiser ({self.compile_mode})", self.compile),
                ("compiled VAE decoder", self.compile_vae),
            )
            if on
        ]
        if self.buckets:
            parts.append("batch buckets " + "/".join(map(str, self.buckets)))
        return ", ".join(parts) or "eager (no fast path)"


def resolve_fast_path(settings: FastPathSettings, device: torch.device) -> FastPath:
    """Settings → the parts in effect: "auto" means on CUDA only (on a CPU, compiling costs
    more than it saves for our models, and channels-last convolutions are slower)."""

    def on(switch: str) -> bool:
        return switch == "on" or (switch == "auto" and device.type == "cuda")

    compile_denoiser = on(settings.compile)
    buckets = tuple(sorted({int(b) for b in settings.batch_buckets if int(b) >= 1}))
    if compile_denoiser and not buckets:
        raise ValueError("engine.fast.batch_buckets needs at least one batch size ≥ 1")
    compile_vae = on(settings.compile_vae)
    return FastPath(
        channels_last=on(settings.channels_last),
        fuse_qkv=on(settings.fuse_qkv),
        compile=compile_denoiser,
        compile_vae=compile_vae,
        compile_mode=settings.compile_mode,
        # The VAE decoder sees the same batches, so buckets also help when only it compiles.
        buckets=buckets if (compile_denoiser or compile_vae) else (),
        warmup=(compile_denoiser or compile_vae) and on(settings.warmup),
    )


def denoiser_of(pipe: Any) -> Any:
    """The pipeline's denoiser (a diffusers model): a UNet (Stable Diffusion) or a
    transformer (FLUX.2)."""
    module = getattr(pipe, "unet", None)
    return module if module is not None else pipe.transformer


def apply_fast_path(pipe: Any, fast: FastPath, processor_maps: Sequence[dict[str, Any]]) -> None:
    """Apply ``fast`` to a loaded pipeline whose personalizers are already loaded
    (``processor_maps``: the processor maps they install, updated in place when fusing)."""
    denoiser = denoiser_of(pipe)
    vae = pipe.vae
    if fast.channels_last:
        # Convolutions (UNet, VAE) run faster channels-last on tensor cores; a transformer has
        # none to speak of, so only a UNet denoiser is converted.
        if hasattr(pipe, "unet"):
            denoiser.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if fast.fuse_qkv:
        if hasattr(pipe, "unet"):
            fused = fuse_self_attention(denoiser, processor_maps)
            logger.info("fused QKV projections in %d self-attention layers", fused)
        else:
            # FLUX.2's attention reads ``attn.fused_projections`` itself.
            denoiser.fuse_qkv_projections()
    if fast.compile or fast.compile_vae:
        # Dynamo caches compiled frames per code object, shared by every instance of a class;
        # measured here: a second engine in the same process reused graphs of the first
        # (its UNet's hooks notwithstanding) and rendered slightly different images. One
        # engine per process is the design; dropping earlier graphs keeps it correct anyway.
        torch._dynamo.reset()
        _raise_recompile_limit(fast)
    if fast.compile:
        # In place (Module.compile): the pipeline, hooks and processors keep the same module.
        denoiser.compile(mode=fast.compile_mode, dynamic=False)
    if fast.compile_vae:
        vae.decoder.compile(mode=fast.compile_mode, dynamic=False)
    logger.info("engine fast path: %s", fast.describe())


def fuse_self_attention(unet: Any, processor_maps: Sequence[dict[str, Any]]) -> int:
    """Fuse Q, K and V of every UNet self-attention into one projection and point every
    processor map at ONE shared fused processor for those layers.

    Only self-attention: IP-Adapter's and InstantBooth's cross-attention processors read the
    separate projections (and add their own), so cross-attention stays as loaded. Maps are
    the unet's own and each personalizer's (they install theirs per batch).
    """
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
    )

    shared = FusedAttnProcessor2_0()
    current = dict(unet.attn_processors)
    names = []
    for name, module in unet.named_modules():
        is_self = isinstance(module, Attention) and not module.is_cross_attention
        if is_self and name.endswith("attn1"):
            module.fuse_projections(fuse=True)
            names.append(f"{name}.processor")
    for mapping in [current, *processor_maps]:
        for key in names:
            if type(mapping.get(key)) is AttnProcessor2_0:
                mapping[key] = shared
    unet.set_attn_processor(current)
    return len(names)


def _raise_recompile_limit(fast: FastPath) -> None:
    """Dynamo gives up compiling (falls back to eager) after ``recompile_limit`` variants of
    one frame; buckets × personalizers × sizes can exceed its default of 8."""
    import torch._dynamo

    wanted = max(64, 8 * max(1, len(fast.buckets)))
    config: Any = torch._dynamo.config
    if config.recompile_limit < wanted:
        config.recompile_limit = wanted
    if config.accumulated_recompile_limit < 4 * wanted:
        config.accumulated_recompile_limit = 4 * wanted


WarmupStep = Callable[[int], None]


def warm_up(
    fast: FastPath,
    max_batch: int,
    cases: Mapping[str, WarmupStep],
) -> float:
    """Compile every bucket up to the one that holds ``max_batch`` for every case (a
    personalizer: ``cases[name](bucket)`` renders one batch of that size), logging progress.
    Returns the seconds it took."""
    if not fast.warmup or not fast.buckets:
        return 0.0
    top = bucket_for(max_batch, fast.buckets)
    sizes = [b for b in fast.buckets if b <= top]
    total = len(sizes) * len(cases)
    started = time.perf_counter()
    done = 0
    for name, render in cases.items():
        for size in sizes:
            step_started = time.perf_counter()
            render(size)
            done += 1
            logger.info(
                "warm-up %d/%d: %s, batch %d compiled in %.1fs",
                done,
                total,
                name,
                size,
                time.perf_counter() - step_started,
            )
    seconds = time.perf_counter() - started
    logger.info("warm-up done: %d batch shapes in %.1fs", total, seconds)
    return seconds
