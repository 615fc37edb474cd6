"""Prompts with an identifier, and the concept token placed after the text encoder.

Training captions and user prompts go through the same ``subject_prompt``: the first word naming
the subject (the kind's class noun or one of its synonyms) becomes "<identifier> <class noun>";
a text with no such word gets a prefix. The text encoder then encodes the prompt as usual, and
the *output* embedding at the identifier's token position(s) is replaced by the concept vector
(the paper found replacing the input embedding worse).

Concept-token renormalisation (inference only): the paper rescales the concept vector with
α = 0.4 because an unbounded vector can dominate the prompt. The paper gives no reference
norm, so ours is the norm of what the frozen text encoder itself put at that position for this
prompt: ``f = α · ‖e_V‖ · c / ‖c‖``. α = 1 gives the concept exactly the weight of an ordinary
token there; smaller α leaves more room to the rest of the prompt. Training uses the raw vector.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from engine.personalizers.instantbooth.config import InstantBoothConfig

TRAIN_PREFIX = "a photo of {identifier} {noun}, "
RENDER_PREFIX = "{identifier} {noun}, "


def subject_prompt(
    text: str, config: InstantBoothConfig, kind: str, *, prefix: str = RENDER_PREFIX
) -> str:
    """``text`` with the subject named "<identifier> <class noun>" exactly once."""
    noun = config.class_noun(kind)
    ident = config.identifier
    if re.search(rf"(?<!\w){re.escape(ident)}(?!\w)", text):
        return text
    words = sorted({noun, *config.class_synonyms.get(kind, [])}, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    replaced, count = pattern.subn(f"{ident} {noun}", text, count=1)
    if count:
        return replaced
    return prefix.format(identifier=ident, noun=noun) + text


def identifier_ids(tokenizer: Any, identifier: str) -> list[int]:
    ids: list[int] = tokenizer(identifier, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the identifier {identifier!r} tokenizes to nothing")
    return ids


def identifier_positions(input_ids: torch.Tensor, ident: Sequence[int]) -> list[list[int]]:
    """For each row of ``input_ids`` [B, L], every position covered by an occurrence of the
    identifier's token sequence (all its tokens, when it spans several)."""
    k = len(ident)
    target = torch.tensor(list(ident), dtype=input_ids.dtype)
    found: list[list[int]] = []
    for row in input_ids.cpu():
        positions: list[int] = []
        if row.shape[0] >= k:
            windows = row.unfold(0, k, 1)  # [L-k+1, k]
            for start in (windows == target).all(dim=1).nonzero().flatten().tolist():
                positions.extend(range(start, start + k))
        found.append(sorted(set(positions)))
    return found


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Exactly the tokenisation diffusers' StableDiffusionPipeline.encode_prompt uses."""
    ids: torch.Tensor = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids


def inject_concept(
    prompt_embeds: torch.Tensor,
    positions: Sequence[Sequence[int]],
    concepts: torch.Tensor,
    alpha: float | Sequence[float | None] | None = None,
) -> torch.Tensor:
    """Replace the identifier positions of each row with that row's concept vector.

    prompt_embeds [B, L, D] (text encoder output), concepts [B, D]; alpha: None in training (raw
    vector), else one α or one per row (renormalisation, see the module docstring; a row's
    None keeps its raw vector). Rows
    without an identifier position are returned unchanged. Differentiable in ``concepts``.
    """
    if concepts.shape[0] != prompt_embeds.shape[0] or len(positions) != prompt_embeds.shape[0]:
        raise ValueError("one concept vector and one position list per prompt row are required")
    alphas: list[float | None]
    if alpha is None or isinstance(alpha, float | int):
        alphas = [None if alpha is None else float(alpha)] * prompt_embeds.shape[0]
    else:
        alphas = [None if a is None else float(a) for a in alpha]
    rows = []
    for i, pos in enumerate(positions):
        row = prompt_embeds[i]
        if pos:
            index = torch.tensor(list(pos), device=row.device)
            vec = concepts[i].to(row.dtype).expand(len(pos), -1)
            a = alphas[i]
            if a is not None:
                reference = row.index_select(0, index).float().norm(dim=-1, keepdim=True)
                unit = vec.float() / vec.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
                vec = (a * reference * unit).to(row.dtype)
            # index_put keeps the graph to ``concepts`` (training) and leaves the rest intact.
            row = row.index_put((index,), vec)
        rows.append(row)
    return torch.stack(rows)
