"""InstantBooth (Shi, Xiong, Lin, Jung, arXiv 2304.03411): personalisation without test-time
fine-tuning. A concept token from a trainable head on a frozen CLIP image encoder replaces the
identifier's text embedding; gated adapters in every UNet transformer block attend to the
photos' patch tokens. See docs/instantbooth.md for the method and our implementation choices.

Modules: ``config`` (config.json), ``encoders`` (CLIP side), ``adapters`` (gated self-attention
and its UNet hooks), ``prompts`` (identifier and concept token), ``model`` (the trainable parts,
save/load), ``conditioning`` (a render batch's inputs), ``personalizer`` (the engine plug-in),
``frozen`` (the frozen base models; training itself is research code, avatarbot_research).

Importing this package registers the ``instantbooth`` personalizer and the
``tiny-instantbooth``, ``sd15-shaped-instantbooth``, ``sd15-instantbooth`` and
``toyworld-instantbooth`` profiles; the
personalizer's own modules load only when a profile builds it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from engine.personalizers import register_personalizer
from engine.profiles import PersonalizerSpec, get_profile, register_profile

if TYPE_CHECKING:
    from engine.personalizers.base import LoadContext, Personalizer

# EngineSettings.instantbooth_weights (a trainer's ``OUT/weights`` folder) replaces the
# profile's weights; with it, tiny-instantbooth loads trained tiny weights instead of random.
_OVERRIDES = {"weights": "instantbooth_weights"}
TOYWORLD_BASE = ".toyworld/base"
TOYWORLD_WEIGHTS = ".toyworld/instantbooth/weights"


def _factory(ctx: LoadContext) -> Personalizer:
    from engine.personalizers.instantbooth.personalizer import load_personalizer

    return load_personalizer(ctx)


def _register_profiles() -> None:
    tiny = get_profile("tiny")
    register_profile(
        dataclasses.replace(
            tiny,
            name="tiny-instantbooth",
            description="tiny random-weight models with random InstantBooth heads and adapters "
            "(and the tiny IP-Adapter): every code path offline in seconds; renders noise",
            personalizers=(
                PersonalizerSpec("instantbooth", {"random": "tiny"}, _OVERRIDES),
                *tiny.personalizers,
            ),
            default_personalizer="instantbooth",
        )
    )
    shaped = get_profile("sd15-shaped")
    register_profile(
        dataclasses.replace(
            shaped,
            name="sd15-shaped-instantbooth",
            description="the real SD1.5 architecture with random weights, random InstantBooth "
            "parts on a ViT-L/14-shaped encoder (and the random IP-Adapter Plus): real FLOPs "
            "for benchmarks; renders noise",
            personalizers=(
                PersonalizerSpec("instantbooth", {"random": "sd15"}, _OVERRIDES),
                *shaped.personalizers,
            ),
            default_personalizer="instantbooth",
        )
    )
    sd15 = get_profile("sd15-ip-adapter-plus-face")
    register_profile(
        dataclasses.replace(
            sd15,
            name="sd15-instantbooth",
            description="Stable Diffusion 1.5 with InstantBooth weights from our trainer "
            "(engine.instantbooth_weights) and CLIP ViT-L/14",
            personalizers=(
                PersonalizerSpec("instantbooth", {}, _OVERRIDES),
                PersonalizerSpec("none"),
            ),
            default_personalizer="instantbooth",
        )
    )

    # Issue 15: the toy world's base and InstantBooth weights, trained by `python -m
    # bench.toyworld` into .toyworld/ (run from the repository root, or set base_model and
    # instantbooth_weights to the folders it wrote).
    register_profile(
        dataclasses.replace(
            tiny,
            name="toyworld-instantbooth",
            description="the toy world's small base and InstantBooth weights trained by "
            "bench/toyworld.py (.toyworld/base, .toyworld/instantbooth/weights) on the CPU",
            personalizers=(
                PersonalizerSpec("instantbooth", {"weights": TOYWORLD_WEIGHTS}, _OVERRIDES),
                PersonalizerSpec("none"),
            ),
            base_model=TOYWORLD_BASE,
            random_base=None,
            is_noise=False,
            default_personalizer="instantbooth",
            default_steps=20,
            cpu_threads=None,
        )
    )


register_personalizer("instantbooth", _factory)
_register_profiles()
