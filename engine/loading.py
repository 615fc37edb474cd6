"""Loading models: device and dtype, and model locations that may be a hub id, a local
diffusers folder or a single checkpoint file. Every failure to find weights becomes one
``MissingWeights`` that names what is missing and how to get it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from engine.errors import MissingWeights, first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def pick_device(setting: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; anything else is taken as a torch device."""
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` → bf16 on CUDA that supports it, fp16 on other CUDA and MPS, fp32 on CPU."""
    if setting != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            setting
        ]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def is_offline(offline_setting: bool) -> bool:
    """The ``offline`` setting or huggingface_hub's own switch."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return offline_setting or env in {"1", "true", "yes", "on"}


def looks_local(location: str) -> bool:
    """A location is a local path when it exists or is written like one (a hub id is
    ``owner/name``: no leading ``/``, ``.``, ``~``, at most one slash, no file suffix)."""
    if Path(location).expanduser().exists():
        return True
    if location.startswith(("/", ".", "~")) or "\\" in location:
        return True
    return location.count("/") != 1 or location.lower().endswith(SINGLE_FILE_SUFFIXES)


def is_single_file(location: str) -> bool:
    return location.lower().endswith(SINGLE_FILE_SUFFIXES)


ANY_LAYOUT = "an existing local diffusers folder, a single .safetensors/.ckpt file, or a hub id"


def how_to_get(
    location: str, *, what_setting: str, files: tuple[str, ...] = (), layout: str = ANY_LAYOUT
) -> str:
    """The sentence that tells an operator how to make ``location`` available (``layout``:
    what a local copy may be)."""
    if looks_local(location):
        return f"Check the path, or point {what_setting} at {layout}."
    download = f"hf download {location}" + "".join(f" {f}" for f in files)
    return (
        f"Download it once with `{download}` (it lands in the Hugging Face cache), allow "
        f"network access (offline mode is on when engine.offline or HF_HUB_OFFLINE=1), or set "
        f"{what_setting} to a local copy."
    )


def load_or_explain(
    what: str,
    location: str,
    load: Callable[[], T],
    *,
    what_setting: str,
    files: tuple[str, ...] = (),
    layout: str = ANY_LAYOUT,
) -> T:
    """Run ``load``; turn the many ways weights can be missing into one ``MissingWeights``."""
    local = Path(location).expanduser()
    if looks_local(location) and not local.exists():
        how = how_to_get(location, what_setting=what_setting, layout=layout)
        raise MissingWeights(what, location, how, reason="no such path")
    try:
        return load()
    except MissingWeights:
        raise
    except (OSError, ValueError) as exc:
        # diffusers/transformers/huggingface_hub raise OSError (EnvironmentError) or
        # ValueError subclasses for missing repos, files, configs and offline cache misses.
        logger.debug("loading %s from %s failed", what, location, exc_info=True)
        raise MissingWeights(
            what,
            location,
            how_to_get(location, what_setting=what_setting, files=files, layout=layout),
            reason=first_line(exc),
        ) from exc


@contextmanager
def quiet_progress_bars(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' and diffusers' progress bars for the duration (restored after):
    random-weight profiles write weights to a temp folder and read them back, and progress
    bars for that say nothing."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [
        module.enable_progress_bar
        for module in (transformers_logging, diffusers_logging)
        if module.is_progress_bar_enabled()
    ]
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for enable in restore:
            enable()


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub refuse network access while loading (it reads the flag late)."""
    if not offline:
        yield
        return
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def load_base_pipeline(
    location: str,
    *,
    config: str | None,
    dtype: torch.dtype,
    offline: bool,
    cache_dir: str | None,
) -> Any:
    """A ``StableDiffusionPipeline`` from a hub id, a local diffusers folder or one file.

    The safety checker is not loaded (output safety is the engine's own check).
    """
    from diffusers import StableDiffusionPipeline

    common: dict[str, Any] = {
        "torch_dtype": dtype,
        "safety_checker": None,
        "requires_safety_checker": False,
        "cache_dir": cache_dir,
        "local_files_only": offline or looks_local(location),
    }
    if is_single_file(location):
        path = str(Path(location).expanduser())
        if config is not None and looks_local(config) and not Path(config).expanduser().exists():
            raise MissingWeights(
                "base model configs",
                config,
                "Point engine.base_model_config at the diffusers folder (or hub id) whose "
                "configs describe the checkpoint.",
                reason="no such path",
            )
        if config is not None:
            common["config"] = config
            common["local_files_only"] = offline or looks_local(config)

        def load() -> Any:
            return StableDiffusionPipeline.from_single_file(path, **common)

        what = "base model checkpoint" if config is None else f"base model (configs: {config})"
    else:
        source = str(Path(location).expanduser()) if looks_local(location) else location

        def load() -> Any:
            return StableDiffusionPipeline.from_pretrained(source, **common)

        what = "base model"
    with hub_offline(offline):
        return load_or_explain(what, location, load, what_setting="engine.base_model")


PREVIEW_DECODER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def load_preview_decoder(
    location: str,
    *,
    latent_channels: int,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    cache_dir: str | None,
) -> Any:
    """An ``AutoencoderTiny`` (TAESD's layout) from a hub id or a local folder, on ``device``
    in ``dtype``, checked to decode ``latent_channels``-channel latents."""
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    source = str(Path(location).expanduser()) if looks_local(location) else location
    common: dict[str, Any] = {
        "cache_dir": cache_dir,
        "local_files_only": offline or looks_local(location),
    }

    def load() -> Any:
        # Another model's folder (an AutoencoderKL's, say) would load with random weights
        # and a warning: refuse it by its config's class first.
        config = AutoencoderTiny.load_config(source, **common)
        kind = config.get("_class_name") if isinstance(config, dict) else None
        if kind != "AutoencoderTiny":
            raise ValueError(
                f"its config.json describes {kind or 'no model class'}, not an AutoencoderTiny"
            )
        return AutoencoderTiny.from_pretrained(source, torch_dtype=dtype, **common)

    with hub_offline(offline):
        decoder = load_or_explain(
            "preview decoder",
            location,
            load,
            what_setting="engine.preview_decoder",
            files=PREVIEW_DECODER_FILES,
            layout="a folder in diffusers' AutoencoderTiny layout (config.json and "
            "diffusion_pytorch_model.safetensors) or a hub id such as madebyollin/taesd",
        )
    channels = int(decoder.config.latent_channels)
    if channels != latent_channels:
        raise MissingWeights(
            "preview decoder",
            location,
            "Point engine.preview_decoder at the tiny decoder of this model's VAE "
            "(madebyollin/taesd for SD1.x), or unset it.",
            reason=f"it decodes {channels}-channel latents, this model makes {latent_channels}",
        )
    return decoder.to(device).eval()


def stable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without what says where it was loaded from or by which library version
    (``_name_or_path``, ``transformers_version``...): the same model must keep its id."""
    return {k: v for k, v in config.items() if not k.startswith("_") and not k.endswith("_version")}


def encoder_fingerprint(module: torch.nn.Module, config: Mapping[str, Any]) -> str:
    """A short, stable id of an encoder's weights and everything else its features depend on
    (``config``: preprocessing, crop policy, an encoding version), as canonical JSON.

    Samples every parameter (shape, dtype-independent values rounded to bfloat16, first and
    last elements) instead of hashing gigabytes: the same weights give the same id whether
    they came from the hub, a folder or a single file, in fp32 or half precision.
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:]]).to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
