"""`avatarbot weights download` through huggingface_hub's real client against a loopback hub
(tests/cli/loopback_hub.py) serving tiny models in the public repositories' layout, with the
files those repositories hold that no profile loads: exactly the profile's files are fetched, a
dropped connection resumes, a second run fetches nothing, and the engine then loads the profile
offline from the cache or from --local-dir folders."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineSettings
from tests.cli.loopback_hub import HubState, loopback_hub, repo_from_folder

REPO = Path(__file__).resolve().parents[2]
PROFILE = "sd15-ip-adapter-plus-face"
BASE = "acme/tiny-sd15"
ADAPTER = "acme/tiny-ip-adapter"
# What the public repositories hold besides the files a profile loads (other formats,
# variants, single-file checkpoints, the safety checker the engine never loads, other models).
BASE_EXTRAS = {
    "v1-5-pruned-emaonly.safetensors": b"checkpoint",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"variant",
    "unet/diffusion_pytorch_model.non_ema.safetensors": b"variant",
    "unet/diffusion_pytorch_model.bin": b"pickle",
    "text_encoder/model.fp16.safetensors": b"variant",
    "safety_checker/config.json": b"{}",
    "safety_checker/model.safetensors": b"checker",
    "README.md": b"# tiny",
}
ADAPTER_EXTRAS = {
    "models/ip-adapter_sd15.safetensors": b"another adapter",
    "models/ip-adapter-plus_sd15.bin": b"pickle",
    "models/image_encoder/pytorch_model.bin": b"pickle",
    "sdxl_models/image_encoder/model.safetensors": b"another encoder",
}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """The tiny SD1.5-layout pipeline and the tiny IP-Adapter Plus, as hub repositories."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor

    from engine.tiny import tiny_components, write_tiny_ip_adapter

    root = tmp_path_factory.mktemp("repos")
    # diffusers' lazily imported pipelines are opaque to mypy.
    pipe: Any = StableDiffusionPipeline(
        **tiny_components(0),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(root / "base"))
    base = repo_from_folder(root / "base")
    index = json.loads(base["model_index.json"])
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]  # as public
    base["model_index.json"] = json.dumps(index).encode()
    weights = write_tiny_ip_adapter(root / "adapter", pipe.unet)
    # Half of it over huggingface_hub's 10 MiB read chunk: a download cut halfway has bytes to
    # resume (the loader reads the image_proj.* and ip_adapter.* keys only).
    state = load_file(str(weights)) | {"padding": torch.zeros(6 * 2**20)}
    save_file(state, str(weights))
    adapter = repo_from_folder(root / "adapter")
    return {BASE: base | BASE_EXTRAS, ADAPTER: adapter | ADAPTER_EXTRAS}


@pytest.fixture
def hub(repos: dict[str, dict[str, bytes]]) -> Iterator[tuple[str, HubState]]:
    state = HubState(repos={name: dict(files) for name, files in repos.items()})
    with loopback_hub(state) as url:
        yield url, state


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    from engine.tiny import TINY_IP_ADAPTER_WEIGHT_NAME

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARBOT_", "HF_"))}
    env.update(
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        AVATARBOT_ENGINE__PROFILE="tiny",
        # The profile's public locations replaced by the loopback hub's tiny repositories.
        AVATARBOT_ENGINE__BASE_MODEL=BASE,
        AVATARBOT_ENGINE__IP_ADAPTER=ADAPTER,
        AVATARBOT_ENGINE__IP_ADAPTER_WEIGHT_NAME=TINY_IP_ADAPTER_WEIGHT_NAME,
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def _avatarbot(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _load_offline(**locations: str) -> str:
    """Load the profile with offline=True (no network at all) and return its encoder ids."""
    from engine.engine import create_engine
    from engine.tiny import TINY_IP_ADAPTER_WEIGHT_NAME

    settings = EngineSettings(
        profile=PROFILE,
        device="cpu",
        offline=True,
        ip_adapter_weight_name=TINY_IP_ADAPTER_WEIGHT_NAME,
        **locations,  # type: ignore[arg-type]
    )

    async def load() -> str:
        engine = await create_engine(settings)
        try:
            return engine.encoder_id_for("ip-adapter")
        finally:
            await engine.aclose()

    return asyncio.run(load())


def _base_files(repos: dict[str, dict[str, bytes]]) -> set[str]:
    """What the profile loads of the base: model_index.json and the components' files."""
    return {name for name in repos[BASE] if name not in BASE_EXTRAS}


def test_downloads_exactly_the_profiles_files_then_loads_offline(
    tmp_path: Path, hub: tuple[str, HubState], repos: dict[str, dict[str, bytes]]
) -> None:
    from engine.tiny import TINY_IP_ADAPTER_WEIGHT_NAME

    url, state = hub
    adapter_weights = f"models/{TINY_IP_ADAPTER_WEIGHT_NAME}"
    state.cut_once.add((ADAPTER, adapter_weights))  # the connection drops halfway, once
    proc = _avatarbot(["weights", "download", PROFILE], _env(tmp_path, url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert state.downloaded_files(BASE) == _base_files(repos)
    assert state.downloaded_files(ADAPTER) == {
        adapter_weights,
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
    }
    # The dropped download resumed from the bytes it had (a Range request), not from zero.
    first, resumed = [r for r in state.downloads(ADAPTER) if r.path.endswith(adapter_weights)]
    assert first.range is None and resumed.range is not None
    assert int(resumed.range.removeprefix("bytes=").rstrip("-")) > 0
    assert f"base model: {BASE}: {len(_base_files(repos))} files" in proc.stdout
    assert f"profile {PROFILE}: weights ready" in proc.stdout

    # Everything is there: a second run fetches no file again.
    before = len(state.downloads(BASE)) + len(state.downloads(ADAPTER))
    again = _avatarbot(["weights", "download", PROFILE], _env(tmp_path, url))
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(state.downloads(BASE)) + len(state.downloads(ADAPTER)) == before

    requests = len(state.requests)
    encoder_id = _load_offline(
        base_model=BASE, ip_adapter=ADAPTER, cache_dir=str(tmp_path / "hf" / "hub")
    )
    assert encoder_id.startswith("ip-adapter-plus:")
    assert len(state.requests) == requests  # offline: the hub heard nothing


def test_local_dir_holds_the_repositories_and_names_the_settings(
    tmp_path: Path, hub: tuple[str, HubState], repos: dict[str, dict[str, bytes]]
) -> None:
    url, _ = hub
    target = tmp_path / "models"
    proc = _avatarbot(
        ["weights", "download", PROFILE, "--local-dir", str(target)], _env(tmp_path, url)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base, adapter = target / BASE, target / ADAPTER
    assert f"set AVATARBOT_ENGINE__BASE_MODEL={base}" in proc.stdout
    assert f"set AVATARBOT_ENGINE__IP_ADAPTER={adapter}" in proc.stdout
    assert all((base / name).read_bytes() == repos[BASE][name] for name in _base_files(repos))
    assert not (base / "v1-5-pruned-emaonly.safetensors").exists()
    assert not any((tmp_path / "hf").glob("hub/models--*/snapshots/*/*"))
    assert _load_offline(base_model=str(base), ip_adapter=str(adapter)).startswith(
        "ip-adapter-plus:"
    )


def test_a_single_checkpoint_file_gets_only_its_configs(
    tmp_path: Path, hub: tuple[str, HubState], repos: dict[str, dict[str, bytes]]
) -> None:
    url, state = hub
    checkpoint = tmp_path / "sd15.safetensors"
    env = _env(
        tmp_path,
        url,
        AVATARBOT_ENGINE__BASE_MODEL=str(checkpoint),
        AVATARBOT_ENGINE__BASE_MODEL_CONFIG=BASE,
    )
    proc = _avatarbot(["weights", "download", PROFILE], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"base model: local {checkpoint}" in proc.stdout
    configs = {n for n in _base_files(repos) if not n.endswith(".safetensors")}
    assert state.downloaded_files(BASE) == configs


@pytest.mark.parametrize(
    "offline", [{"HF_HUB_OFFLINE": "1"}, {"AVATARBOT_ENGINE__OFFLINE": "true"}], ids=str
)
def test_refuses_offline_in_one_line(
    tmp_path: Path, hub: tuple[str, HubState], offline: dict[str, str]
) -> None:
    url, state = hub
    proc = _avatarbot(["weights", "download", PROFILE], _env(tmp_path, url, **offline))
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert "offline" in line and "Traceback" not in proc.stderr
    assert state.requests == []


def test_random_weights_need_nothing(tmp_path: Path, hub: tuple[str, HubState]) -> None:
    url, state = hub
    env = _env(tmp_path, url)
    for name in ("BASE_MODEL", "IP_ADAPTER", "IP_ADAPTER_WEIGHT_NAME"):
        del env[f"AVATARBOT_ENGINE__{name}"]  # they would give tiny real weights to load
    proc = _avatarbot(["weights", "download", "tiny"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "profile tiny: random weights, nothing to download"
    assert state.requests == []


def test_missing_weights_online_are_one_short_line(
    tmp_path: Path, hub: tuple[str, HubState]
) -> None:
    """Issue 24, point 8: the hub reachable but the base model absent (not cached, not
    downloadable): one line naming the command, not 683 characters cut mid-word, twice."""
    url, _ = hub
    env = _env(
        tmp_path,
        url,
        AVATARBOT_ENGINE__PROFILE=PROFILE,
        AVATARBOT_ENGINE__BASE_MODEL="acme/absent",
        AVATARBOT_OPS__LISTEN="off",
    )
    proc = _avatarbot(["worker"], env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if "acme/absent" in line]
    assert line == (
        "avatarbot: engine: missing base model acme/absent (not fully in the Hugging Face "
        f"cache); run `avatarbot weights download {PROFILE}`"
    )
