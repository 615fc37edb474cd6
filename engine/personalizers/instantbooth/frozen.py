"""The frozen models InstantBooth trains against: UNet, VAE, text encoder, tokenizer, noise
scheduler and the CLIP image encoder. ``tiny`` builds the engine's tiny random models (the same
seed as the ``tiny`` profile, so tiny weights trained here fit it); ``sd15`` loads real weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import MissingWeights, first_line

logger = logging.getLogger(__name__)

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_IMAGE_ENCODER = "openai/clip-vit-large-patch14"


@dataclass
class FrozenModels:
    # diffusers/transformers models (typed Any: their attributes are dynamic).
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # a diffusers DDPMScheduler (training noise)
    image_encoder: Any
    base_model: str
    image_encoder_id: str

    def modules(self) -> dict[str, nn.Module]:
        return {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "image_encoder": self.image_encoder,
        }

    def freeze(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """No gradients, eval mode, on ``device`` in ``dtype``. (A fine-tuned image encoder is
        made trainable again by the model that takes it over.)"""
        for module in self.modules().values():
            module.requires_grad_(False)
            module.eval()
            module.to(device=device)
            # diffusers warns on every dtype cast, even a no-op one.
            if next(module.parameters()).dtype != dtype:
                module.to(dtype=dtype)


def load_frozen(
    profile: str,
    *,
    base_model: str | None = None,
    image_encoder: str | None = None,
    offline: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
) -> FrozenModels:
    if profile == "tiny":
        from diffusers import DDPMScheduler

        from engine.tiny import tiny_components, tiny_image_encoder

        parts = tiny_components(seed)
        scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
        return FrozenModels(
            unet=parts["unet"],
            vae=parts["vae"],
            text_encoder=parts["text_encoder"],
            tokenizer=parts["tokenizer"],
            noise_scheduler=scheduler,
            image_encoder=tiny_image_encoder(seed),
            base_model=f"tiny:{seed}",
            image_encoder_id=f"tiny:{seed}",  # the personalizer rebuilds it from this name
        )
    if profile == "sd15":
        return _load_sd15(base_model or SD15_BASE, image_encoder or SD15_IMAGE_ENCODER,
                          offline=offline, cache_dir=cache_dir)  # fmt: skip
    raise ValueError(f"unknown training profile {profile!r} (tiny or sd15)")


def _load_sd15(base: str, encoder: str, *, offline: bool, cache_dir: str | None) -> FrozenModels:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    common: dict[str, Any] = {"local_files_only": offline, "cache_dir": cache_dir}
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **common)
        scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **common)
    except (OSError, ValueError) as exc:
        raise MissingWeights(
            "base model (diffusers layout: unet, vae, text_encoder, tokenizer, scheduler)",
            base,
            "Download it with `huggingface-cli download "
            f"{SD15_BASE}` or pass --base-model with a local diffusers folder",
            reason=first_line(exc),
        ) from exc
    try:
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(encoder, **common)
    except (OSError, ValueError) as exc:
        raise MissingWeights(
            "CLIP image encoder",
            encoder,
            f"Download it with `huggingface-cli download {SD15_IMAGE_ENCODER}` "
            "or pass --image-encoder with a local folder",
            reason=first_line(exc),
        ) from exc
    return FrozenModels(unet, vae, text_encoder, tokenizer, scheduler, image_encoder, base, encoder)
