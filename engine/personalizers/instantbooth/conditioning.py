"""Everything InstantBooth changes about a Stable Diffusion call, for a batch of samples.

Shared by the personalizer (the engine's renders) and the trainer's validation renders, so both
run the same code: prompts get the identifier, the text encoder runs as diffusers runs it, the
concept token replaces the identifier's output embedding (renormalised with α), and an
``AdapterState`` carries each sample's patch tokens and β for the UNet's hooks.

Classifier-free guidance: the unconditional half gets no concept token (its negative prompt has
no identifier) and, unless the config says ``uncond_patches``, no adapter either (β = 0), so
the unconditional prediction is the untouched base model's and guidance pushes towards the
concept. This mirrors IP-Adapter, whose negative branch sees a blank image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.personalizers.instantbooth.adapters import AdapterState
from engine.personalizers.instantbooth.config import InstantBoothConfig
from engine.personalizers.instantbooth.prompts import (
    identifier_ids,
    identifier_positions,
    inject_concept,
    subject_prompt,
    tokenize,
)

# identity_strength is mapped onto β as β = β₀ · strength / DEFAULT_STRENGTH (see knobs()).
DEFAULT_STRENGTH = 0.7


@dataclass(frozen=True)
class Concept:
    """One sample's cached features: concept vector [D], patch tokens [M, D'] and its kind."""

    token: torch.Tensor
    patches: torch.Tensor
    kind: str


@dataclass(frozen=True)
class Conditioning:
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    adapter_state: AdapterState | None
    prompts: list[str]


def knobs(
    config: InstantBoothConfig,
    extra: Mapping[str, float] | None = None,
    identity_strength: float | None = None,
) -> tuple[float | None, float]:
    """(α, β) for one request; α None: the concept vector as the heads made it, without the
    renormalisation (as in training; ``extra["raw_concept"] = 1``, for evaluations).

    ``extra["alpha"]``/``extra["beta"]`` win when given. Otherwise α is the config's and β is
    the config's β scaled by identity strength, linearly, so that the engine's default strength
    (0.7) gives the paper's β, 0 turns the adapters off (concept token only) and 1 gives
    β₀/0.7 (≈ 0.43 with the paper's 0.3).
    """
    extra = extra or {}
    alpha = float(extra.get("alpha", config.alpha))
    if "beta" in extra:
        beta = float(extra["beta"])
    elif identity_strength is not None:
        beta = config.beta * float(identity_strength) / DEFAULT_STRENGTH
    else:
        beta = config.beta
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(value) and 0.0 <= value <= 4.0):
            raise ValueError(f"InstantBooth {name} must be in 0..4 (got {value})")
    return (None if extra.get("raw_concept") else alpha), beta


def build_conditioning(
    pipe: Any,
    config: InstantBoothConfig,
    prompts: Sequence[str],
    concepts: Sequence[Concept | None],
    *,
    alphas: Sequence[float | None],
    betas: Sequence[float],
    do_cfg: bool,
    negative_prompt_embeds: torch.Tensor | None = None,
    inject: bool = True,
    static_tokens: int | None = None,
) -> Conditioning:
    """Prompt embeddings (with concept tokens) and the adapter state for one UNet batch.

    One entry per image of the batch; rows whose concept is None render like the base model.
    ``negative_prompt_embeds``, when the caller already encoded the negatives, are reused.
    ``inject=False`` skips the concept token (tests isolate the adapters with it).
    ``static_tokens``: see ``AdapterState.build`` (a compiled UNet).
    """
    n = len(prompts)
    if not n == len(concepts) == len(alphas) == len(betas):
        raise ValueError("one concept, alpha and beta per prompt are required")
    device = pipe._execution_device
    texts = [
        subject_prompt(p, config, c.kind) if c is not None else p
        for p, c in zip(prompts, concepts, strict=True)
    ]
    if do_cfg and negative_prompt_embeds is not None:
        pos, _ = pipe.encode_prompt(texts, device, 1, False)
        neg = negative_prompt_embeds
    else:
        pos, neg = pipe.encode_prompt(texts, device, 1, do_cfg, [""] * n if do_cfg else None)
    present = [c for c in concepts if c is not None]
    if inject and present:
        positions = identifier_positions(
            tokenize(pipe.tokenizer, texts), identifier_ids(pipe.tokenizer, config.identifier)
        )
        width = present[0].token.shape[-1]
        tokens = torch.stack(
            [
                c.token.to(device) if c is not None else torch.zeros(width, device=device)
                for c in concepts
            ]
        )
        positions = [p if c is not None else [] for p, c in zip(positions, concepts, strict=True)]
        pos = inject_concept(pos, positions, tokens, list(alphas))
    state = None
    if present:
        param = next(iter(pipe.unet.parameters()))
        state = AdapterState.build(
            [c.patches if c is not None else None for c in concepts],
            betas,
            cfg=do_cfg,
            uncond_patches=config.uncond_patches,
            device=param.device,
            dtype=param.dtype,
            static_tokens=static_tokens,
        )
    return Conditioning(pos, neg if do_cfg else None, state, texts)
