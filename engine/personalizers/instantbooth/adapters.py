"""InstantBooth's gated adapters and how they ride on a stock diffusers UNet.

Paper: in every transformer block, between self-attention and cross-attention,
``y = y + β · tanh(γ) · SelfAttn([y, f_p])[:n]`` with γ a learnable scalar starting at 0.

Placement without forking the UNet: diffusers' ``BasicTransformerBlock`` computes
``y = y + attn1(norm1(y))``, then ``y = y + attn2(norm2(y))``. Two module hooks per block put
the adapter exactly between the two (the place diffusers' own GLIGEN fuser uses):

* a forward pre-hook on ``norm2`` sees the residual stream ``y``, computes the adapter's
  ``a`` and hands ``norm2`` the input ``y + a`` (so cross-attention reads the adapted stream);
* a forward hook on ``attn2`` adds the same ``a`` to its output, so the block's residual add
  gives ``y + a + attn2(norm2(y + a))``: the adapted stream continues.

Attention processors stay untouched (IP-Adapter's processors keep working beside us), and no
``cross_attention_kwargs`` key is needed: per-batch state lives on the ``AdapterHooks`` object.
With no state set, or β = 0 for a sample, the hooks do nothing for it: output is bit-identical
to the frozen model's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from engine.personalizers.instantbooth.config import AdapterSpec

logger = logging.getLogger(__name__)


class GatedSelfAttention(nn.Module):
    """``β · tanh(γ) · SelfAttn(LN([y, proj(f_p)]))[:n]`` for one transformer block.

    Only the first n (visual) positions of the self-attention are kept, so queries are computed
    for those only; keys and values span the visual tokens and the patch tokens.
    """

    def __init__(self, dim: int, heads: int, patch_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"adapter width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.proj = nn.Linear(patch_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        # γ: tanh(0) = 0, so a fresh adapter is an exact no-op (the base model is untouched).
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, y: torch.Tensor, patches: torch.Tensor, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y: [B, n, dim]; patches: [B, m, patch_dim]; patch_mask: [B, m] True = real token."""
        b, n, dim = y.shape
        tokens = self.norm(torch.cat([y, self.proj(patches)], dim=1))
        q = self.to_q(tokens[:, :n])
        k, v = self.to_k(tokens), self.to_v(tokens)
        hd = dim // self.heads
        q, k, v = (t.view(b, -1, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        mask = None
        if patch_mask is not None:
            visual = torch.ones(b, n, dtype=torch.bool, device=y.device)
            mask = torch.cat([visual, patch_mask.to(torch.bool)], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, dim))
        return torch.tanh(self.gate) * out


@dataclass(frozen=True)
class AdapterState:
    """Per-batch inputs of the adapters.

    ``rows``: indices of the UNet batch rows the adapters act on (β ≠ 0); the other rows (the
    unconditional half under CFG, samples without features) get nothing. ``patches`` [A, m, d],
    ``mask`` [A, m] (True = real token; rows padded to the longest; None when nothing is
    padded) and ``beta`` [A] hold the active rows only. Everything is decided on the host when
    the state is built, so the hooks never synchronise with the device.
    """

    patches: torch.Tensor
    mask: torch.Tensor | None
    beta: torch.Tensor
    rows: torch.Tensor
    total_rows: int

    @property
    def all_rows(self) -> bool:
        return int(self.rows.shape[0]) == self.total_rows

    @classmethod
    def build(
        cls,
        patches: Sequence[torch.Tensor | None],
        betas: Sequence[float],
        *,
        cfg: bool = False,
        uncond_patches: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        static_tokens: int | None = None,
    ) -> AdapterState:
        """State for a batch of samples; under CFG the UNet sees [uncond rows, cond rows].

        ``static_tokens`` (a compiled UNet) keeps shapes independent of the samples: every
        row of the conditioned half is active (β = 0 and one zero token where a sample has no
        features: an exact no-op), patches are padded to at least that many tokens, and the
        mask is always given.
        """
        if len(patches) != len(betas):
            raise ValueError("one beta per sample is required")
        n = len(patches)
        # (UNet row, patch tokens, beta) for every row the adapters act on.
        active: list[tuple[int, torch.Tensor, float]] = []
        offsets = [n] if cfg else [0]
        if cfg and uncond_patches:
            offsets = [0, n]
        present = [p for p in patches if p is not None]
        ref = present[0] if present else torch.zeros(0, 1)
        for offset in offsets:
            for i, (p, b) in enumerate(zip(patches, betas, strict=True)):
                if static_tokens is not None:
                    if p is None:
                        p, b = torch.zeros(1, ref.shape[-1], dtype=ref.dtype), 0.0
                    active.append((offset + i, p, float(b)))
                elif p is not None and float(b) != 0.0:
                    active.append((offset + i, p, float(b)))
        total = 2 * n if cfg else n
        dev = torch.device(device) if device is not None else ref.device
        dt = dtype or ref.dtype
        longest = max((p.shape[0] for _, p, _ in active), default=1)
        longest = max(longest, static_tokens or 0)
        width = ref.shape[-1]
        rows = torch.zeros(len(active), longest, width, dtype=dt)
        mask = torch.zeros(len(active), longest, dtype=torch.bool)
        for j, (_, p, _) in enumerate(active):
            rows[j, : p.shape[0]] = p.detach().to("cpu", dt)
            mask[j, : p.shape[0]] = True
        return cls(
            patches=rows.to(dev),
            # An all-true mask would only keep SDPA off its fastest kernels (but a compiled
            # UNet wants the same inputs every batch).
            mask=None if bool(mask.all()) and static_tokens is None else mask.to(dev),
            beta=torch.tensor([b for _, _, b in active], dtype=torch.float32).to(dev),
            rows=torch.tensor([r for r, _, _ in active], dtype=torch.long).to(dev),
            total_rows=total,
        )

    @classmethod
    def dense(cls, patches: torch.Tensor, beta: float = 1.0) -> AdapterState:
        """Every row active with the same β and no padding; keeps autograd (training)."""
        total = int(patches.shape[0])
        return cls(
            patches=patches,
            mask=None,
            beta=torch.full((total,), float(beta), device=patches.device),
            rows=torch.arange(total, device=patches.device),
            total_rows=total,
        )


class AdapterHooks:
    """The hooks that run ``adapters`` inside ``unet``; set a state per batch, remove when done."""

    def __init__(self, unet: nn.Module, adapters: dict[str, GatedSelfAttention]) -> None:
        self.state: AdapterState | None = None
        # The adapter output of the block in flight, handed from norm2's hook to attn2's hook.
        self._pending: dict[str, torch.Tensor | None] = {}
        self._handles: list[RemovableHandle] = []
        for block_name, adapter in adapters.items():
            block: Any = unet.get_submodule(block_name)
            self._handles.append(
                block.norm2.register_forward_pre_hook(self._pre_norm2(block_name, adapter))
            )
            self._handles.append(block.attn2.register_forward_hook(self._post_attn2(block_name)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.state = None

    @contextmanager
    def active(self, state: AdapterState) -> Iterator[None]:
        self.state = state
        try:
            yield
        finally:
            self.state = None
            self._pending.clear()

    def _pre_norm2(self, name: str, adapter: GatedSelfAttention) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            state = self.state
            self._pending[name] = None
            if state is None:
                return None
            y = args[0]
            if y.shape[0] != state.total_rows:
                raise RuntimeError(
                    f"InstantBooth adapter state was built for {state.total_rows} UNet rows but "
                    f"the batch has {y.shape[0]}"
                )
            if state.rows.shape[0] == 0:
                return None
            param = adapter.to_out.weight
            y_rows = y if state.all_rows else y.index_select(0, state.rows)
            out = adapter(y_rows.to(param.dtype), state.patches.to(param.dtype), state.mask)
            out = (out * state.beta.to(out.dtype)[:, None, None]).to(y.dtype)
            delta = out if state.all_rows else torch.zeros_like(y).index_copy(0, state.rows, out)
            self._pending[name] = delta
            return (y + delta, *args[1:])

        return hook

    def _post_attn2(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            delta = self._pending.pop(name, None)
            if delta is None:
                return None
            return output + delta

        return hook


def adapter_specs(unet: nn.Module) -> list[AdapterSpec]:
    """Every transformer block of ``unet`` that has self- then cross-attention, in module order."""
    specs = []
    for name, module in unet.named_modules():
        attn2 = getattr(module, "attn2", None)
        norm2 = getattr(module, "norm2", None)
        if attn2 is None or norm2 is None or not hasattr(module, "attn1"):
            continue
        if getattr(module, "norm_type", "layer_norm") != "layer_norm":
            raise ValueError(
                f"{name}: InstantBooth adapters need layer-norm transformer blocks "
                f"(found norm_type {module.norm_type!r})"
            )
        if getattr(module, "pos_embed", None) is not None:
            raise ValueError(f"{name}: transformer blocks with positional embeddings unsupported")
        dim = attn2.to_q.in_features
        specs.append(AdapterSpec(block=name, dim=dim, heads=attn2.heads))
    if not specs:
        raise ValueError("the UNet has no transformer blocks with cross-attention")
    return specs
