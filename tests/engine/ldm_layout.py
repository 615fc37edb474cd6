"""Write a diffusers Stable Diffusion pipeline as ONE checkpoint in the original (LDM) layout,
the format of the single .safetensors files people download, so tests can load the tiny
models through ``from_single_file``.

The inverse of diffusers' ``convert_ldm_*_checkpoint`` (the key scheme of diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py``), generalised from SD1.5's four
blocks of two layers to any number of blocks and layers per block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_RESNET_PARTS = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    blocks = len(config.block_out_channels)
    per = config.layers_per_block
    prefixes: list[tuple[str, str]] = [
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(blocks):
        for j in range(per):
            prefixes.append(
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i * (per + 1) + j + 1}.0.")
            )
            prefixes.append(
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i * (per + 1) + j + 1}.1.")
            )
        if i < blocks - 1:
            prefixes.append(
                (
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    f"input_blocks.{(i + 1) * (per + 1)}.0.op.",
                )
            )
        for j in range(per + 1):
            prefixes.append(
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (per + 1) + j}.0.")
            )
            prefixes.append(
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (per + 1) + j}.1.")
            )
        if i < blocks - 1:
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            index = 2 if has_attention else 1
            prefixes.append(
                (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per + 1) + per}.{index}.")
            )
    out = {}
    for key, value in state.items():
        new = key
        for hf, ldm in _UNET_TOP.items():
            if new.startswith(hf):
                new = ldm + new[len(hf) :]
        for hf, ldm in prefixes:
            if new.startswith(hf):
                rest = new[len(hf) :]
                if "resnets" in hf:
                    for hf_part, ldm_part in _RESNET_PARTS:
                        if rest.startswith(hf_part + "."):
                            rest = ldm_part + rest[len(hf_part) :]
                new = ldm + rest
                break
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    blocks = len(config.block_out_channels)
    per = config.layers_per_block
    prefixes: list[tuple[str, str]] = []
    for side in ("encoder", "decoder"):
        prefixes.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."))
        prefixes.append((f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."))
        prefixes.append((f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."))
        prefixes.append((f"{side}.conv_norm_out.", f"{side}.norm_out."))
    for i in range(blocks):
        for j in range(per):
            prefixes.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
            )
        for j in range(per + 1):
            prefixes.append(
                (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{blocks - 1 - i}.block.{j}.")
            )
        if i < blocks - 1:
            prefixes.append(
                (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            )
            prefixes.append(
                (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.")
            )
    attention = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    out = {}
    for key, value in state.items():
        new = key
        for hf, ldm in prefixes:
            if new.startswith(hf):
                rest = new[len(hf) :]
                if "attn_1" in ldm:
                    for hf_part, ldm_part in attention.items():
                        if rest.startswith(hf_part):
                            rest = ldm_part + rest[len(hf_part) :]
                            if rest.endswith("weight") and value.ndim == 2:
                                value = value.reshape(*value.shape, 1, 1)  # linear → 1x1 conv
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                new = ldm + rest
                break
        out["first_stage_model." + new] = value
    return out


def save_single_file(pipe: Any, path: Path) -> Path:
    """UNet + VAE + CLIP text encoder of ``pipe`` in one LDM-layout .safetensors file."""
    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers 5 drops the ``text_model.`` level from CLIPTextModel's state dict;
        # original checkpoints have it.
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def save_configs_only(pipe: Any, folder: Path) -> Path:
    """The pipeline's diffusers folder without any weights: what ``from_single_file`` needs
    (``config=``) to rebuild the models a single checkpoint holds."""
    pipe.save_pretrained(folder)
    for weights in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        weights.unlink()
    return folder
