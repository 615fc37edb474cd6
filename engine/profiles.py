"""Profiles: named, whole engine configurations (base model + personalizers + defaults).

A profile is data. ``resolve_profile(settings)`` picks one and applies the settings' model
overrides; ``engine.loading`` turns it into a pipeline. Plug-ins add their own profiles with
``register_profile`` (InstantBooth registers ``sd15-instantbooth`` and ``tiny-instantbooth``
from ``engine.personalizers.instantbooth`` at import; it is imported on first lookup).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.config import EngineSettings
from engine.errors import UnknownProfile
from kinds import DEFAULT_PERSONALIZER

logger = logging.getLogger(__name__)

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_ADAPTER_REPO = "h94/IP-Adapter"
IP_ADAPTER_PLUS_FACE_WEIGHTS = "ip-adapter-plus-face_sd15.safetensors"

# Starting thresholds of the semantic prompt screen for SD1.5's CLIP ViT-L/14 text encoder
# (pooled output). Chosen, not measured: no real weights can be loaded where this was written.
# docs/semantic-screen.md says how an operator measures them (`avatarbot safety screen-check`).
SD15_SCREEN_THRESHOLDS = {"sexual": 0.03, "minors": 0.03, "always": 0.03}

# Modules that register extra profiles when imported; looked up only when a name is unknown.
_PLUGIN_MODULES = ("engine.personalizers.instantbooth", "engine.flux2")


@dataclass(frozen=True)
class PersonalizerSpec:
    """A personalizer to load with a profile. ``options`` go to its factory;
    ``settings_overrides`` maps an option to the ``EngineSettings`` field that replaces it when
    set (e.g. ``{"repo": "ip_adapter"}``)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    settings_overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """One engine configuration.

    The base model is either loaded (``base_model``: a hub id, a local diffusers folder or a
    single .safetensors/.ckpt file, with ``base_config`` naming the diffusers configs a single
    file needs) or built with random weights by ``random_base(seed)`` (tiny, sd15-shaped).
    """

    name: str
    description: str
    personalizers: tuple[PersonalizerSpec, ...]
    # Which diffusers pipeline the base model is: "stable-diffusion" (SD1.5-class UNet; the
    # personalizers share engine.pipeline.AvatarPipeline) or "flux2" (FLUX.2 [klein]; built by
    # engine.flux2.loading).
    pipeline_family: str = "stable-diffusion"
    base_model: str | None = None
    base_config: str | None = None
    random_base: Callable[[int], dict[str, Any]] | None = None
    default_personalizer: str = DEFAULT_PERSONALIZER
    # Random weights render noise by construction; results say so.
    is_noise: bool = False
    # Pin a device regardless of settings (tiny runs on the CPU: it is for tests and demos).
    device: str | None = None
    default_size: int = 512
    default_steps: int = 25
    # None: the engine setting's (6.0); distilled models (FLUX.2 [klein]) want their own.
    default_guidance: float | None = None
    # None: what the text encoder's tokenizer reads (CLIP: 77 - 2).
    max_prompt_tokens: int | None = None
    # Image sides must be multiples of this (the VAE's factor; FLUX.2 patchifies by 2 more).
    size_multiple: int = 8
    # Intra-op CPU threads (torch.set_num_threads, process-wide; None: torch's default). Tiny
    # models run fastest on one: their ops are too small to split, and waiting OpenMP threads
    # spin against every other process on a shared CPU (measured: 5x slower tests).
    cpu_threads: int | None = None
    # The semantic prompt screen's thresholds for this profile's text encoder, per policy
    # category ("sexual", "minors", "always"): a prompt is refused when its similarity to the
    # category's concepts exceeds its similarity to the neutral ones by this margin
    # (bot/services/semantic_screen.py, docs/semantic-screen.md). A property of the weights;
    # None: no calibration (random weights judge nothing; real ones then fail closed).
    screen_thresholds: Mapping[str, float] | None = None
    # The memory budget of one denoising pass, in output pixels: image-to-image outputs above
    # it (Upscale x2) are denoised in overlapping tiles of at most this size (engine/refine.py).
    max_untiled_pixels: int = 1024 * 1024

    @property
    def personalizer_names(self) -> list[str]:
        return [spec.name for spec in self.personalizers]


_PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> None:
    """Make ``profile`` selectable by name (a later registration replaces an earlier one)."""
    _PROFILES[profile.name] = profile


def known_profiles() -> list[str]:
    _import_plugins()
    return sorted(_PROFILES)


def get_profile(name: str) -> Profile:
    if name not in _PROFILES:
        _import_plugins()
    try:
        return _PROFILES[name]
    except KeyError:
        raise UnknownProfile(name, sorted(_PROFILES)) from None


def resolve_profile(settings: EngineSettings) -> Profile:
    """The profile named by ``settings`` with the settings' model overrides applied."""
    profile = get_profile(settings.profile)
    if settings.base_model:
        profile = dataclasses.replace(
            profile, base_model=settings.base_model, random_base=None, is_noise=False
        )
    if settings.base_model_config:
        profile = dataclasses.replace(profile, base_config=settings.base_model_config)
    specs = []
    for spec in profile.personalizers:
        options = dict(spec.options)
        for option, field_name in spec.settings_overrides.items():
            value = getattr(settings, field_name, None)
            if value is not None:
                options[option] = str(value)
                # Real weights named in settings replace the profile's random ones.
                options.pop("random", None)
        specs.append(dataclasses.replace(spec, options=options))
    return dataclasses.replace(profile, personalizers=tuple(specs))


def default_guidance(settings: EngineSettings, profile: Profile) -> float:
    """The guidance settings name explicitly, else the profile's, else the setting's default
    (distilled models such as FLUX.2 [klein] set their own). Here, not in engine.engine, so
    `avatarbot config` shows it without importing torch for the SD1.5 profiles."""
    if "default_guidance" in settings.model_fields_set or profile.default_guidance is None:
        return settings.default_guidance
    return profile.default_guidance


def _import_plugins() -> None:
    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            logger.debug("profile plug-in %s is not installed", module)


def _tiny_base(seed: int) -> dict[str, Any]:
    from engine.tiny import tiny_components

    return tiny_components(seed)


def _sd15_shaped_base(seed: int) -> dict[str, Any]:
    from engine.sd15_shaped import sd15_shaped_components

    return sd15_shaped_components(seed)


_IP_ADAPTER_OVERRIDES = {
    "repo": "ip_adapter",
    "weight_name": "ip_adapter_weight_name",
    "image_encoder": "image_encoder",
}

register_profile(
    Profile(
        name="tiny",
        description="tiny random-weight models on the CPU: every code path in seconds; "
        "renders noise",
        personalizers=(
            PersonalizerSpec("ip-adapter", {"random": "tiny"}, _IP_ADAPTER_OVERRIDES),
            PersonalizerSpec("none"),
        ),
        random_base=_tiny_base,
        is_noise=True,
        device="cpu",
        default_size=64,
        default_steps=4,
        cpu_threads=1,
        # Small enough that an upscale of the native 64 px takes the tiled path in tests.
        max_untiled_pixels=64 * 64,
    )
)
register_profile(
    Profile(
        name="sd15-shaped",
        description="the real SD1.5 + IP-Adapter Plus architecture with random weights: real "
        "FLOPs for benchmarks, no downloads; renders noise",
        personalizers=(
            PersonalizerSpec("ip-adapter", {"random": "sd15-plus"}, _IP_ADAPTER_OVERRIDES),
            PersonalizerSpec("none"),
        ),
        random_base=_sd15_shaped_base,
        is_noise=True,
    )
)
register_profile(
    Profile(
        name="sd15-ip-adapter-plus-face",
        description="Stable Diffusion 1.5 with IP-Adapter Plus Face (h94/IP-Adapter)",
        personalizers=(
            PersonalizerSpec(
                "ip-adapter",
                {
                    "repo": IP_ADAPTER_REPO,
                    "subfolder": "models",
                    "weight_name": IP_ADAPTER_PLUS_FACE_WEIGHTS,
                    "image_encoder_subfolder": "image_encoder",
                },
                _IP_ADAPTER_OVERRIDES,
            ),
            PersonalizerSpec("none"),
        ),
        base_model=SD15_BASE,
        screen_thresholds=SD15_SCREEN_THRESHOLDS,
    )
)
