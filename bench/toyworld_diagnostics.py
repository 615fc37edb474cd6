"""What the toy world's evaluation measures besides the renders (issue 15): the bounds an
identity score is read against and whether the trained model uses its features at all."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

    from bench.toyworld_plan import Paths, Plan

from bench.toyworld_plan import _mean


def scene_ceiling(
    metric: Any, paths: Paths, refs: dict[int, list[Image]], plan: Plan, seed: int
) -> dict[str, Any]:
    """Each held-out subject drawn by the world in every place (as many as the renders), then
    encoded and decoded by the base's VAE, scored like a render: what perfect personalization
    would score through this VAE."""
    import numpy as np
    import torch
    from avatarbot_research.toyworld import PLACES, Scene, render_scene, scene_class, subject
    from diffusers import AutoencoderKL
    from PIL import Image as PILImage

    vae: Any = AutoencoderKL.from_pretrained(paths.base, subfolder="vae").eval()
    scores: list[float] = []
    hits: list[float] = []
    for sid, photos in refs.items():
        rng = np.random.default_rng([seed, sid, 7])
        for place in PLACES:
            for _ in range(plan.eval_seeds):
                image, _mask = render_scene(subject(sid), Scene(place), plan.size, rng)
                x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
                with torch.no_grad():
                    y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
                pixels = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                decoded = PILImage.fromarray(pixels, "RGB")
                value = metric.similarity(decoded, photos)
                if value is not None:
                    scores.append(value)
                hits.append(float(scene_class(decoded) == place))
    return {
        "arm": "the subject drawn in the place (VAE round trip)",
        "identity_mean": _mean(scores),
        "scene_accuracy": _mean(hits),
        "n": len(hits),
    }


FEATURE_TIMESTEPS = (100, 300, 500, 700, 900)


def feature_use(paths: Paths, weights: Path, samples: int, seed: int) -> list[dict[str, Any]]:
    """Does the trained model use its features? The diffusion loss on training samples (the
    trainer's own batches: subject crop + caption), per timestep, for the base model, with the
    concept token only, with the token and the adapters (β = 1, as trained), and with another
    sample's features (shuffled: what features of the wrong subject do). Only a gap between
    "full" and both "base" and "shuffled" says identity flows through the features."""
    import torch
    from avatarbot_research.instantbooth.dataset import InstantBoothDataset, Sample, collate

    from bench.toyworld_plan import frozen_base
    from engine.personalizers.instantbooth.adapters import AdapterState
    from engine.personalizers.instantbooth.model import InstantBoothModel
    from engine.personalizers.instantbooth.prompts import (
        identifier_ids,
        identifier_positions,
        inject_concept,
        tokenize,
    )
    from engine.tiny import tiny_image_encoder

    frozen = frozen_base(paths.base)
    frozen.freeze("cpu", torch.float32)
    model = InstantBoothModel.from_pretrained(weights, tiny_image_encoder(0)).eval()
    encoder = model.backbone if model.backbone is not None else frozen.image_encoder
    index = weights.parent / "samples.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines()][:samples]
    chosen = [Sample(Path(r["image"]), r["caption"], Path(r["mask"]), r["kind"]) for r in rows]
    dataset = InstantBoothDataset(chosen, model.config, paths_size(paths), seed=seed)
    batch = collate([dataset[i] for i in range(len(chosen))])
    n = len(chosen)
    shuffle = torch.roll(torch.arange(n), 1)  # every sample gets its neighbour's features
    hooks = model.install(frozen.unet)
    out = []
    try:
        with torch.no_grad():
            ids = tokenize(frozen.tokenizer, batch["prompt"])
            scale = frozen.vae.config.scaling_factor
            latents = frozen.vae.encode(batch["pixel_values"]).latent_dist.mean * scale
            text = frozen.text_encoder(ids)[0]
            image = encoder(pixel_values=batch["subject_pixels"])
            concepts, patches = (
                model.concepts(image.image_embeds, image.last_hidden_state),
                model.patch(image.last_hidden_state),
            )
            where = identifier_positions(
                ids, identifier_ids(frozen.tokenizer, model.config.identifier)
            )
            own = inject_concept(text, where, concepts)
            other = inject_concept(text, where, concepts[shuffle])
            for t in FEATURE_TIMESTEPS:
                noise = torch.randn(
                    latents.shape, generator=torch.Generator().manual_seed(seed + t)
                )
                steps = torch.full((n,), t)
                noisy = frozen.noise_scheduler.add_noise(latents, noise, steps)
                losses = {}
                for arm, embeds, feats in (
                    ("base", text, None),
                    ("token", own, None),
                    ("full", own, patches),
                    ("shuffled", other, patches[shuffle]),
                ):
                    state = AdapterState.dense(feats, beta=1.0) if feats is not None else None
                    with hooks.active(state) if state is not None else contextlib.nullcontext():
                        pred = frozen.unet(noisy, steps, embeds).sample
                    losses[arm] = float(((pred - noise) ** 2).mean())
                out.append({"t": t, **losses})
    finally:
        hooks.remove()
    return out


def paths_size(paths: Paths) -> int:
    return int(json.loads(paths.split.read_text())["size"])


def reference_bounds(
    metric: Any, refs: dict[int, list[Image]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upper bound: each reference against the subject's other references. Control: another
    held-out subject's references against this subject's."""
    ids = list(refs)
    upper: list[float] = []
    control: list[float] = []
    for i, sid in enumerate(ids):
        photos = refs[sid]
        for j, photo in enumerate(photos):
            others = photos[:j] + photos[j + 1 :]
            if others:
                value = metric.similarity(photo, others)
                if value is not None:
                    upper.append(value)
        if len(ids) > 1:
            other = refs[ids[(i + 1) % len(ids)]]
            for photo in other:
                value = metric.similarity(photo, photos)
                if value is not None:
                    control.append(value)
    return (
        {"arm": "references (own, leave-one-out)", "identity_mean": _mean(upper), "n": len(upper)},
        {"arm": "another subject's references", "identity_mean": _mean(control), "n": len(control)},
    )
