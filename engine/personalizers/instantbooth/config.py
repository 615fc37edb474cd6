"""InstantBooth's configuration: what a weights folder's ``config.json`` holds.

The configuration names the frozen models the trainable parts were trained against (base model,
image encoder), every dimension needed to rebuild the trainable parts without them, the
inference knobs (α, β) and the prompt vocabulary (identifier, class nouns). Its canonical JSON
plus the weights' digest make the ``encoder_id`` that keys cached features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "instantbooth.safetensors"


class AdapterSpec(BaseModel):
    """One gated adapter: the UNet transformer block it lives in and that block's shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    block: (
        str  # module path inside the UNet, e.g. "down_blocks.0.attentions.0.transformer_blocks.0"
    )
    dim: int = Field(ge=1)
    heads: int = Field(ge=1)


def _default_class_nouns() -> dict[str, str]:
    # One model per class in the paper (person, cat). "pet" stays generic by default; a model
    # trained only on cats should say "cat" here so prompts match its training captions.
    return {"person": "person", "pet": "pet", "object": "object"}


def _default_synonyms() -> dict[str, list[str]]:
    # Words that name the subject in ordinary captions; the first one found is replaced by
    # "<identifier> <class noun>" (see prompts.py). Singular only: plural captions show several
    # subjects, which the dataset filters drop anyway.
    return {
        "person": [
            "person", "man", "woman", "boy", "girl", "child", "kid", "lady", "gentleman",
            "guy", "baby", "teenager", "bride", "groom",
        ],
        "pet": ["pet", "cat", "kitten", "kitty", "dog", "puppy", "pup"],
        "object": ["object", "thing", "item", "toy"],
    }  # fmt: skip


class InstantBoothConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    # The frozen models these weights were trained against (hub id, folder or file).
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    image_encoder: str = "openai/clip-vit-large-patch14"
    # True when the image encoder was fine-tuned with the heads (the paper trains its image
    # encoders; TrainOptions.train_image_encoder): the weights file then also carries the
    # encoder's weights (``backbone.*``), loaded over the architecture ``image_encoder`` names.
    image_encoder_trained: bool = False
    # Where the concept token comes from: "image_embeds", the backbone's global embedding through
    # a linear layer (the paper's); "patches", its patch tokens mean-pooled, with the CLS token,
    # through a small MLP (encoders.ConceptMLP). A random or generic backbone's global embedding
    # can barely differ between subjects; the pooled patches keep what they look like.
    concept_source: Literal["image_embeds", "patches"] = "image_embeds"
    # Image backbone: input side, hidden size (patch tokens), projection size (global
    # embedding) and the number of tokens of its last hidden state (CLS + patches).
    image_size: int = Field(default=224, ge=8)
    image_hidden_size: int = Field(default=1024, ge=1)
    image_embed_dim: int = Field(default=768, ge=1)
    num_patch_tokens: int = Field(default=257, ge=1)
    # Text side: the text encoder's hidden size = the UNet's cross_attention_dim.
    text_hidden_size: int = Field(default=768, ge=1)
    # Width of the patch features handed to every adapter (each adapter projects to its block).
    patch_dim: int = Field(default=768, ge=1)
    adapters: tuple[AdapterSpec, ...] = ()
    # Inference knobs (paper: α = 0.4 concept-token renormalisation, β = 0.3 balanced sampling).
    alpha: float = Field(default=0.4, ge=0.0, le=4.0)
    beta: float = Field(default=0.3, ge=0.0, le=4.0)
    # Under classifier-free guidance, whether the unconditional half also sees the patch
    # features. False: the unconditional half is the untouched base model (see the docs).
    uncond_patches: bool = False
    identifier: str = "sks"
    class_nouns: dict[str, str] = Field(default_factory=_default_class_nouns)
    class_synonyms: dict[str, list[str]] = Field(default_factory=_default_synonyms)
    # At inference, for a photo with a detected face, the encoders see a square crop of this
    # many face-box sides around the face (None: the whole photo).
    face_crop_scale: float | None = Field(default=2.5, ge=1.0)

    def class_noun(self, kind: str) -> str:
        try:
            return self.class_nouns[kind]
        except KeyError:
            raise ValueError(
                f"InstantBooth config has no class noun for kind {kind!r} "
                f"(known: {', '.join(sorted(self.class_nouns))})"
            ) from None

    def canonical_json(self) -> str:
        # A field added after weights were published stays out while at its default, so their
        # encoder ids (and every avatar's cached features) do not change.
        later = {
            name
            for name in ("image_encoder_trained", "concept_source")
            if getattr(self, name) == type(self).model_fields[name].default
        }
        data = self.model_dump(mode="json", exclude=later)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def encoder_id(self, weights_digest: str) -> str:
        """Names these weights + this config; changes whenever features would change."""
        h = hashlib.sha256(self.canonical_json().encode())
        h.update(weights_digest.encode())
        return f"instantbooth-v{self.format_version}-{h.hexdigest()[:16]}"

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> InstantBoothConfig:
        path = directory / CONFIG_NAME
        data: dict[str, Any] = json.loads(path.read_text())
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: InstantBooth format version {version!r} is not supported "
                f"(this build reads version {FORMAT_VERSION})"
            )
        return cls.model_validate(data)


def adapter_key(block: str) -> str:
    """A module path as a ``ModuleDict`` key (dots are not allowed in module names)."""
    return block.replace(".", "__")
