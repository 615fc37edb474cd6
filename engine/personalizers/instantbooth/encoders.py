"""Image side of InstantBooth: CLIP pixels, the frozen backbone, the two trainable heads.

Concept encoder: the backbone's global image embedding (``image_embeds``, CLIP's projected
joint-space vector) → a trainable linear layer to the text encoder's width; one vector per
photo. Or (``concept_source = "patches"``) the patch tokens' mean and the CLS token → a small
MLP (``ConceptMLP``) to that width. Patch encoder: the backbone's last hidden state (every
token, CLS included: 257 for ViT-L/14 at 224 px) → a trainable linear layer to the adapters'
input width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from PIL import Image
from torch import nn

# OpenAI CLIP's normalisation (every CLIP ViT image processor config carries these values).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """CLIP preprocessing in plain PIL/torch: shortest side → size (bicubic), centre crop,
    normalise. Returns [N, 3, size, size] float32."""
    out = []
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
        t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        t = t.view(size, size, 3).permute(2, 0, 1).float() / 255.0
        out.append((t - mean) / std)
    return torch.stack(out)


def square_crop_around(
    image: Image.Image, box: tuple[int, int, int, int], scale: float
) -> Image.Image:
    """A square of ``scale`` × the box's longer side, centred on the box, kept inside the image
    where possible (shifted, then clipped)."""
    left, top, right, bottom = box
    side = min(max(right - left, bottom - top) * scale, min(image.size))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x0 = min(max(cx - side / 2, 0.0), image.size[0] - side)
    y0 = min(max(cy - side / 2, 0.0), image.size[1] - side)
    return image.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))


def vit_l14_image_encoder(seed: int = 0) -> nn.Module:
    """``openai/clip-vit-large-patch14``'s vision tower (ViT-L/14 at 224 px: 257 tokens of
    1024, a 768-d projection) with random weights: the real encode cost, nothing to download."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed + 13)
    config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


class Head(nn.Module):
    """A trainable linear head that takes the frozen encoder's outputs in any dtype: the
    concept head (global image embedding → one text-space token) and the patch head (backbone
    tokens → adapter input tokens)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs.to(self.linear.weight.dtype))


def pooled_patches(hidden: torch.Tensor) -> torch.Tensor:
    """The backbone's last hidden state [N, 1 + P, H] (CLS first) as one vector per photo:
    the patch tokens' mean beside the CLS token, [N, 2·H]."""
    return torch.cat([hidden[:, 1:].mean(dim=1), hidden[:, 0]], dim=-1)


class ConceptMLP(nn.Module):
    """The concept head over pooled patch tokens (``pooled_patches``): LayerNorm (a backbone's
    hidden states are not normalised), Linear, GELU, Linear to the text encoder's width."""

    def __init__(self, image_hidden_size: int, out_features: int) -> None:
        super().__init__()
        width = 2 * image_hidden_size
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, out_features),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        return cast(torch.Tensor, self.net(pooled_patches(hidden.to(dtype))))
