"""The real Stable Diffusion 1.5 (+ IP-Adapter Plus Face) architecture with random weights.

Real FLOPs and memory for benchmarks, with nothing to download. The configs are those of
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (UNet, VAE, CLIP ViT-L/14 text encoder) and of
``h94/IP-Adapter`` ``models/image_encoder`` (OpenCLIP ViT-H/14) + the Plus resampler (16 tokens
per photo). The tokenizer is the tiny byte-level one (CLIP's vocabulary is a download); the
text encoder keeps CLIP's vocabulary size, so its cost is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import PNDMScheduler

# The models' own modules: to mypy, diffusers' top-level names are its no-torch dummies.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from engine.tiny import tiny_tokenizer, write_random_ip_adapter

SD15_PLUS_WEIGHT_NAME = "ip-adapter-plus-face_sd15-shaped.safetensors"


def sd15_shaped_components(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def vit_h14_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed + 3)
    config = CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


def write_sd15_plus_ip_adapter(root: Path, unet: Any, seed: int = 0) -> Path:
    """IP-Adapter Plus Face's shapes (ViT-H/14 encoder, 16 tokens, 768-d resampler), in fp16
    to halve the 2.5 GB a random ViT-H writes."""
    return write_random_ip_adapter(
        root,
        unet,
        vit_h14_image_encoder(seed),
        weight_name=SD15_PLUS_WEIGHT_NAME,
        hidden_dims=768,
        num_queries=16,
        seed=seed,
        dtype=torch.float16,
    )
