"""Building the FLUX.2 [klein] pipeline of a profile: real weights (a hub id or a local
diffusers folder in the public repository's layout) or random ones.

Every path ends in the same ``from_pretrained`` of a folder laid out like
``black-forest-labs/FLUX.2-klein-4B`` (``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), except the FLOP-true ``flux2-klein-shaped``
profile, whose 8 B random parameters are made directly on the device (see
``engine.flux2.components``). The result is an ``AvatarFlux2Pipeline``: the stock
``Flux2KleinPipeline`` that also takes reference latents already encoded, one set per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from engine.errors import MissingWeights
from engine.flux2 import KLEIN_4B_REPO
from engine.loading import (
    hub_offline,
    is_single_file,
    load_or_explain,
    looks_local,
    quiet_progress_bars,
)
from engine.pipeline import make_pipeline_batch_invariant

if TYPE_CHECKING:
    from engine.profiles import Profile

    # diffusers' lazily imported pipelines are opaque to mypy: type them as Any.
    Flux2KleinPipeline = Any
else:
    from diffusers import Flux2KleinPipeline

logger = logging.getLogger(__name__)

WHAT = "FLUX.2 [klein] base model"
_SETTING = "engine.base_model"
# diffusers only takes reference *images* (PIL, at least 64 px a side, checked and resized
# before they reach ``prepare_image_latents``); a stand-in image opens that code path when the
# references come already encoded. It is never encoded: see ``prepare_image_latents``.
_STAND_IN_SIDE = 64


class AvatarFlux2Pipeline(Flux2KleinPipeline):
    """``Flux2KleinPipeline``, except that ``prepare_image_latents`` returns reference latents
    set with ``cached_references`` instead of VAE-encoding the call's images.

    The stock pipeline encodes its ``image=`` references on every call and gives every sample
    the same ones; avatars' references are encoded once (``ConceptFeatures``) and differ from
    one sample to the next in a batch of several users' requests. Everything else (prompt
    encoding, timesteps, the denoising loop, unpacking) is diffusers' own code.
    """

    _cached_references: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextmanager
    def cached_references(self, latents: torch.Tensor, ids: torch.Tensor) -> Iterator[list[Any]]:
        """Within the context, calls made with the yielded ``image`` list use ``latents``
        (B, tokens, channels: packed reference tokens, one row per sample) and ``ids``
        (1, tokens, 4: their positions, the same for every sample) as their references."""
        self._cached_references = (latents, ids)
        try:
            yield [Image.new("RGB", (_STAND_IN_SIDE, _STAND_IN_SIDE))]
        finally:
            self._cached_references = None

    def prepare_image_latents(
        self,
        images: list[torch.Tensor],
        batch_size: int,
        generator: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached_references is None:
            return super().prepare_image_latents(images, batch_size, generator, device, dtype)
        latents, ids = self._cached_references
        if latents.shape[0] != batch_size:
            raise ValueError(f"reference latents have {latents.shape[0]} rows, need {batch_size}")
        return latents.to(device=device, dtype=dtype), ids.to(device).expand(batch_size, -1, -1)


def build_flux2_pipeline(
    profile: Profile,
    *,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    cache_dir: str | None,
    workdir: str,
    batch_invariant: bool,
) -> AvatarFlux2Pipeline:
    """The profile's FLUX.2 [klein] pipeline on ``device`` in ``dtype``, progress bar off.

    Raises ``MissingWeights`` (naming ``hf download black-forest-labs/FLUX.2-klein-4B``) when
    real weights are not where the profile or ``engine.base_model`` says.
    """
    if device.type == "cuda" and dtype == torch.float16:
        logger.warning("FLUX.2 [klein] is published in bfloat16; float16 may overflow")
    if profile.random_base is not None:
        components = profile.random_base(seed)
        from engine.flux2.components import is_meta, materialize

        if is_meta(components):
            pipe = _assemble(materialize(components, device=device, dtype=dtype, seed=seed))
        else:
            # Saved in the public repository's layout. Bars for writing and reading back our
            # own random weights say nothing.
            folder = Path(workdir) / profile.name
            with quiet_progress_bars():
                Flux2KleinPipeline(**components).save_pretrained(str(folder))
                logger.debug("wrote a random FLUX.2 [klein] pipeline to %s", folder)
                # Written by us a moment ago: always local, never the hub.
                pipe = load_flux2_folder(str(folder), dtype=dtype, offline=True, cache_dir=None)
    else:
        assert profile.base_model is not None, f"profile {profile.name} names no base model"
        pipe = load_flux2_folder(
            profile.base_model, dtype=dtype, offline=offline, cache_dir=cache_dir
        )
    pipe.to(device)
    if batch_invariant:
        make_pipeline_batch_invariant(pipe)
    billions = parameter_count([pipe.transformer, pipe.text_encoder, pipe.vae]) / 1e9
    logger.info("FLUX.2 [klein] pipeline for %s: %.2f B parameters", profile.name, billions)
    return pipe


def load_flux2_folder(
    location: str, *, dtype: torch.dtype, offline: bool, cache_dir: str | None
) -> AvatarFlux2Pipeline:
    """A pipeline from a hub id or a local folder in the public repository's layout."""
    local = looks_local(location)
    if is_single_file(location):
        raise MissingWeights(
            WHAT,
            location,
            f"FLUX.2 [klein] loads from a diffusers folder (model_index.json, transformer/, "
            f"vae/, text_encoder/, tokenizer/, scheduler/) or a hub id, not from one checkpoint "
            f"file: `hf download {KLEIN_4B_REPO} --local-dir <folder>` gets one.",
            reason="a single checkpoint file",
        )
    source = str(Path(location).expanduser()) if local else location

    def load() -> Any:
        return Flux2KleinPipeline.from_pretrained(
            source,
            dtype=dtype,
            local_files_only=offline or local,
            cache_dir=cache_dir,
        )

    try:
        with hub_offline(offline):
            pipe = load_or_explain(WHAT, location, load, what_setting=_SETTING)
    except MissingWeights as exc:
        how = _how(location, exc.how)
        raise MissingWeights(exc.what, exc.location, how, reason=exc.reason) from exc
    # ``components`` leaves out the pipeline's settings: its flag ``is_distilled`` goes too.
    return _assemble({**pipe.components, "is_distilled": bool(pipe.config.is_distilled)})


def _how(location: str, how: str) -> str:
    """The fix for a missing location, naming the command that fetches the public weights
    (into the named folder when the location is a path)."""
    if not looks_local(location):
        return how  # load_or_explain's advice: `hf download <id>`, offline mode, a local copy
    return (
        f"Check the path, or download FLUX.2 [klein] 4B (Apache-2.0) there with "
        f"`hf download {KLEIN_4B_REPO} --local-dir {location}`, or point {_SETTING} at another "
        "diffusers folder in that layout or a hub id."
    )


def _assemble(components: dict[str, Any]) -> Any:
    """An ``AvatarFlux2Pipeline`` of these modules (and ``is_distilled``), progress bar off."""
    pipe = AvatarFlux2Pipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_count(modules: Sequence[torch.nn.Module]) -> int:
    """Parameters of ``modules`` (shared ones once), for logs and the shaped profile's test."""
    unique = {id(param): param for module in modules for param in module.parameters()}
    return sum(param.numel() for param in unique.values())
