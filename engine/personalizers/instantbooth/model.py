"""InstantBooth's trainable parts as one module: the two heads and the gated adapters.

Only these are saved (``instantbooth.safetensors``) beside ``config.json``; the frozen base model
and image encoder are named by the config and loaded by the profile. When the image encoder was
fine-tuned too (``config.image_encoder_trained``), it is a submodule (``backbone``) and its
weights are saved with the rest, over the architecture the config names. ``encoder_id`` derives from
the config and the weights' digest, so new weights make old cached features stale.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.personalizers.instantbooth.adapters import (
    AdapterHooks,
    GatedSelfAttention,
    adapter_specs,
)
from engine.personalizers.instantbooth.config import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    InstantBoothConfig,
    adapter_key,
)
from engine.personalizers.instantbooth.encoders import ConceptMLP, Head

logger = logging.getLogger(__name__)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of tensors' names, dtypes, shapes and bytes, independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class InstantBoothModel(nn.Module):
    backbone: nn.Module | None

    def __init__(self, config: InstantBoothConfig, backbone: nn.Module | None = None) -> None:
        """``backbone``: the image encoder, used (and registered, so trained and saved) only
        when ``config.image_encoder_trained``."""
        super().__init__()
        if not config.adapters:
            raise ValueError("InstantBooth config lists no adapters (build it with for_unet)")
        if config.image_encoder_trained and backbone is None:
            raise ValueError(
                "these InstantBooth weights include a fine-tuned image encoder: pass its "
                f"architecture ({config.image_encoder}) as backbone"
            )
        self.config = config
        self.backbone = backbone if config.image_encoder_trained else None
        self.concept: Head | ConceptMLP = (
            ConceptMLP(config.image_hidden_size, config.text_hidden_size)
            if config.concept_source == "patches"
            else Head(config.image_embed_dim, config.text_hidden_size)
        )
        self.patch = Head(config.image_hidden_size, config.patch_dim)
        self.adapters = nn.ModuleDict(
            {
                adapter_key(spec.block): GatedSelfAttention(spec.dim, spec.heads, config.patch_dim)
                for spec in config.adapters
            }
        )
        self._digest: str | None = None

    @classmethod
    def for_unet(cls, unet: Any, vision_model: Any, **overrides: object) -> InstantBoothModel:
        """Fresh (randomly initialised, gates at 0) parts sized for these frozen models."""
        vision = vision_model.config
        patches = (vision.image_size // vision.patch_size) ** 2 + 1
        fields: dict[str, object] = {
            "image_size": vision.image_size,
            "image_hidden_size": vision.hidden_size,
            "image_embed_dim": vision.projection_dim,
            "num_patch_tokens": patches,
            "text_hidden_size": unet.config.cross_attention_dim,
            "patch_dim": unet.config.cross_attention_dim,
            "adapters": tuple(adapter_specs(unet)),
        }
        fields.update(overrides)
        # The vision model becomes a trainable part only if the overrides ask for it.
        return cls(InstantBoothConfig.model_validate(fields), vision_model)

    # --- identity -------------------------------------------------------------------------
    @property
    def weights_digest(self) -> str:
        """Digest of the weights as loaded or last saved (computed lazily otherwise)."""
        if self._digest is None:
            self._digest = state_digest(self.state_dict())
        return self._digest

    def invalidate_digest(self) -> None:
        """Call after changing weights in place (training) so ``encoder_id`` follows."""
        self._digest = None

    @property
    def encoder_id(self) -> str:
        return self.config.encoder_id(self.weights_digest)

    # --- persistence ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.config.save(directory)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        self._digest = state_digest(state)
        logger.info("saved InstantBooth weights to %s (%s)", directory, self.encoder_id)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, backbone: nn.Module | None = None
    ) -> InstantBoothModel:
        """``backbone``: the image encoder the config names; its weights are replaced by the
        fine-tuned ones when the config says it was trained (ignored otherwise)."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} is missing")
        config = InstantBoothConfig.load(directory)
        model = cls(config, backbone)
        state = load_file(str(directory / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_NAME} does not match its config.json "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        model._digest = state_digest(state)
        return model

    # --- use ------------------------------------------------------------------------------
    def install(self, unet: nn.Module) -> AdapterHooks:
        """Hook the adapters into ``unet`` (inactive until a state is set)."""
        blocks = {spec.block for spec in adapter_specs(unet)}
        wanted = {spec.block for spec in self.config.adapters}
        if blocks != wanted:
            raise ValueError(
                "InstantBooth weights were made for another UNet layout "
                f"({len(wanted)} adapters, the UNet has {len(blocks)} transformer blocks)"
            )
        adapters = {
            spec.block: cast(GatedSelfAttention, self.adapters[adapter_key(spec.block)])
            for spec in self.config.adapters
        }
        return AdapterHooks(unet, adapters)

    def encode_pixels(
        self, image_encoder: nn.Module, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: concept vector [N, D] and patch tokens [N, P, D'] from CLIP-normalised
        pixels. The image encoder (a CLIPVisionModelWithProjection) runs without gradients; a
        fine-tuned ``backbone`` stands in for ``image_encoder``."""
        encoder = self.backbone if self.backbone is not None else image_encoder
        param = next(encoder.parameters())
        with torch.no_grad():
            out = encoder(pixel_values=pixels.to(param.device, param.dtype))
        hidden = out.last_hidden_state
        return self.concepts(out.image_embeds, hidden), self.patch(hidden)

    def concepts(self, image_embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One concept vector per photo [N, D] from the backbone's outputs (global embedding
        [N, E], last hidden state [N, P, H]), from the source the config names."""
        if self.config.concept_source == "patches":
            return self.concept(hidden)
        return self.concept(image_embeds)

    def trainable_groups(
        self,
    ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
        """(heads, adapters, image encoder): each trains at its own learning rate. The
        last is empty unless the image encoder is fine-tuned."""
        heads = [*self.concept.parameters(), *self.patch.parameters()]
        backbone = list(self.backbone.parameters()) if self.backbone is not None else []
        return heads, list(self.adapters.parameters()), backbone

    def gates(self) -> dict[str, float]:
        return {
            key: float(torch.tanh(cast(GatedSelfAttention, module).gate.detach()).item())
            for key, module in self.adapters.items()
        }


def concept_features(
    concepts: torch.Tensor, patches: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's pooling over photos: concept vectors averaged, patch tokens concatenated.

    concepts [N, D] → [D]; patches [N, P, D'] → [N·P, D'] (photo order kept).
    """
    return concepts.mean(dim=0), patches.reshape(-1, patches.shape[-1])
