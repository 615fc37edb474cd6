"""Tiny random-weight models for the ``tiny`` profile and the tests.

The same classes and configs as Stable Diffusion 1.5 + IP-Adapter Plus, shrunk until a render
takes a fraction of a second on a CPU. Weights are random (seeded), so images are noise: the
point is that every code path (loaders, processors, batching) is the real one. Hub downloads
are impossible here, so the CLIP tokenizer is built from a hand-written byte-level vocabulary.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler

# The models' own modules: to mypy, diffusers' top-level names are its no-torch dummies.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

logger = logging.getLogger(__name__)

TINY_CROSS_ATTENTION_DIM = 32
TINY_IMAGE_SIZE = 32
TINY_IP_TOKENS = 4
TINY_IP_ADAPTER_WEIGHT_NAME = "ip-adapter-plus_tiny.safetensors"


# Common prompt words get whole-word merges so that the tiny profile counts tokens roughly as
# CLIP does (about one per word): with bytes alone, a 77-token limit refused ordinary prompts.
_COMMON_WORDS = """
a an the of in on at by with and or as to from for into over under near its his her their
photo photograph portrait picture image painting drawing sketch illustration render selfie
person man woman boy girl child people face head eyes hair smile cat dog pet animal object
sks v toy car house city street forest beach mountain mountains sea ocean lake river snow
rain sky sunset sunrise night day light dark neon studio background wearing holding sitting
standing walking running riding flying astronaut knight wizard pirate chef doctor king queen
superhero robot dragon castle space moon mars planet stars garden park cafe kitchen library
office desert jungle field flowers tree trees red blue green yellow black white gold silver
pink purple orange brown colorful bright soft warm cold detailed high quality realistic
cinematic lighting dramatic style art oil watercolor anime cartoon pixel digital film
vintage retro modern futuristic fantasy epic beautiful cute happy sad funny close up
closeup full body shot wide angle lens bokeh sharp focus 4k 8k hd professional award
winning trending by artist hat glasses suit dress jacket armor crown helmet costume
blurry lowres bad ugly deformed distorted watermark text signature cropped worst low
""".split()  # noqa: SIM905 (a word list reads better as prose)


def _trained_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges learnt from the word list until each listed word is one token.

    Hand-chained merges conflict (BPE applies the lowest-ranked pair first), so they are learnt
    the way CLIP's were: repeatedly merge the most frequent adjacent pair. Ties break by the
    pair itself so the vocabulary (and so the tiny text encoder's shape) is always the same.
    """
    corpus = [[*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words) if len(w) > 1]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        joined = best[0] + best[1]
        for symbols in corpus:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [joined]
                i += 1


def tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with whole-word merges for common prompt words."""
    chars = list(bytes_to_unicode().values())  # CLIP's byte → printable-character table
    merges = _trained_merges(_COMMON_WORDS)
    vocab_list = chars + [c + "</w>" for c in chars]
    known = set(vocab_list)
    vocab_list += [t for t in dict.fromkeys(a + b for a, b in merges) if t not in known]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    # The tokenizers backend wants merge pairs; transformers' hint says list[str].
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and scheduler of the tiny pipeline (random weights)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=TINY_CROSS_ATTENTION_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
        )
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed + 3)
    config = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=TINY_IMAGE_SIZE,
        patch_size=4,
        num_channels=3,
    )
    return CLIPVisionModelWithProjection(config).eval()


def plus_projection_state_dict(
    image_hidden_size: int,
    cross_attention_dim: int,
    *,
    hidden_dims: int,
    num_queries: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """A random IP-Adapter Plus resampler in the *original* checkpoint layout (the names
    h94/IP-Adapter ships), so diffusers' own converter runs when it is loaded."""
    torch.manual_seed(seed + 4)
    # diffusers infers heads as to_q rows // 64, so the hidden width must be a multiple of 64.
    proj = IPAdapterPlusImageProjection(
        embed_dims=image_hidden_size,
        output_dims=cross_attention_dim,
        hidden_dims=hidden_dims,
        heads=hidden_dims // 64,
        num_queries=num_queries,
    )
    renames = {
        "ln0.weight": "0.norm1.weight",
        "ln0.bias": "0.norm1.bias",
        "ln1.weight": "0.norm2.weight",
        "ln1.bias": "0.norm2.bias",
        "attn.to_q.weight": "0.to_q.weight",
        "attn.to_out.0.weight": "0.to_out.weight",
        "ff.0.weight": "1.0.weight",
        "ff.0.bias": "1.0.bias",
        "ff.1.net.0.proj.weight": "1.1.weight",
        "ff.1.net.2.weight": "1.3.weight",
    }
    state = proj.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] != "layers":
            out[name] = value
            continue
        index, rest = parts[1], ".".join(parts[2:])
        if rest in ("attn.to_k.weight", "attn.to_v.weight"):
            continue  # stored fused as to_kv, as the original checkpoints do
        out[f"layers.{index}.{renames[rest]}"] = value
    for i in range(len(proj.layers)):
        k, v = state[f"layers.{i}.attn.to_k.weight"], state[f"layers.{i}.attn.to_v.weight"]
        out[f"layers.{i}.0.to_kv.weight"] = torch.cat([k, v], dim=0)
    return out


def write_random_ip_adapter(
    root: Path,
    unet: Any,
    encoder: CLIPVisionModelWithProjection,
    *,
    weight_name: str,
    hidden_dims: int,
    num_queries: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random IP-Adapter Plus for ``unet`` and its image encoder under ``root`` in the
    h94/IP-Adapter repository layout (``models/<weights>``, ``models/image_encoder/``)."""
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    # transformers' typed ``to`` wrapper confuses mypy; torch's Module.to is what runs.
    torch.nn.Module.to(encoder, dtype=dtype)
    encoder.save_pretrained(models / "image_encoder")
    cross_dim = int(unet.config.cross_attention_dim)
    projection = plus_projection_state_dict(
        encoder.config.hidden_size,
        cross_dim,
        hidden_dims=hidden_dims,
        num_queries=num_queries,
        seed=seed,
    )
    state = {f"image_proj.{k}": v for k, v in projection.items()}
    torch.manual_seed(seed + 5)
    # One odd id per cross-attention processor, in attn_processors order (the loader's scheme).
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        # The attention layer reading this processor: its query width is the hidden size.
        hidden = int(unet.get_submodule(name.removesuffix(".processor")).query_dim)
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{proj}.weight"] = torch.randn(hidden, cross_dim) * 0.3
        key_id += 2
    path = models / weight_name
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path))
    logger.debug("wrote a random IP-Adapter to %s", path)
    return path


def write_tiny_ip_adapter(root: Path, unet: Any, seed: int = 0) -> Path:
    """The tiny profile's IP-Adapter Plus (4 tokens per photo) and image encoder."""
    return write_random_ip_adapter(
        root,
        unet,
        tiny_image_encoder(seed),
        weight_name=TINY_IP_ADAPTER_WEIGHT_NAME,
        hidden_dims=64,
        num_queries=TINY_IP_TOKENS,
        seed=seed,
    )
