"""Profiles load real files: a local diffusers folder, one .safetensors checkpoint, an
IP-Adapter folder; missing weights fail with one error that says what and how."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine import (
    ConceptFeatures,
    DiffusionEngine,
    EngineSettings,
    MissingWeights,
    RenderRequest,
    UnknownProfile,
    create_engine,
)
from engine.profiles import known_profiles, resolve_profile


@pytest.fixture(scope="module")
def tiny_on_disk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny profile's models written in every layout a user may point the engine at."""
    from diffusers import StableDiffusionPipeline

    from engine.tiny import tiny_components, write_tiny_ip_adapter
    from tests.engine.ldm_layout import save_configs_only, save_single_file

    root = tmp_path_factory.mktemp("tiny-models")
    pipe = StableDiffusionPipeline(
        **tiny_components(0),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "diffusers")
    save_single_file(pipe, root / "tiny.safetensors")
    save_configs_only(pipe, root / "configs")
    write_tiny_ip_adapter(root / "ip-adapter", pipe.unet, seed=0)
    return {
        "folder": root / "diffusers",
        "file": root / "tiny.safetensors",
        "configs": root / "configs",
        "ip_adapter": root / "ip-adapter",
    }


async def _render(engine: DiffusionEngine, features: ConceptFeatures) -> np.ndarray:
    request = RenderRequest(
        prompt="a photo of a cat",
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        seed=4,
        scheduler="euler_a",
        features=features,
    )
    return np.asarray((await engine.render(request)).images[0])


async def _same_as_tiny(settings: EngineSettings, tiny_engine: DiffusionEngine, photo: Any) -> None:
    features = await tiny_engine.encode([photo], "pet")
    engine = await create_engine(settings)
    try:
        assert engine.encoder_id == tiny_engine.encoder_id
        assert np.array_equal(await _render(engine, features), await _render(tiny_engine, features))
    finally:
        await engine.aclose()


async def test_base_model_from_a_local_diffusers_folder(
    tiny_on_disk: dict[str, Path], tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    settings = EngineSettings(profile="tiny", base_model=str(tiny_on_disk["folder"]))
    await _same_as_tiny(settings, tiny_engine, engine_photos[0])


async def test_base_model_from_a_single_safetensors_file(
    tiny_on_disk: dict[str, Path], tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    settings = EngineSettings(
        profile="tiny",
        base_model=str(tiny_on_disk["file"]),
        base_model_config=str(tiny_on_disk["configs"]),
    )
    await _same_as_tiny(settings, tiny_engine, engine_photos[0])


async def test_ip_adapter_from_a_local_folder(
    tiny_on_disk: dict[str, Path], tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    from engine.tiny import TINY_IP_ADAPTER_WEIGHT_NAME

    settings = EngineSettings(
        profile="tiny",
        ip_adapter=str(tiny_on_disk["ip_adapter"]),
        ip_adapter_weight_name=TINY_IP_ADAPTER_WEIGHT_NAME,
    )
    spec = resolve_profile(settings).personalizers[0]
    assert "random" not in spec.options and spec.options["repo"] == settings.ip_adapter
    await _same_as_tiny(settings, tiny_engine, engine_photos[0])


async def test_a_missing_local_base_model_names_the_path() -> None:
    with pytest.raises(MissingWeights) as info:
        await create_engine(EngineSettings(profile="tiny", base_model="/nonexistent/sd15"))
    error = info.value
    assert error.what == "base model" and error.location == "/nonexistent/sd15"
    assert "engine.base_model" in str(error) and "no such path" in str(error)


async def test_a_hub_model_offline_says_how_to_download_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    settings = EngineSettings(profile="sd15-ip-adapter-plus-face", cache_dir=tmp_path)
    with pytest.raises(MissingWeights) as info:
        await create_engine(settings)
    message = str(info.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "offline" in message


async def test_missing_ip_adapter_weights_are_named(
    tiny_on_disk: dict[str, Path], tmp_path: Path
) -> None:
    settings = EngineSettings(
        profile="tiny", ip_adapter=str(tmp_path / "nope"), ip_adapter_weight_name="x.safetensors"
    )
    with pytest.raises(MissingWeights) as info:
        await create_engine(settings)
    assert info.value.what == "IP-Adapter weights"
    empty = tmp_path / "empty"
    (empty / "models").mkdir(parents=True)
    settings = EngineSettings(profile="tiny", ip_adapter=str(empty), ip_adapter_weight_name="x.bin")
    with pytest.raises(MissingWeights, match="IP-Adapter weights"):
        await create_engine(settings)


async def test_a_single_file_without_its_configs_is_missing_weights(
    tiny_on_disk: dict[str, Path], tmp_path: Path
) -> None:
    settings = EngineSettings(
        profile="tiny",
        base_model=str(tiny_on_disk["file"]),
        base_model_config=str(tmp_path / "no-configs"),
        offline=True,
    )
    with pytest.raises(MissingWeights) as info:
        await create_engine(settings)
    assert info.value.what == "base model configs"
    assert "engine.base_model_config" in str(info.value)


async def test_unknown_profiles_list_the_known_ones() -> None:
    with pytest.raises(UnknownProfile, match="tiny"):
        await create_engine(EngineSettings(profile="sdxl-magic"))
    assert {"tiny", "sd15-shaped", "sd15-ip-adapter-plus-face"} <= set(known_profiles())
