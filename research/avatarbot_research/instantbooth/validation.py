"""Validation renders during training: a few dataset subjects, rendered from their own
(un-augmented) subject views with their training prompts, through the same conditioning code
as the engine's renders, with fixed seeds so images are comparable across steps."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from avatarbot_research.instantbooth.dataset import (
    Augment,
    InstantBoothDataset,
    load_mask,
    subject_view,
)
from engine.personalizers.instantbooth.adapters import AdapterHooks
from engine.personalizers.instantbooth.conditioning import Concept, build_conditioning
from engine.personalizers.instantbooth.encoders import clip_pixels
from engine.personalizers.instantbooth.frozen import FrozenModels
from engine.personalizers.instantbooth.model import InstantBoothModel
from engine.personalizers.instantbooth.prompts import TRAIN_PREFIX, subject_prompt

logger = logging.getLogger(__name__)

# The subject as it is, centred on its mask, background blanked: no random augmentation.
PLAIN = Augment(scale=(1.1, 1.1), rotation=0.0, flip=0.0, jitter=0.0, keep_background=0.0)


def validation_pipeline(frozen: FrozenModels) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(
        vae=frozen.vae,
        text_encoder=frozen.text_encoder,
        tokenizer=frozen.tokenizer,
        unet=frozen.unet,
        scheduler=DDIMScheduler.from_config(frozen.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render_validation(
    model: InstantBoothModel,
    frozen: FrozenModels,
    hooks: AdapterHooks,
    dataset: InstantBoothDataset,
    out_dir: Path,
    step: int,
    *,
    count: int,
    steps: int,
    seed: int,
    guidance: float = 6.0,
) -> list[Path]:
    pipe = validation_pipeline(frozen)
    samples = dataset.samples[:count]
    concepts: list[Concept | None] = []
    prompts: list[str] = []
    device = next(frozen.unet.parameters()).device
    for i, sample in enumerate(samples):
        with Image.open(sample.image) as im:
            image = im.convert("RGB")
        mask = load_mask(sample.mask, image.size) if sample.mask else None
        view = subject_view(image, mask, random.Random(i), PLAIN)
        pixels = clip_pixels([view], model.config.image_size).to(device)
        token, patches = model.encode_pixels(frozen.image_encoder, pixels)
        concepts.append(Concept(token[0], patches[0], sample.kind))
        prompts.append(
            subject_prompt(sample.caption, model.config, sample.kind, prefix=TRAIN_PREFIX)
        )
    cfg = guidance > 1.0
    cond = build_conditioning(
        pipe,
        model.config,
        prompts,
        concepts,
        alphas=[model.config.alpha] * len(prompts),
        betas=[model.config.beta] * len(prompts),
        do_cfg=cfg,
    )
    generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(len(prompts))]
    size = dataset.resolution
    assert cond.adapter_state is not None
    with hooks.active(cond.adapter_state):
        images = pipe(
            prompt_embeds=cond.prompt_embeds,
            negative_prompt_embeds=cond.negative_prompt_embeds,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=size,
            width=size,
        ).images
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out_dir / f"step-{step}-{i}.png"
        image.save(path)
        paths.append(path)
    logger.info("validation renders at step %d: %s", step, out_dir)
    return paths
