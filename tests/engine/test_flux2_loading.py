"""FLUX.2 [klein] profiles load through one loader: a local folder in the public repository's
exact layout, the tiny profile's own written folder, or meta-built shapes made real on the
device; missing weights fail with one error naming the download command."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import EngineSettings, MissingWeights, RenderRequest, create_engine
from engine.flux2 import KLEIN_4B_REPO, MAX_PROMPT_TOKENS
from engine.flux2.components import (
    CHAT_TEMPLATE_MARGIN,
    MAX_SEQUENCE_LENGTH,
    shaped_flux2_components,
    tiny_flux2_components,
)
from engine.flux2.loading import (
    AvatarFlux2Pipeline,
    build_flux2_pipeline,
    load_flux2_folder,
    parameter_count,
)
from engine.profiles import get_profile, known_profiles, resolve_profile
from tests.fixtures.engine import make_photo

DOWNLOAD = f"hf download {KLEIN_4B_REPO}"


@pytest.fixture(scope="module")
def klein_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random models saved the way the public FLUX.2-klein-4B repository is laid out."""
    from diffusers import Flux2KleinPipeline

    root = tmp_path_factory.mktemp("flux2") / "FLUX.2-klein-4B"
    pipe: Any = Flux2KleinPipeline(**tiny_flux2_components(0))
    pipe.save_pretrained(str(root))
    return root


def test_the_folder_has_the_public_repository_layout(klein_folder: Path) -> None:
    index = json.loads((klein_folder / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"
    assert index["is_distilled"] is True
    assert index["transformer"] == ["diffusers", "Flux2Transformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLFlux2"]
    assert index["text_encoder"] == ["transformers", "Qwen3ForCausalLM"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["tokenizer"][1].startswith("Qwen2Tokenizer")
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (klein_folder / part).is_dir(), part
    encoder = json.loads((klein_folder / "text_encoder" / "config.json").read_text())
    assert encoder["architectures"] == ["Qwen3ForCausalLM"]
    assert (klein_folder / "tokenizer" / "tokenizer.json").is_file()


def test_profiles_are_registered_with_klein_defaults() -> None:
    names = set(known_profiles())
    assert {"flux2-klein-4b", "tiny-flux2", "flux2-klein-shaped"} <= names
    real = get_profile("flux2-klein-4b")
    assert (real.base_model, real.pipeline_family) == (KLEIN_4B_REPO, "flux2")
    assert (real.default_size, real.default_steps, real.default_guidance) == (1024, 4, 1.0)
    assert real.default_personalizer == "flux2-klein" and not real.is_noise
    assert real.size_multiple == 16
    assert real.max_prompt_tokens == MAX_PROMPT_TOKENS == MAX_SEQUENCE_LENGTH - CHAT_TEMPLATE_MARGIN
    tiny = get_profile("tiny-flux2")
    assert tiny.is_noise and tiny.device == "cpu" and tiny.cpu_threads == 1
    assert get_profile("flux2-klein-shaped").is_noise


def test_settings_base_model_replaces_the_location() -> None:
    profile = resolve_profile(EngineSettings(profile="tiny-flux2", base_model="/models/klein"))
    assert profile.base_model == "/models/klein"
    assert profile.random_base is None and not profile.is_noise


async def test_the_real_profile_loads_a_local_folder_and_renders(klein_folder: Path) -> None:
    settings = EngineSettings(
        profile="flux2-klein-4b", base_model=str(klein_folder), offline=True, device="cpu"
    )
    engine = await create_engine(settings)
    try:
        assert isinstance(engine.model.pipe, AvatarFlux2Pipeline)
        assert engine.personalizers == ["flux2-klein"]
        assert engine.default_guidance == 1.0 and engine.default_steps == 4
        assert engine.max_prompt_tokens == MAX_PROMPT_TOKENS
        assert engine.count_tokens("a cat") == 5  # the tiny tokenizer: one token per byte
        features = await engine.encode([make_photo(0)], "pet")
        # The real profile's options: 512 px references, (1, 16, 32, 32) tiny latents.
        assert features.tensors["reference_latents"].shape == (1, 16, 32, 32)
        request = RenderRequest(
            prompt="a photo of a dog",
            personalizer="flux2-klein",
            features=features,
            width=64,
            height=80,
            steps=2,
            guidance=1.0,
        )
        result = await engine.render(request)
        assert result.images[0].size == (64, 80) and not result.is_noise
    finally:
        await engine.aclose()


async def test_a_missing_folder_names_the_download_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    settings = EngineSettings(
        profile="flux2-klein-4b", base_model=str(missing), offline=True, device="cpu"
    )
    with pytest.raises(MissingWeights) as caught:
        await create_engine(settings)
    assert f"{DOWNLOAD} --local-dir {missing}" in str(caught.value)
    assert caught.value.location == str(missing)


async def test_a_hub_id_missing_offline_names_the_download_command(tmp_path: Path) -> None:
    settings = EngineSettings(
        profile="flux2-klein-4b", offline=True, device="cpu", cache_dir=tmp_path
    )
    with pytest.raises(MissingWeights) as caught:
        await create_engine(settings)
    message = str(caught.value)
    assert f"`{DOWNLOAD}`" in message and "offline" in message


def test_a_folder_without_its_transformer_is_missing_weights(
    klein_folder: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(klein_folder, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(MissingWeights) as caught:
        load_flux2_folder(str(broken), dtype=torch.float32, offline=True, cache_dir=None)
    assert DOWNLOAD in str(caught.value)


def test_shaped_components_have_the_published_4b_sizes() -> None:
    parts = shaped_flux2_components(0)
    transformer, vae, text_encoder = parts["transformer"], parts["vae"], parts["text_encoder"]
    assert all(p.is_meta for p in transformer.parameters())
    # Published sizes: a 3.9 B transformer ("4B"), Qwen3-4B (4.0 B, tied embeddings), 84 M VAE.
    assert parameter_count([transformer]) == 3_875_544_576
    assert parameter_count([text_encoder]) == 4_022_468_096
    assert parameter_count([vae]) == 84_046_115
    hidden = text_encoder.config.hidden_size
    assert transformer.config.joint_attention_dim == 3 * hidden == 7680
    assert transformer.config.in_channels == 4 * vae.config.latent_channels == 128


def test_meta_components_are_made_real_on_the_device(tmp_path: Path) -> None:
    """The shaped profile's path (meta shapes → values on the device → pipeline), at tiny size."""

    def meta_tiny(seed: int) -> dict[str, object]:
        with torch.device("meta"):
            return tiny_flux2_components(seed)

    profile = dataclasses.replace(get_profile("tiny-flux2"), random_base=meta_tiny)
    pipe = build_flux2_pipeline(
        profile,
        seed=0,
        device=torch.device("cpu"),
        dtype=torch.float32,
        offline=True,
        cache_dir=None,
        workdir=str(tmp_path),
        batch_invariant=False,
    )
    assert isinstance(pipe, AvatarFlux2Pipeline) and not list(tmp_path.iterdir())
    modules = [pipe.transformer, pipe.vae, pipe.text_encoder]
    assert not any(p.is_meta for m in modules for p in m.parameters())
    image = pipe(
        prompt="a cat",
        height=32,
        width=32,
        num_inference_steps=1,
        max_sequence_length=64,
        text_encoder_out_layers=(9, 18, 27),
        output_type="np",
    ).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_a_single_checkpoint_file_is_refused_with_the_folder_command(tmp_path: Path) -> None:
    single = tmp_path / "flux-2-klein-4b.safetensors"
    single.write_bytes(b"")
    with pytest.raises(MissingWeights) as caught:
        load_flux2_folder(str(single), dtype=torch.float32, offline=True, cache_dir=None)
    assert "diffusers folder" in str(caught.value) and DOWNLOAD in str(caught.value)


def test_materialized_modules_keep_tied_weights_and_rotary_buffers() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from engine.flux2.components import materialize

    config = Qwen3Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        shapes = Qwen3ForCausalLM(config)
    made = materialize({"te": shapes}, device=torch.device("cpu"), dtype=torch.bfloat16, seed=0)
    encoder = made["te"]
    assert encoder.lm_head.weight is encoder.model.embed_tokens.weight
    assert encoder.lm_head.weight.dtype == torch.bfloat16
    expected = Qwen3ForCausalLM(config).model.rotary_emb.inv_freq
    assert torch.equal(encoder.model.rotary_emb.inv_freq, expected)
    assert torch.isfinite(encoder(torch.tensor([[1, 2, 3]])).logits.float()).all()
