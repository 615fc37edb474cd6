"""Sentence embeddings from the loaded text encoder (engine/text_embedding.py), on the real
tiny profiles: Stable Diffusion's CLIP text model and FLUX.2 [klein]'s Qwen3. Random weights,
so only the path, shapes, normalisation and determinism are checked (what the vectors mean
is for `avatarbot safety screen-check` on real weights)."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest
import torch

from bot.services.ports import EnginePort
from engine.text_embedding import TextEncoderUnavailable, embed_texts

TEXTS = ["a cat on a sofa", "a portrait in a forest", "é ü 漢字 🙂", "x " * 800]


def _check(vectors: list[tuple[float, ...]], width: int) -> None:
    assert len(vectors) == len(TEXTS)
    assert {len(v) for v in vectors} == {width}
    for v in vectors:
        assert all(math.isfinite(x) for x in v)
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] != vectors[1]


async def test_sd15_shaped_tiny_profile_embeds_with_clip(tiny_engine_port: EnginePort) -> None:
    engine: Any = tiny_engine_port.engine  # type: ignore[attr-defined]
    vectors = await tiny_engine_port.embed_texts(TEXTS)
    # CLIP's pooled output: the text model's hidden size.
    _check(vectors, engine.model.pipe.text_encoder.config.hidden_size)
    assert await tiny_engine_port.embed_texts(TEXTS[:1]) == vectors[:1]  # batch-independent
    facts = tiny_engine_port.text_screen()
    assert facts.random_weights and facts.thresholds is None
    assert facts.encoder_id == "text:stable-diffusion:tiny"


async def test_flux2_tiny_profile_embeds_with_qwen3(tiny_flux2_port: EnginePort) -> None:
    engine: Any = tiny_flux2_port.engine  # type: ignore[attr-defined]
    vectors = await tiny_flux2_port.embed_texts(TEXTS)
    # The mean of Qwen3's last hidden states.
    _check(vectors, engine.model.pipe.text_encoder.config.hidden_size)
    # Right padding and the mask: a short text's vector is the same alone or beside a long one.
    alone = await tiny_flux2_port.embed_texts(TEXTS[:1])
    assert alone[0] == pytest.approx(vectors[0], abs=1e-5)
    assert tiny_flux2_port.text_screen().encoder_id == "text:flux2:tiny-flux2"


async def test_embedding_runs_on_the_model_thread(tiny_engine_port: EnginePort) -> None:
    engine: Any = tiny_engine_port.engine  # type: ignore[attr-defined]
    threads: list[str] = []
    hook = engine.model.pipe.text_encoder.register_forward_hook(
        lambda *_: threads.append(threading.current_thread().name)
    )
    try:
        await asyncio.gather(*(tiny_engine_port.embed_texts([t]) for t in TEXTS))
    finally:
        hook.remove()
    assert threads and set(threads) == {"avatarbot-engine"}


def test_a_pipeline_without_a_text_encoder_is_refused() -> None:
    class Bare:
        text_encoder = None
        tokenizer = None

    with pytest.raises(TextEncoderUnavailable):
        embed_texts(Bare(), "stable-diffusion", ["a cat"])


def test_real_profiles_carry_thresholds_and_random_ones_none() -> None:
    from engine.profiles import get_profile

    for name in ("sd15-ip-adapter-plus-face", "sd15-instantbooth", "flux2-klein-4b"):
        thresholds = get_profile(name).screen_thresholds
        assert thresholds is not None and set(thresholds) == {"sexual", "minors", "always"}
    for name in ("tiny", "tiny-flux2", "sd15-shaped", "flux2-klein-shaped", "tiny-instantbooth"):
        assert get_profile(name).screen_thresholds is None


def test_non_finite_output_is_refused() -> None:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids: torch.Tensor) -> Any:
            class Out:
                text_embeds = torch.full((input_ids.shape[0], 4), float("nan"))

            return Out()

    class Tok:
        model_max_length = 8

        def __call__(self, texts: list[str], **_: Any) -> Any:
            class Batch:
                input_ids = torch.zeros((len(texts), 8), dtype=torch.long)

            return Batch()

    class Pipe:
        text_encoder = Broken()
        tokenizer = Tok()

    with pytest.raises(TextEncoderUnavailable, match="non-finite"):
        embed_texts(Pipe(), "stable-diffusion", ["a cat"])
