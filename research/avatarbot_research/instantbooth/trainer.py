"""The InstantBooth trainer: accelerate (multi-GPU, mixed precision, gradient accumulation),
checkpoints with resume, loss logging and validation renders.

Only the concept head (linear, or an MLP over pooled patches), the patch head and the adapters
train; the UNet, VAE, text encoder and image backbone are frozen (``requires_grad_(False)``). The
loss is the standard noise-prediction MSE (or v-prediction when the scheduler says so) on the
whole target image, with the concept token injected raw (no renormalisation) and β = 1, as in
the paper.

Layout of ``--out``: ``weights/`` (config.json + instantbooth.safetensors: what the
``sd15-instantbooth`` profile loads), ``checkpoints/step-N/`` (accelerate state + step),
``loss.jsonl`` (one line per optimiser step), ``validation/step-N-i.png``, ``samples.jsonl``
(the filtered dataset index, reused on resume).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from avatarbot_research.instantbooth.dataset import (
    InstantBoothDataset,
    Sample,
    collate,
    filter_samples,
    find_samples,
)
from avatarbot_research.instantbooth.validation import render_validation
from engine.personalizers.instantbooth.adapters import AdapterHooks, AdapterState
from engine.personalizers.instantbooth.frozen import FrozenModels, load_frozen
from engine.personalizers.instantbooth.model import InstantBoothModel
from engine.personalizers.instantbooth.prompts import (
    identifier_ids,
    identifier_positions,
    inject_concept,
    tokenize,
)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainOptions:
    data: Path
    out: Path
    profile: str = "tiny"  # tiny | sd15
    kind: str = "person"
    steps: int = 1000
    batch_size: int = 4
    lr_linear: float = 1e-4  # the paper's rate for the two linear heads
    lr_adapter: float = 1e-4  # the heads' rate: the paper's 1e-6 leaves the gates shut (docs)
    # Fine-tune the CLIP image encoder with the heads, as the paper trains its image encoders
    # (the weights then carry it); off by default: frozen, only the heads adapt it.
    train_image_encoder: bool = False
    lr_image_encoder: float = 1e-5
    # The concept token's source (InstantBoothConfig.concept_source): the paper's global image
    # embedding, or the pooled patch tokens through an MLP.
    concept_source: str = "image_embeds"
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    resume: bool = False
    validate_every: int = 0  # 0: only at the end
    save_every: int = 500
    keep_checkpoints: int = 3
    max_images: int | None = None
    resolution: int | None = None  # default: 64 for tiny, 512 for sd15
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    max_grad_norm: float = 1.0
    validation_samples: int = 2
    validation_steps: int | None = None  # default: 4 for tiny, 25 for sd15
    base_model: str | None = None
    image_encoder: str | None = None
    init_weights: Path | None = None  # start from trained weights instead of random heads
    offline: bool = False
    cache_dir: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    weights: Path
    checkpoint: Path | None
    validation_images: list[Path]


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch): identical on every process and
    after a resume, so accelerate can shard it and ``skip_first_batches`` can skip into it.

    The method is deliberately not called ``set_epoch``: accelerate's data loader calls any
    ``set_epoch`` with its own count of iterations, which restarts at 0 after a resume."""

    def __init__(self, length: int, seed: int) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


class NoiseRNG:
    """The training noise's own generator (latent sampling, noise, timesteps), saved in
    checkpoints. The global RNG would not do: every new DataLoader iterator draws from it, so a
    resumed run (which starts a new iterator mid-epoch) would see shifted noise."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


class TrainingStep(nn.Module):
    """One forward of the loss. The trainable model is the only registered submodule, so
    accelerate/DDP wraps and synchronises exactly the trainable parameters."""

    def __init__(
        self, model: InstantBoothModel, frozen: FrozenModels, hooks: AdapterHooks, rng: NoiseRNG
    ) -> None:
        super().__init__()
        self.model = model
        self.rng = rng
        self.frozen = frozen  # a plain dataclass: not registered, never wrapped or saved
        self.hooks = hooks
        self.ident = identifier_ids(frozen.tokenizer, model.config.identifier)

    def forward(
        self, pixel_values: torch.Tensor, subject_pixels: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        f = self.frozen
        dtype = next(f.unet.parameters()).dtype
        with torch.no_grad():
            dist = f.vae.encode(pixel_values.to(dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=self.rng.generator)
            latents = dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)
            latents = latents * f.vae.config.scaling_factor
            text = f.text_encoder(input_ids)[0]
            if self.model.backbone is None:
                backbone_dtype = next(f.image_encoder.parameters()).dtype
                image = f.image_encoder(pixel_values=subject_pixels.to(backbone_dtype))
        if self.model.backbone is not None:  # fine-tuned: with gradients
            backbone_dtype = next(self.model.backbone.parameters()).dtype
            image = self.model.backbone(pixel_values=subject_pixels.to(backbone_dtype))
        g = self.rng.generator
        noise = torch.randn(latents.shape, generator=g).to(latents.device, latents.dtype)
        steps = f.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), generator=g).to(latents.device)
        noisy = f.noise_scheduler.add_noise(latents, noise, t)
        concepts = self.model.concepts(image.image_embeds, image.last_hidden_state)
        patches = self.model.patch(image.last_hidden_state)
        positions = identifier_positions(input_ids, self.ident)
        embeds = inject_concept(text, positions, concepts, alpha=None)
        with self.hooks.active(AdapterState.dense(patches, beta=1.0)):
            pred = f.unet(noisy, t, embeds.to(dtype)).sample
        if f.noise_scheduler.config.prediction_type == "v_prediction":
            target = f.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float())
        # A caption truncated before its identifier leaves the concept head unused in this
        # batch; DDP then waits forever for its gradients. A zero-weighted term keeps it used.
        return loss + 0.0 * concepts.sum()


def prepare_samples(options: TrainOptions) -> list[Sample]:
    """The filtered dataset index, computed once and cached in ``out/samples.jsonl``.

    A cached index whose images are gone (the data folder was moved or renamed since) is
    rebuilt: resuming must not crash on a stale cache, and the same data gives the same order.
    """
    index = options.out / "samples.jsonl"
    if options.resume and index.is_file():
        rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
        cached = [
            Sample(
                Path(r["image"]), r["caption"], Path(r["mask"]) if r["mask"] else None, r["kind"]
            )
            for r in rows
        ]
        missing = [s.image for s in cached if not s.image.is_file()]
        if not missing:
            return cached
        logger.warning(
            "%s lists %d images that are gone (e.g. %s); indexing %s again",
            index, len(missing), missing[0], options.data,
        )  # fmt: skip
    found = find_samples(options.data, options.kind)
    if options.max_images is not None:
        found = found[: options.max_images]
    kept, dropped = filter_samples(found)
    logger.info(
        "dataset %s: %d images, %d kept, dropped: %s",
        options.data, len(found), len(kept), dict(dropped) or "none",
    )  # fmt: skip
    options.out.mkdir(parents=True, exist_ok=True)
    index.write_text("".join(json.dumps(s.to_json()) + "\n" for s in kept))
    return kept


def latest_checkpoint(out: Path) -> Path | None:
    root = out / CHECKPOINTS
    found = (
        sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        if root.is_dir()
        else []
    )
    return found[-1] if found else None


def train(options: TrainOptions, frozen: FrozenModels | None = None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=options.grad_accum,
        project_dir=str(options.out),
    )
    set_seed(options.seed)
    if frozen is None:
        frozen = load_frozen(
            options.profile,
            base_model=options.base_model,
            image_encoder=options.image_encoder,
            offline=options.offline,
            cache_dir=options.cache_dir,
            # The tiny models must be the tiny profile's (seed 0) for the weights to fit it.
            seed=0,
        )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        options.mixed_precision, torch.float32
    )
    frozen.freeze(accelerator.device, weight_dtype)
    if options.init_weights is not None:
        model = InstantBoothModel.from_pretrained(options.init_weights, frozen.image_encoder)
    else:
        overrides = dict(options.config_overrides)
        if options.train_image_encoder:
            overrides["image_encoder_trained"] = True
        if options.concept_source != "image_embeds":
            overrides["concept_source"] = options.concept_source
        model = InstantBoothModel.for_unet(
            frozen.unet,
            frozen.image_encoder,
            base_model=frozen.base_model,
            image_encoder=frozen.image_encoder_id,
            **overrides,
        )
    if model.backbone is not None:
        model.backbone.requires_grad_(True)  # frozen.freeze() froze it with the rest
    model.to(accelerator.device, torch.float32).train()
    hooks = model.install(frozen.unet)
    resolution = options.resolution or (64 if options.profile == "tiny" else 512)
    samples = prepare_samples(options) if accelerator.is_main_process else []
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        samples = prepare_samples(dataclasses.replace(options, resume=True))
    dataset = InstantBoothDataset(samples, model.config, resolution, seed=options.seed)
    sampler = EpochSampler(len(dataset), options.seed)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=options.num_workers,
        drop_last=len(dataset) >= options.batch_size,
    )
    heads, adapters, backbone = model.trainable_groups()
    groups = [
        {"params": heads, "lr": options.lr_linear},
        {"params": adapters, "lr": options.lr_adapter},
    ]
    if backbone:
        groups.append({"params": backbone, "lr": options.lr_image_encoder})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    # Each process draws its own noise; all of them resume where they were.
    rng = NoiseRNG(options.seed * 1_000 + accelerator.process_index)
    accelerator.register_for_checkpointing(rng)
    step_module = TrainingStep(model, frozen, hooks, rng)
    step_module, optimizer, loader = accelerator.prepare(step_module, optimizer, loader)
    # Where training stands: optimiser steps, and the data position (epoch, batches of it
    # consumed), saved as such because accelerate also ends an accumulation window at the end
    # of each epoch, so steps alone do not say how much data was used.
    position = {"step": 0, "epoch": 0, "batch": 0}
    checkpoint = latest_checkpoint(options.out) if options.resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        position.update(json.loads((checkpoint / STATE_FILE).read_text()))
        logger.info("resumed from %s at step %d", checkpoint, position["step"])
    elif options.resume:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", options.out)

    step, epoch, skip = position["step"], position["epoch"], position["batch"]
    if skip >= len(loader):
        epoch, skip = epoch + 1, 0
    losses: list[float] = []
    log_path = options.out / "loss.jsonl"
    validation: list[Path] = []
    last_checkpoint: Path | None = checkpoint
    started = time.monotonic()
    window: list[float] = []
    while step < options.steps:
        sampler.use_epoch(epoch)
        dataset.use_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        position.update(epoch=epoch, batch=skip)
        skip = 0
        for batch in epoch_loader:
            position["batch"] += 1
            input_ids = tokenize(frozen.tokenizer, batch["prompt"]).to(accelerator.device)
            with accelerator.accumulate(step_module):
                loss = step_module(batch["pixel_values"], batch["subject_pixels"], input_ids)
                accelerator.backward(loss)
                if accelerator.sync_gradients and options.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(heads + adapters + backbone, options.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window.append(float(accelerator.gather(loss.detach()).mean()))
            if not accelerator.sync_gradients:
                continue
            step += 1
            position["step"] = step
            step_loss = sum(window) / len(window)
            window.clear()
            losses.append(step_loss)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"training diverged at step {step} (loss {step_loss})")
            if accelerator.is_main_process:
                _log_step(log_path, step, step_loss, model, optimizer, started, options.log_every)
            if options.save_every and step % options.save_every == 0:
                last_checkpoint = _save(accelerator, model, options, position)
            if options.validate_every and step % options.validate_every == 0:
                validation += _validate(accelerator, model, frozen, hooks, dataset, options, step)
            if step >= options.steps:
                break
        epoch += 1
    if last_checkpoint is None or not last_checkpoint.name.endswith(f"-{step}"):
        last_checkpoint = _save(accelerator, model, options, position)
    if not options.validate_every or step % options.validate_every:
        validation += _validate(accelerator, model, frozen, hooks, dataset, options, step)
    hooks.remove()
    accelerator.end_training()
    return TrainResult(step, losses, options.out / "weights", last_checkpoint, validation)


def _log_step(
    path: Path,
    step: int,
    loss: float,
    model: InstantBoothModel,
    optimizer: Any,
    started: float,
    log_every: int,
) -> None:
    gates = list(model.gates().values())
    row = {
        "step": step,
        "loss": loss,
        "lr_linear": optimizer.param_groups[0]["lr"],
        "lr_adapter": optimizer.param_groups[1]["lr"],
        "gate_mean": sum(gates) / len(gates),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    if log_every and step % log_every == 0:
        logger.info("step %d loss %.5f tanh(gate) mean %.4f", step, loss, row["gate_mean"])


def _save(
    accelerator: Any, model: InstantBoothModel, options: TrainOptions, position: dict[str, int]
) -> Path:
    directory = options.out / CHECKPOINTS / f"step-{position['step']}"
    accelerator.save_state(str(directory))
    if accelerator.is_main_process:
        (directory / STATE_FILE).write_text(json.dumps(position) + "\n")
        model.invalidate_digest()
        model.save_pretrained(options.out / "weights")
        old = sorted(
            (options.out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1])
        )
        for stale in old[: max(0, len(old) - options.keep_checkpoints)]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("checkpoint %s", directory)
    return directory


def _validate(
    accelerator: Any,
    model: InstantBoothModel,
    frozen: FrozenModels,
    hooks: AdapterHooks,
    dataset: InstantBoothDataset,
    options: TrainOptions,
    step: int,
) -> list[Path]:
    paths: list[Path] = []
    if accelerator.is_main_process and options.validation_samples > 0:
        model.eval()
        steps = options.validation_steps or (4 if options.profile == "tiny" else 25)
        paths = render_validation(
            model, frozen, hooks, dataset, options.out / "validation", step,
            count=options.validation_samples, steps=steps, seed=options.seed,
        )  # fmt: skip
        model.train()
    accelerator.wait_for_everyone()
    return paths
