"""Train a non-Plus IP-Adapter on a frozen base (the paper's recipe, at toy scale).

The image projection (``ImageProjection``: the image encoder's pooled embedding to 4 tokens)
and, per cross-attention (``attn2``), the decoupled image keys and values (diffusers'
``IPAdapterAttnProcessor2_0``) train; the UNet, VAE, text encoder and image encoder are
frozen. The image keys/values start as copies of the text ones (the paper's initialisation).
Loss: the diffusion MSE on ε (or v, when the scheduler says so). The paper's dropout for
classifier-free guidance: the caption alone, the image alone and both are dropped, each in
``drop_rate`` of the samples (a dropped image is a zero embedding, diffusers' negative for
non-Plus adapters).

The data are InstantBooth's: the same samples, filters, subject views and augmentation, seeded
per (seed, epoch, item) as its dataset does, so both methods see the same views; the prompt
is the plain caption (no identifier word).

Output: ``out/ip-adapter.safetensors`` ("image_proj.*" and "ip_adapter.*", the layout
h94/IP-Adapter ships) and ``out/image_encoder/``: what ``pipe.load_ip_adapter(out,
subfolder="", weight_name=WEIGHT_NAME, image_encoder_folder="image_encoder")`` reads.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from safetensors.torch import save_file
from torch import nn

from avatarbot_research.instantbooth.dataset import (
    InstantBoothDataset,
    filter_samples,
    find_samples,
)
from engine.personalizers.instantbooth.config import InstantBoothConfig
from engine.personalizers.instantbooth.prompts import tokenize

if TYPE_CHECKING:
    from engine.personalizers.instantbooth.frozen import FrozenModels

logger = logging.getLogger(__name__)

WEIGHT_NAME = "ip-adapter.safetensors"
ENCODER_FOLDER = "image_encoder"
TOKENS = 4  # diffusers' loader builds every non-Plus IP-Adapter with 4 image tokens


@dataclass(frozen=True)
class IPAdapterOptions:
    data: Path  # the trainer's dataset (folder or JSONL manifest)
    out: Path  # the weights folder written (WEIGHT_NAME + ENCODER_FOLDER/)
    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.01
    drop_rate: float = 0.05
    resolution: int = 64
    kind: str = "object"
    seed: int = 0
    log_every: int = 50


@dataclass
class IPAdapterResult:
    weights: Path  # WEIGHT_NAME in options.out
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


class CaptionedViews(InstantBoothDataset):
    """InstantBooth's items with the caption as written: IP-Adapter names no identifier."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["prompt"] = self.samples[index].caption
        return item


def _cross_attention_names(unet: Any) -> list[str]:
    """The attention processors an IP-Adapter extends, in the loader's order (its key ids)."""
    return [n for n in unet.attn_processors if not n.endswith("attn1.processor")]


def initial_state(unet: Any, image_embed_dim: int, seed: int) -> dict[str, dict[str, Any]]:
    """A new adapter in the public layout: a random projection (nn.Linear's initialisation,
    seeded) and image keys/values copied from each cross-attention's text ones."""
    cross = int(unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(image_embed_dim)

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) * 2 - 1) * bound

    image_proj = {
        "proj.weight": uniform(TOKENS * cross, image_embed_dim),
        "proj.bias": uniform(TOKENS * cross),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip_adapter = {}
    for i, name in enumerate(_cross_attention_names(unet)):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        ip_adapter[f"{2 * i + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        ip_adapter[f"{2 * i + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def attach(unet: Any, state: dict[str, dict[str, Any]]) -> list[nn.Parameter]:
    """Install the adapter in ``unet`` with diffusers' own loader; its trainable parameters."""
    unet.requires_grad_(False)
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    params = list(unet.encoder_hid_proj.parameters())
    for name in _cross_attention_names(unet):
        proc = unet.attn_processors[name]
        if not isinstance(proc, IPAdapterAttnProcessor2_0):
            raise TypeError(f"{name}: expected an IP-Adapter processor, got {type(proc)}")
        params += list(proc.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def adapter_state(unet: Any) -> dict[str, torch.Tensor]:
    """The installed adapter back in the public, flat layout (what ``initial_state`` reads)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    out = {
        f"image_proj.{k.replace('image_embeds', 'proj')}": v
        for k, v in projection.state_dict().items()
    }
    for i, name in enumerate(_cross_attention_names(unet)):
        proc = unet.attn_processors[name]
        out[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = proc.to_k_ip[0].weight
        out[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = proc.to_v_ip[0].weight
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def _batches(
    n: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[int, list[int]]]:
    """(epoch, indices) forever: a fresh permutation per epoch, the last short batch dropped."""
    epoch = 0
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - batch_size + 1, batch_size):
            yield epoch, order[start : start + batch_size]
        epoch += 1


def train_ip_adapter(options: IPAdapterOptions, frozen: FrozenModels) -> IPAdapterResult:
    """Train for ``options.steps`` steps (no resume: the toy run takes minutes) and save."""
    started = time.monotonic()
    f = frozen
    encoder = f.image_encoder
    for model in (f.unet, f.vae, f.text_encoder, encoder):
        model.requires_grad_(False)
        model.eval()
    samples, dropped = filter_samples(find_samples(options.data, options.kind))
    logger.info("IP-Adapter: %d training samples (dropped %s)", len(samples), dict(dropped))
    config = InstantBoothConfig(image_size=int(encoder.config.image_size))
    dataset = CaptionedViews(samples, config, options.resolution, seed=options.seed)
    batch_size = min(options.batch_size, len(dataset))
    params = attach(f.unet, initial_state(f.unet, int(encoder.config.projection_dim), options.seed))
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    noise_gen = torch.Generator().manual_seed(options.seed)
    drops = random.Random(options.seed)
    dtype = next(f.unet.parameters()).dtype
    steps = f.noise_scheduler.config.num_train_timesteps
    losses: list[float] = []
    batches = _batches(len(dataset), batch_size, torch.Generator().manual_seed(options.seed))
    for step in range(options.steps):
        epoch, indices = next(batches)
        dataset.use_epoch(epoch)
        items = [dataset[i] for i in indices]
        prompts, keep_image = [], []
        for item in items:
            r = drops.random() / options.drop_rate if options.drop_rate > 0 else 3.0
            # [0, 1): caption dropped; [1, 2): image dropped; [2, 3): both.
            prompts.append("" if r < 1 or 2 <= r < 3 else item["prompt"])
            keep_image.append(0.0 if 1 <= r < 3 else 1.0)
        pixels = torch.stack([i["pixel_values"] for i in items])
        subject = torch.stack([i["subject_pixels"] for i in items])
        with torch.no_grad():
            dist = f.vae.encode(pixels.to(dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=noise_gen).to(dtype)
            latents = (dist.mean + dist.std * eps) * f.vae.config.scaling_factor
            text = f.text_encoder(tokenize(f.tokenizer, prompts))[0]
            embeds = encoder(pixel_values=subject.to(dtype)).image_embeds
            embeds = embeds * torch.tensor(keep_image, dtype=dtype)[:, None]
        noise = torch.randn(latents.shape, generator=noise_gen).to(dtype)
        t = torch.randint(0, steps, (latents.shape[0],), generator=noise_gen)
        noisy = f.noise_scheduler.add_noise(latents, noise, t)
        pred = f.unet(
            noisy, t, text, added_cond_kwargs={"image_embeds": [embeds[:, None, :]]}
        ).sample
        if f.noise_scheduler.config.prediction_type == "v_prediction":
            target = f.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if options.log_every and (step + 1) % options.log_every == 0:
            recent = losses[-options.log_every :]
            logger.info("IP-Adapter step %d: loss %.4f", step + 1, sum(recent) / len(recent))
    weights = save(options.out, f.unet, encoder)
    return IPAdapterResult(weights, options.steps, losses, time.monotonic() - started)


def save(out: Path, unet: Any, encoder: Any) -> Path:
    """Write the adapter and its image encoder to ``out`` (replaced whole, never half-written)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(adapter_state(unet), str(tmp / WEIGHT_NAME))
    encoder.save_pretrained(tmp / ENCODER_FOLDER)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / WEIGHT_NAME
