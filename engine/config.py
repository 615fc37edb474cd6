"""Engine settings: a plain pydantic model, embedded in the app's settings and passed explicitly.

The engine never reads the environment itself; whoever builds an engine hands it one of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Personalizer = Literal["ip-adapter", "instantbooth"]


class EngineSettings(BaseModel):
    # Which named configuration to run (see engine/profiles.py): tiny, sd15-shaped,
    # sd15-ip-adapter-plus-face, sd15-instantbooth.
    profile: str = "tiny"
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
    default_personalizer: Personalizer = "ip-adapter"
    # Dynamic batching: the largest batch and how long the worker waits for company.
    max_batch: int = Field(default=4, ge=1, le=64)
    gather_window_ms: int = Field(default=30, ge=0, le=5000)
    # None: the profile's own (25 on SD1.5 profiles, 4 on tiny, whose images are noise anyway).
    default_steps: int | None = Field(default=None, ge=1, le=150)
    default_guidance: float = Field(default=6.0, ge=0.0, le=30.0)
    # Only set for the tiny profile: deterministic random weights.
    seed: int = 0
