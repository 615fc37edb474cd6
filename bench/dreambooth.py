"""The fine-tuning baseline: DreamBooth-LoRA on the UNet, the shape of diffusers'
``examples/dreambooth/train_dreambooth_lora.py`` without prior preservation.

Per step, as the script does: VAE-encode the batch's photo (``latent_dist.sample()`` times the
scaling factor), draw noise and a random timestep, add noise with ``DDPMScheduler``,
text-encode the instance prompt (the script's default: no pre-computed embeddings), predict
epsilon with the LoRA-wrapped UNet, MSE loss, backward, clip gradients to 1.0, AdamW step.
The LoRA is the script's: rank 4 on ``to_k``/``to_q``/``to_v``/``to_out.0``, gaussian
initialisation, alpha = rank; frozen weights in the compute dtype, LoRA weights in fp32.

The model is a private copy built from the same profile and seed as the engine's (training
mutates the UNet; the engine's must stay untouched).
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import synchronize

logger = logging.getLogger(__name__)

LORA_RANK = 4
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
INSTANCE_PROMPT = "a photo of sks person"


@dataclass
class TrainingTimes:
    setup_s: float
    warmup_steps_s: list[float]
    step_s: list[float]
    losses: list[float] = field(default_factory=list)
    trainable_parameters: int = 0

    @property
    def mean_step_s(self) -> float:
        return sum(self.step_s) / len(self.step_s)

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    def estimate(self, steps: int) -> float:
        """Time for ``steps`` training steps: setup plus ``steps`` times the median step time.

        Warm-up steps are excluded and the median ignores the spikes a shared machine adds
        (the mean would be larger): both favour the baseline."""
        return self.setup_s + steps * self.median_step_s


def baseline_components(settings: Any) -> dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and scheduler config of the engine's profile: the
    same random weights (same builder and seed) or the same checkpoint."""
    from engine.loading import load_base_pipeline
    from engine.profiles import resolve_profile

    profile = resolve_profile(settings)
    if profile.random_base is not None:
        return dict(profile.random_base(settings.seed))
    assert profile.base_model is not None
    pipe = load_base_pipeline(
        profile.base_model,
        config=profile.base_config,
        dtype=torch.float32,
        offline=settings.offline,
        cache_dir=str(settings.cache_dir) if settings.cache_dir else None,
    )
    return dict(pipe.components)


def _pixels(photo: Image.Image, size: int) -> torch.Tensor:
    """The script's transforms: resize the short side, centre-crop, to [-1, 1], CHW."""
    image = photo.convert("RGB")
    scale = size / min(image.size)
    image = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))),
        Image.Resampling.BILINEAR,
    )
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    tensor = data.view(size, size, 3).permute(2, 0, 1).float() / 255.0
    return tensor * 2.0 - 1.0


def train_dreambooth_lora(
    components: dict[str, Any],
    photos: Sequence[Image.Image],
    *,
    resolution: int,
    steps: int,
    warmup_steps: int,
    device: str,
    seed: int = 0,
    prompt: str = INSTANCE_PROMPT,
    learning_rate: float = LEARNING_RATE,
) -> TrainingTimes:
    """Run ``warmup_steps + steps`` DreamBooth-LoRA steps (batch size 1, cycling through the
    photos) and time each one; setup (LoRA injection, optimizer) is timed apart. ``prompt``
    and ``learning_rate`` default to the script's; the toy world's objects take their own
    (bench.toyworld_finetune)."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    torch.manual_seed(seed)
    dev = torch.device(device)
    # The script's mixed precision on a GPU: frozen weights in half precision, LoRA in fp32.
    weight_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    tokenizer = components["tokenizer"]
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)

    synchronize(device)
    started = time.perf_counter()
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(dev, dtype=weight_dtype)
    unet.add_adapter(
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_RANK,
            init_lora_weights="gaussian",
            target_modules=LORA_TARGETS,
        )
    )
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for param in lora_params:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(
        lora_params, lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
    )
    pixels = [_pixels(photo, resolution) for photo in photos]
    tokens = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    input_ids = tokens.input_ids.to(dev)
    unet.train()
    synchronize(device)
    times = TrainingTimes(
        setup_s=time.perf_counter() - started,
        warmup_steps_s=[],
        step_s=[],
        trainable_parameters=sum(p.numel() for p in lora_params),
    )
    autocast = torch.autocast("cuda", dtype=weight_dtype, enabled=dev.type == "cuda")
    for step in range(warmup_steps + steps):
        synchronize(device)
        step_started = time.perf_counter()
        batch = pixels[step % len(pixels)].unsqueeze(0).to(dev, dtype=weight_dtype)
        with autocast:
            with torch.no_grad():
                latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
                encoder_hidden_states = text_encoder(input_ids)[0]
            noise = torch.randn_like(latents)
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=dev
            ).long()
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())  # syncs, as the script's progress bar does
        synchronize(device)
        elapsed = time.perf_counter() - step_started
        if step < warmup_steps:
            times.warmup_steps_s.append(elapsed)
        else:
            times.step_s.append(elapsed)
            times.losses.append(loss_value)
        logger.info("dreambooth-lora step %d: %.3fs, loss %.4f", step + 1, elapsed, loss_value)
    return times


def release(components: dict[str, Any]) -> None:
    """Drop the baseline's model copy before the engine loads its own."""
    components.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
