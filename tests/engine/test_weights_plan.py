"""engine/weights.py without a network: which hub sources each profile reads, and which files
of a repository's listing a diffusers folder or a transformers model loads."""

from __future__ import annotations

import pytest

from engine.config import EngineSettings
from engine.flux2 import KLEIN_4B_REPO
from engine.profiles import (
    IP_ADAPTER_PLUS_FACE_WEIGHTS,
    IP_ADAPTER_REPO,
    SD15_BASE,
    get_profile,
    known_profiles,
    resolve_profile,
)
from engine.weights import (
    INSTANTBOOTH_ENCODER,
    HubSource,
    WeightsPlan,
    model_files,
    pipeline_files,
    weights_plan,
)

SD15_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": [None, None],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# The public SD1.5 repository's files (abridged: every kind it has).
SD15_LISTING = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "v1-5-pruned-emaonly.safetensors",
    "v1-5-pruned.ckpt",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]


def test_the_real_profiles_read_these_repositories() -> None:
    face = weights_plan(get_profile("sd15-ip-adapter-plus-face"))
    assert face.sources == (
        HubSource("base model", SD15_BASE, "engine.base_model", "pipeline"),
        HubSource(
            "IP-Adapter weights",
            IP_ADAPTER_REPO,
            "engine.ip_adapter",
            "files",
            (
                f"models/{IP_ADAPTER_PLUS_FACE_WEIGHTS}",
                "models/image_encoder/config.json",
                "models/image_encoder/model.safetensors",
            ),
        ),
    )
    booth = weights_plan(get_profile("sd15-instantbooth"))
    assert [(s.repo, s.kind) for s in booth.sources] == [
        (SD15_BASE, "pipeline"),
        (INSTANTBOOTH_ENCODER, "model"),
    ]
    assert any("trained, not downloaded" in note for note in booth.notes)
    klein = weights_plan(get_profile("flux2-klein-4b"))
    assert [(s.repo, s.kind) for s in klein.sources] == [(KLEIN_4B_REPO, "pipeline")]


@pytest.mark.parametrize("name", [n for n in known_profiles() if get_profile(n).is_noise])
def test_random_weight_profiles_need_nothing(name: str) -> None:
    assert weights_plan(get_profile(name)) == WeightsPlan(name, sources=(), notes=())


def test_a_pipeline_loads_its_components_without_the_rest() -> None:
    assert pipeline_files(SD15_INDEX, SD15_LISTING) == [
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]


def test_sharded_weights_come_with_their_index_and_without_variants() -> None:
    listing = [
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "transformer/diffusion_pytorch_model.fp8-00001-of-00001.safetensors",
        "transformer/diffusion_pytorch_model.fp8.safetensors.index.json",
    ]
    assert pipeline_files({"transformer": ["diffusers", "X"]}, listing) == [
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
    ]


def test_a_model_without_safetensors_loads_its_bin_and_only_its_config() -> None:
    listing = ["config.json", "pytorch_model.bin", "tf_model.h5", "vocab.json", "sub/x.bin"]
    assert model_files(listing) == ["config.json", "pytorch_model.bin"]


def test_a_single_checkpoint_file_needs_only_its_configs_from_the_hub() -> None:
    profile = resolve_profile(
        EngineSettings(
            profile="sd15-ip-adapter-plus-face",
            base_model="/models/sd15.safetensors",
            base_model_config=SD15_BASE,
        )
    )
    plan = weights_plan(profile)
    assert plan.sources[0] == HubSource(
        "base model configs", SD15_BASE, "engine.base_model_config", "configs"
    )
    assert plan.notes[0].startswith("base model: local /models/sd15.safetensors")
