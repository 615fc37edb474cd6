"""Sentence embeddings from the text encoder a profile already loaded (for the semantic prompt
screen, bot/services/semantic_screen.py): no second model, no download.

- Stable Diffusion (CLIP text model): the pooled output, i.e. the final-layer-normed hidden
  state of the end-of-text token, the vector CLIP's contrastive training made a summary of
  the whole text (SD1.5 ships ``CLIPTextModel`` without the projection; a
  ``CLIPTextModelWithProjection`` gives its projected ``text_embeds``).
- FLUX.2 [klein] (Qwen3, a decoder): the mean of the last hidden states over the real tokens
  (a causal model has no summary token; the mean over the mask is the usual sentence vector).

Every vector is float32 and L2-normalised, so a dot product is a cosine. These run on the
engine's model thread (``DiffusionEngine.embed_texts``), under ``no_grad``, in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# Concept lists and prompts are short; a bound keeps one call's activations small on a
# 4B-parameter encoder (and a caller's mistake from asking for thousands at once).
BATCH = 32
# Qwen3 reads far more than a prompt's 480 tokens; the screen only needs the prompt itself.
MAX_QWEN_TOKENS = 512


class TextEncoderUnavailable(RuntimeError):
    """The loaded pipeline has no text encoder this module knows how to embed with."""


def text_encoder_id(profile_name: str, family: str, base_model: str | None) -> str:
    """Names the text encoder's weights: embeddings are comparable only under one id."""
    return f"text:{family}:{base_model or profile_name}"


def embed_texts(pipe: Any, family: str, texts: Sequence[str]) -> torch.Tensor:
    """``len(texts)`` x D float32 unit vectors on the CPU (empty input: 0 x 0)."""
    encoder = getattr(pipe, "text_encoder", None)
    tokenizer = getattr(pipe, "tokenizer", None)
    if encoder is None or tokenizer is None:
        raise TextEncoderUnavailable("the pipeline has no text encoder or tokenizer")
    if not texts:
        return torch.zeros((0, 0), dtype=torch.float32)
    embed = _qwen_mean if family == "flux2" else _clip_pooled
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), BATCH):
            vectors = embed(encoder, tokenizer, list(texts[start : start + BATCH]))
            chunks.append(vectors.float().cpu())
    out = torch.cat(chunks)
    if not torch.isfinite(out).all():
        raise TextEncoderUnavailable("the text encoder returned non-finite values")
    return torch.nn.functional.normalize(out, dim=-1)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _clip_pooled(encoder: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    inputs = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=int(tokenizer.model_max_length),
        return_tensors="pt",
    )
    device = _device(encoder)
    output = encoder(input_ids=inputs.input_ids.to(device))
    projected = getattr(output, "text_embeds", None)
    result: torch.Tensor = projected if projected is not None else output.pooler_output
    return result


def _qwen_mean(encoder: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    # Right padding: in a causal model the real tokens then never attend to padding.
    inputs = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=MAX_QWEN_TOKENS,
        return_tensors="pt",
        padding_side="right",
    )
    device = _device(encoder)
    mask = inputs.attention_mask.to(device)
    # The decoder stack alone (``.model``): its last hidden states, after the final norm,
    # without the vocabulary head's logits (151k floats a token on the real model).
    body = getattr(encoder, "model", encoder)
    hidden = body(input_ids=inputs.input_ids.to(device), attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed: torch.Tensor = (hidden * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp(min=1.0)
