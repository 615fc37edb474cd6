"""Engine settings: a plain pydantic model, embedded in the app's settings and passed explicitly.

The engine never reads the environment itself; whoever builds an engine hands it one of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from kinds import DEFAULT_PERSONALIZER, PersonalizerName

Personalizer = PersonalizerName  # the names and the default are shared: kinds/


# "auto": on where it helps (CUDA), off elsewhere; "on"/"off" force it (tests force "on" on
# the CPU to check compiled against eager).
Switch = Literal["auto", "on", "off"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class FastPathSettings(BaseModel):
    """The GPU fast path (engine/acceleration.py); every part can be switched off alone."""

    # The denoiser (UNet) and VAE in channels-last memory layout (faster convolutions).
    channels_last: Switch = "auto"
    # One fused QKV projection in every self-attention (diffusers' fuse_projections).
    fuse_qkv: Switch = "auto"
    # torch.compile of the denoiser, and of the VAE decoder.
    compile: Switch = "auto"
    compile_vae: Switch = "auto"
    compile_mode: CompileMode = "default"
    # The only batch sizes the compiled denoiser sees: a batch is padded up to the next one,
    # so dynamic batching never triggers a recompile. Batches larger than max_batch never
    # form; the largest bucket must hold max_batch images.
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16)
    # Compile every bucket at engine start (minutes on a GPU, logged), not on first use.
    warmup: Switch = "auto"


class EngineSettings(BaseModel):
    # Which named configuration to run (engine/profiles.py). A real one by default: the
    # random-weight ones (tiny, sd15-shaped, ...) render noise and are named explicitly by the
    # demo, the tests and the benchmarks.
    profile: str = "sd15-ip-adapter-plus-face"
    # "auto" picks cuda, then mps, then cpu.
    device: str = "auto"
    # "auto" picks bf16 on CUDA with bf16 support, fp16 on other CUDA/MPS, fp32 on CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Overrides of the profile's model locations: a hub id, a local diffusers folder, or a
    # single .safetensors/.ckpt file.
    base_model: str | None = None
    # The diffusers configs (hub id or local folder) a single-file base model is built with;
    # unset: diffusers infers them (SD1.5's, fetched from the hub unless cached).
    base_model_config: str | None = None
    ip_adapter: str | None = None
    ip_adapter_weight_name: str | None = None
    image_encoder: str | None = None
    instantbooth_weights: str | None = None
    # Never touch the network for weights (also honoured through HF_HUB_OFFLINE=1).
    offline: bool = False
    cache_dir: Path | None = None
    default_personalizer: Personalizer = DEFAULT_PERSONALIZER
    # Dynamic batching: the largest batch and how long the worker waits for company.
    max_batch: int = Field(default=4, ge=1, le=64)
    gather_window_ms: int = Field(default=30, ge=0, le=5000)
    # Live previews: at most one every this many seconds, a Discord edit's worth (0: every step).
    preview_interval_s: float = Field(default=3.0, ge=0.0, le=600.0)
    # A tiny VAE decoder for those previews instead of the fixed latent-to-RGB projection: a
    # hub id (madebyollin/taesd for SD1.x) or a local folder in diffusers' AutoencoderTiny
    # layout (config.json + diffusion_pytorch_model.safetensors). SD1.x profiles only.
    preview_decoder: str | None = None
    # None: the profile's own (25 on SD1.5 profiles, 4 on tiny, whose images are noise anyway).
    default_steps: int | None = Field(default=None, ge=1, le=150)
    default_guidance: float = Field(default=6.0, ge=0.0, le=30.0)
    # Only set for the tiny profile: deterministic random weights.
    seed: int = 0
    fast: FastPathSettings = Field(default_factory=FastPathSettings)
