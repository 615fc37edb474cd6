"""The toy-world base model's parts: a small VAE (f = 4), a small text-to-image UNet, a tiny
CLIP text encoder (trained with the UNet) with the tiny tokenizer, and the noise schedule
(issue 15, part 2).

The base is saved as a standard diffusers ``StableDiffusionPipeline`` folder, which the engine
loads like any other base model (``EngineSettings.base_model``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from engine.tiny import tiny_tokenizer

logger = logging.getLogger(__name__)

TEXT_DIM = 32  # the tiny CLIP's width; also the UNet's cross-attention width
MAX_TOKENS = 32  # the longest toy-world caption with "sks object" is 26 tokens


@dataclass(frozen=True)
class ModelSizes:
    vae_channels: tuple[int, ...] = (32, 64, 64)  # three levels: f = 4
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    # 4 attention heads (head width 16 and 32), not SD's 8: torch's CPU flash attention is
    # slow at head width 8, and 4 heads made a UNet training step 20 % and a render step 19 %
    # faster here with the same parameters (issue 27: the default command's hour).
    unet_heads: int = 4

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def scheduler_config() -> dict[str, Any]:
    """SD1.5's schedule (as the tiny profile uses)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def make_vae(sizes: ModelSizes, image_size: int, seed: int) -> Any:  # an AutoencoderKL
    torch.manual_seed(seed)
    levels = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=list(sizes.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=image_size,
    )


def make_unet(sizes: ModelSizes, latent_size: int, seed: int) -> Any:  # a UNet2DConditionModel
    torch.manual_seed(seed)
    levels = len(sizes.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=sizes.unet_channels,
        layers_per_block=sizes.unet_layers,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=sizes.unet_heads,  # diffusers' legacy name: the head count
        norm_num_groups=32,
    )


def make_text_encoder(seed: int) -> tuple[CLIPTextModel, Any]:
    """A randomly initialised, frozen tiny CLIP text encoder and the tiny tokenizer (whole
    words for most of the toy world's vocabulary); the unet stage unfreezes it and trains it
    with the UNet."""
    tokenizer = tiny_tokenizer(MAX_TOKENS)
    torch.manual_seed(seed)
    encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_TOKENS,
        )
    ).eval()
    encoder.requires_grad_(False)
    return encoder, tokenizer


def noise_scheduler() -> Any:  # a DDPMScheduler
    return DDPMScheduler.from_config(scheduler_config())


def save_base(folder: Path, vae: Any, unet: Any, encoder: Any, tokenizer: Any) -> Path:
    """A diffusers StableDiffusionPipeline folder (no safety checker)."""
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler_config()),
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        image_encoder=None,
        requires_safety_checker=False,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    (folder / "toyworld.json").write_text(json.dumps({"kind": "toyworld-base"}) + "\n")
    return folder
