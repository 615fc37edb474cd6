"""FLUX.2 [klein]: its own diffusers pipeline (``engine.flux2.loading``), random-weight models
(``engine.flux2.components``) and the ``flux2-klein`` personalizer (``engine.flux2.personalizer``,
registered when the registry first asks for it).

Importing this package registers three profiles and stays cheap (no torch, no diffusers):

- ``flux2-klein-4b``: the public ``black-forest-labs/FLUX.2-klein-4B`` weights (Apache-2.0), a
  hub id or a local diffusers folder (``engine.base_model`` overrides the location); bf16 on
  CUDA; 1024 px, 4 steps, guidance 1.0 (the model is step-distilled: guidance is ignored).
- ``tiny-flux2``: random tiny models in the public repository's exact layout, written to the
  engine's work folder and loaded back through the same loader; CPU, offline; renders noise.
- ``flux2-klein-shaped``: the real 4B architecture with random weights made on the device, for
  FLOP-true GPU benchmarks without a download; renders noise.
"""

from __future__ import annotations

from typing import Any

from engine.profiles import PersonalizerSpec, Profile, register_profile

KLEIN_4B_REPO = "black-forest-labs/FLUX.2-klein-4B"
# The prompt window the profiles use (engine.flux2.components.MAX_SEQUENCE_LENGTH) minus the
# chat template's tokens (CHAT_TEMPLATE_MARGIN): kept as literals so importing stays cheap;
# tests check they agree.
MAX_PROMPT_TOKENS = 512 - 32
# Starting thresholds of the semantic prompt screen for klein's Qwen3-4B text encoder (mean of
# the last hidden states): chosen, not measured (see engine.profiles.SD15_SCREEN_THRESHOLDS).
KLEIN_SCREEN_THRESHOLDS = {"sexual": 0.02, "minors": 0.02, "always": 0.02}

_REAL_OPTIONS = {
    "reference_size": 512,
    "max_references": 4,
    "max_sequence_length": 512,
    "text_encoder_out_layers": (9, 18, 27),
}
# The real settings, with 64 px references (16 tokens each on the tiny VAE).
_TINY_OPTIONS = {**_REAL_OPTIONS, "reference_size": 64}


def _tiny_base(seed: int) -> dict[str, Any]:
    from engine.flux2.components import tiny_flux2_components

    return tiny_flux2_components(seed)


def _shaped_base(seed: int) -> dict[str, Any]:
    from engine.flux2.components import shaped_flux2_components

    return shaped_flux2_components(seed)


def _common(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "pipeline_family": "flux2",
        "default_personalizer": "flux2-klein",
        "default_size": 1024,
        "default_steps": 4,
        "default_guidance": 1.0,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
        # The VAE downsamples 8x and the transformer reads 2x2 patches of latents.
        "size_multiple": 16,
    }
    values.update(overrides)
    return values


register_profile(
    Profile(
        name="flux2-klein-4b",
        description="FLUX.2 [klein] 4B (black-forest-labs/FLUX.2-klein-4B, Apache-2.0): "
        "multi-reference rendering from cached reference latents, two subjects per image",
        personalizers=(PersonalizerSpec("flux2-klein", _REAL_OPTIONS),),
        base_model=KLEIN_4B_REPO,
        screen_thresholds=KLEIN_SCREEN_THRESHOLDS,
        **_common(),
    )
)
register_profile(
    Profile(
        name="tiny-flux2",
        description="tiny random-weight FLUX.2 [klein] models on the CPU, in the public "
        "repository's layout: every code path offline in well under a second; renders noise",
        personalizers=(PersonalizerSpec("flux2-klein", _TINY_OPTIONS),),
        random_base=_tiny_base,
        is_noise=True,
        device="cpu",
        cpu_threads=1,
        **_common(default_size=64),
    )
)
register_profile(
    Profile(
        name="flux2-klein-shaped",
        description="the real FLUX.2 [klein] 4B architecture (transformer, VAE, Qwen3-4B) with "
        "random weights made on the device: real FLOPs for benchmarks, no downloads; renders "
        "noise",
        personalizers=(PersonalizerSpec("flux2-klein", _REAL_OPTIONS),),
        random_base=_shaped_base,
        is_noise=True,
        **_common(),
    )
)
