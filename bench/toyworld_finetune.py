"""Per-subject fine-tuning baselines in the toy world (issue 27): the paper's table compares
InstantBooth with Textual Inversion and DreamBooth, each trained on one new subject's photos.

Both start every subject from the pristine trained base (read from disk again, never written),
train on the subject's reference photos with the diffusion loss, and render the held-out
prompts through the engine's own denoising loop (``engine.pipeline.run_batch`` with the
``none`` personalizer: the engine's default scheduler, classifier-free guidance with an empty
negative prompt, one CPU ``torch.Generator`` per image seeded with its seed), so their renders
differ from the other arms' only by the weights.

- Textual Inversion (diffusers' ``examples/textual_inversion/textual_inversion.py`` shape): a
  placeholder token added to the base's tokenizer, its embedding initialised from "toy" and the
  only thing trained (every other row is put back after each step), on the script's "a photo of
  a {}"-style templates.
- DreamBooth-LoRA: ``bench.dreambooth.train_dreambooth_lora`` (rank 4 on the UNet's
  attention projections, the script's optimiser and clipping) with the rare identifier
  InstantBooth's prompts use, "a photo of sks object". The tiny tokenizer keeps "sks" whole
  (one token, ``sks</w>``): ``identifier_tokens`` says so at run time.

``seconds_per_subject`` is the wall time of loading the base and training (not rendering),
with torch's default CPU kernels (oneDNN on, as a member's fine-tune would run); the renders run
with oneDNN off, as the engine's do (``bench.toyworld_plan.onednn``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bench.toyworld_plan import BaselineInputs, BaselineResult, Paths, Plan, onednn, toy_request

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

TI_ARM = "Textual Inversion (per subject)"
LORA_ARM = "DreamBooth-LoRA (per subject)"
PLACEHOLDER = "<toy-subject>"  # one added token; each subject starts from a fresh tokenizer
INITIALIZER = "toy"  # the toy world's captions call every subject "a toy"
IDENTIFIER = "sks"
INSTANCE_PROMPT = f"a photo of {IDENTIFIER} object"  # InstantBooth's prompts (toyworld_eval)
# diffusers' textual_inversion.py ``imagenet_templates_small``, first half.
TI_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
)
TI_WEIGHT_DECAY = 1e-2  # the script's AdamW defaults
Components = dict[str, Any]


def load_base(base: Path) -> Components:
    """The trained base's models, fresh from disk (a subject's training never reaches another
    subject's or the folder), as float32 CPU modules with gradients off."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    components: Components = {
        "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
        "vae": AutoencoderKL.from_pretrained(base, subfolder="vae"),
        "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        # The class the base's folder names, as the engine loads it; training takes a
        # DDPMScheduler from its config and rendering the engine's scheduler.
        "scheduler": DDIMScheduler.from_pretrained(base, subfolder="scheduler"),
    }
    for name in ("unet", "vae", "text_encoder"):
        components[name].requires_grad_(False)
    return components


def identifier_tokens(base: Path) -> list[str]:
    """How the base's tokenizer splits the identifier (issue 27, finding 5)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    return list(tokenizer.tokenize(IDENTIFIER))


def place_prompt(subject_words: str, place: str) -> str:
    from avatarbot_research.toyworld import PLACES

    return f"a photo of {subject_words} {PLACES[place][0]}"


def render(
    components: Components,
    prompts: Mapping[str, str],
    seeds: Sequence[int],
    plan: Plan,
) -> dict[tuple[str, int], Image]:
    """Each place's prompt at each seed, rendered as the engine renders (see the module's
    docstring); keyed by (place, seed)."""
    from engine.personalizers.plain import PlainPersonalizer
    from engine.pipeline import AvatarPipeline, run_batch

    pipe = AvatarPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"].eval(),
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    # As the engine keeps it (engine.engine): every value explicit, none marked as a default.
    config = {
        k: v for k, v in dict(components["scheduler"].config).items() if k != "_use_default_values"
    }
    keys = [(place, seed) for place in prompts for seed in seeds]
    samples = [toy_request(plan, prompts[place], seed, "none") for place, seed in keys]
    with torch.inference_mode():
        outcome = run_batch(
            pipe, PlainPersonalizer(), samples, [s for _, s in keys], scheduler_config=config
        )
    return dict(zip(keys, outcome.images, strict=True))


def _per_subject(
    arm: str,
    plan: Plan,
    paths: Paths,
    inputs: BaselineInputs,
    personalise: Callable[[Components, Sequence[Image], int], tuple[str, list[float]]],
    notes: dict[str, Any],
) -> BaselineResult:
    """Per subject: the pristine base, ``personalise`` (training; returns the words that name
    the subject in prompts and the losses), timed with loading; then the renders."""
    images: dict[tuple[int, str, int], Any] = {}
    seconds: dict[int, float] = {}
    losses: dict[str, dict[str, float]] = {}
    for sid in inputs.subjects:
        with onednn(True):
            started = time.monotonic()
            components = load_base(paths.base)
            words, curve = personalise(components, inputs.references[sid], sid)
            seconds[sid] = time.monotonic() - started
        tail = max(1, len(curve) // 10)
        losses[str(sid)] = {
            "first": sum(curve[:tail]) / tail,
            "last": sum(curve[-tail:]) / tail,
        }
        prompts = {place: place_prompt(words, place) for place in inputs.places}
        with onednn(False):
            for (place, seed), image in render(components, prompts, inputs.seeds, plan).items():
                images[(sid, place, seed)] = image
        logger.info("%s: subject %d trained in %.1f s", arm, sid, seconds[sid])
    return BaselineResult(
        arm=arm,
        images=images,
        seconds_per_subject=seconds,
        notes={**notes, "loss": losses},
    )


def train_textual_inversion(
    components: Components,
    photos: Sequence[Image],
    *,
    steps: int,
    learning_rate: float,
    resolution: int,
    seed: int,
) -> list[float]:
    """Add ``PLACEHOLDER`` to the components' tokenizer and text encoder and learn its input
    embedding (batch size 1, cycling through the photos, a random template each step); the
    loss per step."""
    from diffusers import DDPMScheduler

    from bench.dreambooth import MAX_GRAD_NORM, _pixels

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    unet, vae = components["unet"], components["vae"]
    if tokenizer.add_tokens(PLACEHOLDER) != 1:
        raise ValueError(f"the tokenizer already has {PLACEHOLDER}")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    (init_id,) = tokenizer.encode(INITIALIZER, add_special_tokens=False)
    embeddings = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[new_id] = embeddings[init_id].clone()
    original = embeddings.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[new_id] = False
    embeddings.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [embeddings], lr=learning_rate, betas=(0.9, 0.999), weight_decay=TI_WEIGHT_DECAY, eps=1e-8
    )
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    pixels = [_pixels(photo, resolution).unsqueeze(0) for photo in photos]
    text_encoder.train()
    losses = []
    for step in range(steps):
        prompt = rng.choice(TI_TEMPLATES).format(PLACEHOLDER)
        input_ids = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            latents = vae.encode(pixels[step % len(pixels)]).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,)).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(input_ids)[0]).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([embeddings], MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # only the new token learns (the script's index_no_updates)
            embeddings[keep] = original[keep]
        losses.append(float(loss.detach()))
    embeddings.requires_grad_(False)
    text_encoder.eval()
    return losses


def textual_inversion(plan: Plan, paths: Paths, inputs: BaselineInputs) -> BaselineResult:
    """Textual Inversion per subject (``plan.ti_steps`` at ``plan.ti_lr``), rendered with
    "a photo of <toy-subject> {place}" at every place and seed."""

    def personalise(
        components: Components, photos: Sequence[Image], sid: int
    ) -> tuple[str, list[float]]:
        losses = train_textual_inversion(
            components,
            photos,
            steps=plan.ti_steps,
            learning_rate=plan.ti_lr,
            resolution=plan.size,
            seed=sid,
        )
        return PLACEHOLDER, losses

    notes = {
        "steps": plan.ti_steps,
        "lr": plan.ti_lr,
        "initializer": INITIALIZER,
        "prompt": f"a photo of {PLACEHOLDER} {{place}}",
    }
    return _per_subject(TI_ARM, plan, paths, inputs, personalise, notes)


def dreambooth_lora(plan: Plan, paths: Paths, inputs: BaselineInputs) -> BaselineResult:
    """DreamBooth-LoRA per subject (``plan.lora_steps`` at ``plan.lora_lr``, the rest of the
    recipe bench.dreambooth's), rendered with "a photo of sks object {place}"."""
    from bench.dreambooth import LORA_RANK, LORA_TARGETS, train_dreambooth_lora

    def personalise(
        components: Components, photos: Sequence[Image], sid: int
    ) -> tuple[str, list[float]]:
        times = train_dreambooth_lora(
            components,
            photos,
            resolution=plan.size,
            steps=plan.lora_steps,
            warmup_steps=0,
            device="cpu",
            seed=sid,
            prompt=INSTANCE_PROMPT,
            learning_rate=plan.lora_lr,
        )
        return f"{IDENTIFIER} object", times.losses

    notes = {
        "steps": plan.lora_steps,
        "lr": plan.lora_lr,
        "rank": LORA_RANK,
        "targets": LORA_TARGETS,
        "instance_prompt": INSTANCE_PROMPT,
        "identifier_tokens": identifier_tokens(paths.base),
        "prompt": f"a photo of {IDENTIFIER} object {{place}}",
    }
    return _per_subject(LORA_ARM, plan, paths, inputs, personalise, notes)
