"""Live previews through an operator's tiny VAE decoder (``engine.preview_decoder``).

A random-weight ``AutoencoderTiny`` saved with ``save_pretrained`` is the layout TAESD ships
(config.json + diffusion_pytorch_model.safetensors); the tiny profile's engine loads it
through the real loader and its previews come from it, per sample, unaffected by batch
mates, never for padding. Operator mistakes end in one ``MissingWeights`` naming the setting,
and in one line on the command line.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

from engine import DiffusionEngine, EngineSettings, MissingWeights, create_engine
from engine.loading import load_preview_decoder
from engine.preview import PREVIEW_MAX_SIDE, DecoderPreview, previewer_for
from engine.profiles import get_profile
from engine.tiny import tiny_components
from engine.weights import HubSource, weights_plan
from tests.engine.test_preview import Recorder, _req, assert_alone_equals_batched, record_previews

REPO = Path(__file__).resolve().parents[2]


def tiny_decoder(latent_channels: int = 4) -> AutoencoderTiny:
    """TAESD's architecture shrunk: one block per stage, 8 channels, one 2x upsampling
    (the tiny profile's VAE also halves)."""
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=latent_channels,
    ).eval()


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("taesd-tiny")
    tiny_decoder().save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    return folder


@pytest.fixture(scope="module")
def decoder_engine(decoder_dir: Path) -> Iterator[DiffusionEngine]:
    settings = EngineSettings(
        profile="tiny", max_batch=8, gather_window_ms=60, seed=0, preview_decoder=str(decoder_dir)
    )
    engine = asyncio.run(create_engine(settings))
    yield engine
    asyncio.run(engine.aclose())


def _load(location: str, latent_channels: int = 4) -> AutoencoderTiny:
    return load_preview_decoder(
        location,
        latent_channels=latent_channels,
        device=torch.device("cpu"),
        dtype=torch.float32,
        offline=True,
        cache_dir=None,
    )


def test_decoder_previews_decode_the_unet_latents_at_a_small_size(decoder_dir: Path) -> None:
    decoder = _load(str(decoder_dir))
    preview = DecoderPreview(decoder)
    latents = torch.randn(2, 4, 12, 20, generator=torch.Generator().manual_seed(0))
    images = preview.images(latents)
    assert [im.size for im in images] == [(40, 24)] * 2  # the decoder doubles: (w, h)
    # TAESD reads the UNet's latents as they are (its scaling factor is 1) and returns RGB
    # in [-1, 1].
    assert decoder.config["scaling_factor"] == 1.0
    with torch.inference_mode():
        rgb = decoder.decode(latents[1:]).sample.clamp(-1, 1)
    expected = ((rgb + 1) / 2 * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(images[1], dtype=np.float64) - expected).max() <= 1.0
    # Large latents are shrunk before decoding: the preview is at most PREVIEW_MAX_SIDE.
    (big,) = preview.images(torch.randn(1, 4, 100, 40))
    assert big.size == (52, 128)
    assert max(big.size) <= PREVIEW_MAX_SIDE


async def test_engine_previews_come_from_the_decoder_per_sample(
    decoder_engine: DiffusionEngine,
) -> None:
    assert isinstance(previewer_for(decoder_engine.model.pipe), DecoderPreview)
    target = _req(1)
    alone, batched = Recorder(1), Recorder(2)
    await record_previews(
        decoder_engine, [([target], alone), ([_req(2, prompt="a dog"), target], batched)]
    )
    assert_alone_equals_batched(alone, batched)
    # Decoded: the image's own size (the projection's would be the 32 x 48 latent cells).
    assert all(im.size == (64, 96) for p in batched.previews for im in p.values())


def test_a_missing_folder_names_the_setting_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(MissingWeights) as info:
        _load(str(tmp_path / "absent"))
    message = str(info.value)
    assert "preview decoder" in message and "no such path" in message
    assert "engine.preview_decoder" in message and "AutoencoderTiny layout" in message


def test_another_models_folder_is_refused(tmp_path: Path) -> None:
    tiny_components(0)["vae"].save_pretrained(tmp_path / "kl")  # a full VAE, not a tiny one
    with pytest.raises(MissingWeights, match="describes AutoencoderKL, not an AutoencoderTiny"):
        _load(str(tmp_path / "kl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeights, match=r"config\.json"):
        _load(str(tmp_path / "empty"))
    tiny_decoder().save_pretrained(tmp_path / "no-weights")
    (tmp_path / "no-weights" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingWeights, match=r"engine\.preview_decoder"):
        _load(str(tmp_path / "no-weights"))


def test_a_decoder_for_other_latents_is_refused(tmp_path: Path) -> None:
    tiny_decoder(latent_channels=16).save_pretrained(tmp_path / "wide")
    with pytest.raises(MissingWeights, match="decodes 16-channel latents, this model makes 4"):
        _load(str(tmp_path / "wide"))


def test_weights_download_fetches_a_hub_decoder_and_notes_a_local_one() -> None:
    sd15 = get_profile("sd15-ip-adapter-plus-face")
    plan = weights_plan(sd15, preview_decoder="madebyollin/taesd")
    assert plan.sources[-1] == HubSource(
        "preview decoder",
        "madebyollin/taesd",
        "engine.preview_decoder",
        "files",
        ("config.json", "diffusion_pytorch_model.safetensors"),
    )
    local = weights_plan(sd15, preview_decoder="/srv/taesd")
    assert local.sources == weights_plan(sd15).sources
    assert any("/srv/taesd" in note for note in local.notes)
    tiny = weights_plan(get_profile("tiny"), preview_decoder="madebyollin/taesd")
    assert [s.repo for s in tiny.sources] == ["madebyollin/taesd"]


def test_the_worker_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env.update(
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        AVATARBOT_ENGINE__PROFILE="tiny",
        AVATARBOT_ENGINE__OFFLINE="true",
        AVATARBOT_ENGINE__PREVIEW_DECODER=str(tmp_path / "absent"),
        AVATARBOT_OPS__LISTEN="off",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "bot", "worker", "--allow-noise"],  # tiny: random weights
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # Before it: the log's INFO lines (migrations, the base model loading).
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("avatarbot: engine: missing preview decoder"), result.stderr
    assert "engine.preview_decoder" in last, result.stderr
