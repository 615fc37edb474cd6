"""Training the toy world's base model from scratch (issue 15): the resumable training loop
and the ``vae`` and ``unet`` stages of ``bench.toyworld``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.toyworld_plan import Paths, Plan, _summary, onednn, tqdm_bar

logger = logging.getLogger(__name__)


def load_images(paths: Paths) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """All dataset images as a [N, 3, S, S] tensor in -1..1 and the world index rows."""
    from PIL import Image

    rows = [json.loads(line) for line in (paths.data / "world.jsonl").read_text().splitlines()]
    arrays = [np.asarray(Image.open(paths.data / r["image"]).convert("RGB")) for r in rows]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, rows


# -- resumable training loops ------------------------------------------------------------------


def train_loop(
    name: str,
    folder: Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    save_every: int,
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    seed: int,
    *,
    warmup: int = 0,
    ema_decay: float | None = None,
) -> list[float]:
    """Optimiser steps with a checkpoint (weights, optimiser, EMA, RNG, losses) every
    ``save_every`` steps in ``folder/checkpoint.pt``; resumes from it.

    ``warmup`` ramps the learning rate linearly over its first steps. With ``ema_decay`` the
    module ends with an exponential moving average of its weights (diffusers' ``EMAModel``,
    with its warm-up, so a short run is not dominated by its random start): averaged weights
    sample much better than the last step's when a diffusion model is this undertrained.
    """
    from diffusers.training_utils import EMAModel

    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "checkpoint.pt"
    rng = torch.Generator().manual_seed(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    ema = EMAModel(params, decay=ema_decay, use_ema_warmup=True) if ema_decay else None
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    losses: list[float] = []
    start = 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        rng.set_state(state["rng"])
        losses = list(state["losses"])
        start = int(state["step"])
        logger.info("%s: resumed from step %d", name, start)
    module.train()
    bar = tqdm_bar(steps, name, initial=start)
    with bar:
        for step in range(start, steps):
            ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * ramp
            loss = loss_fn(rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if ema is not None:
                ema.step(params)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise FloatingPointError(f"{name} diverged at step {step + 1}")
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            done = step + 1
            if save_every and (done % save_every == 0 or done == steps):
                state = {
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng.get_state(),
                    "losses": losses,
                    "step": done,
                }
                torch.save(state, folder / "checkpoint.tmp")
                (folder / "checkpoint.tmp").replace(ckpt)
    if ema is not None:
        ema.copy_to(params)
    module.eval()
    return losses


# -- stage: vae -------------------------------------------------------------------------------


@onednn(True)
def stage_vae(plan: Plan, paths: Paths, seed: int) -> dict[str, Any]:
    from bench.toyworld_models import ModelSizes, make_vae

    pixels, _ = load_images(paths)
    vae = make_vae(ModelSizes(), plan.size, seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    n = pixels.shape[0]

    def loss_fn(rng: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, n, (plan.vae_batch,), generator=rng)
        x = pixels[index]
        if torch.rand((), generator=rng) < 0.5:
            x = x.flip(-1)  # the world is left-right symmetric up to captions
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=rng)
        recon = vae.decode(z).sample
        kl = dist.kl().mean() / z[0].numel()
        return torch.nn.functional.mse_loss(recon, x) + plan.vae_kl * kl

    losses = train_loop(
        "vae", paths.vae, vae, optimizer, plan.vae_steps, plan.save_every, loss_fn, seed
    )
    # Scale latents to unit variance, as SD's scaling_factor does.
    with torch.no_grad():
        sample = pixels[: min(n, 256)]
        latents = torch.cat([vae.encode(c).latent_dist.mean for c in sample.split(32)])
        recon = torch.cat([vae.decode(c).sample for c in latents.split(32)])
        mse = float(torch.nn.functional.mse_loss(recon.clamp(-1, 1), sample))
    scale = float(1.0 / latents.std().clamp_min(1e-4))
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(paths.vae / "final")
    psnr = float(10 * np.log10(4.0 / max(mse, 1e-12)))  # pixel range 2
    return {**_summary(losses), "recon_mse": mse, "recon_psnr_db": psnr, "scaling_factor": scale}


# -- stage: unet ------------------------------------------------------------------------------


def _identifier_caption(text: str) -> str:
    """The caption as the InstantBooth trainer rewrites it ("toy" → "sks object")."""
    from engine.personalizers.instantbooth.config import InstantBoothConfig
    from engine.personalizers.instantbooth.prompts import TRAIN_PREFIX, subject_prompt

    return subject_prompt(text, InstantBoothConfig(), "object", prefix=TRAIN_PREFIX)


@onednn(True)
def stage_unet(plan: Plan, paths: Paths, seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKL
    from diffusers.training_utils import compute_snr

    from bench.toyworld_models import (
        MAX_TOKENS,
        ModelSizes,
        make_text_encoder,
        make_unet,
        noise_scheduler,
        save_base,
    )

    pixels, rows = load_images(paths)
    vae: Any = AutoencoderKL.from_pretrained(paths.vae / "final")
    vae.eval()
    vae.requires_grad_(False)
    with torch.no_grad():
        dists = [vae.encode(c).latent_dist for c in pixels.split(64)]
        means = torch.cat([d.mean for d in dists])
        stds = torch.cat([d.std for d in dists])
    scale = float(vae.config.scaling_factor)
    encoder, tokenizer = make_text_encoder(seed + 2)
    # Trained jointly with the UNet, as in latent diffusion's text-to-image model (a
    # transformer trained from scratch with it): a frozen random encoder left the place words
    # too faint for the UNet to follow (docs/instantbooth.md). InstantBooth then freezes it,
    # as it freezes SD's.
    encoder.requires_grad_(True)
    # Each caption as written and as the InstantBooth trainer rewrites it, so the base reads
    # the prompts the evaluation uses ("a photo of sks object on the beach"); "" for guidance.
    texts = sorted({t for r in rows for t in (r["caption"], _identifier_caption(r["caption"]))})
    texts.append("")
    lookup = {t: i for i, t in enumerate(texts)}
    ids = tokenizer(
        texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    plain = torch.tensor([lookup[r["caption"]] for r in rows])
    ident = torch.tensor([lookup[_identifier_caption(r["caption"])] for r in rows])
    latent_size = means.shape[-1]
    unet = make_unet(ModelSizes(), latent_size, seed + 1)
    model = torch.nn.ModuleDict({"unet": unet, "text_encoder": encoder})
    scheduler = noise_scheduler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.unet_lr, weight_decay=0.0)
    n = means.shape[0]
    empty = len(texts) - 1

    def loss_fn(rng: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, n, (plan.unet_batch,), generator=rng)
        eps = torch.randn(means[index].shape, generator=rng)
        latents = (means[index] + stds[index] * eps) * scale
        use_ident = torch.rand(plan.unet_batch, generator=rng) < 0.5
        caption = torch.where(use_ident, ident[index], plain[index])
        drop = torch.rand(plan.unet_batch, generator=rng) < plan.uncond_rate
        caption = torch.where(drop, torch.full_like(caption, empty), caption)
        noise = torch.randn(latents.shape, generator=rng)
        t = torch.randint(
            0, scheduler.config.num_train_timesteps, (plan.unet_batch,), generator=rng
        )
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder(ids[caption])[0]).sample
        # Min-SNR-γ weighting (Hang et al., 2023; γ = 5): the nearly clean timesteps stop
        # dominating the gradient, which roughly triples how fast a small model converges.
        snr = compute_snr(scheduler, t)
        weight = snr.clamp(max=plan.snr_gamma) / snr
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * weight).mean()

    losses = train_loop(
        "unet",
        paths.unet,
        model,
        optimizer,
        plan.unet_steps,
        plan.save_every,
        loss_fn,
        seed,
        warmup=plan.unet_warmup,
        ema_decay=plan.unet_ema,
    )
    encoder.requires_grad_(False)
    save_base(paths.base, vae, unet, encoder, tokenizer)
    return {**_summary(losses), "captions": len(texts) - 1, "base": str(paths.base)}
