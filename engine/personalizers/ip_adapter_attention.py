"""An IP-Adapter attention processor whose scale can differ per sample of a batch.

diffusers' ``IPAdapterAttnProcessor2_0`` has one scale per adapter for the whole batch; users
of one batch ask for different identity strengths. This subclass keeps its weights, its
loading and its behaviour when no per-sample scale is set (so ``set_ip_adapter_scale`` and
the stock pipeline still work), and when ``sample_scale`` holds a (rows, 1, 1) tensor, it
weights each row's image attention by its own value.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0


class PerSampleIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One (rows, 1, 1) tensor per adapter, or None: the stock per-adapter float scales.
        self.sample_scale: list[torch.Tensor] | None = None
        # (rows, 1, 1, image tokens) booleans, False for padded photo slots; None: no padding.
        self.ip_mask: torch.Tensor | None = None

    @classmethod
    def from_stock(cls, stock: IPAdapterAttnProcessor2_0) -> PerSampleIPAdapterAttnProcessor:
        """The same processor (sharing its weights) with per-sample scales."""
        new = cls(
            hidden_size=stock.hidden_size,
            cross_attention_dim=stock.cross_attention_dim,
            num_tokens=list(stock.num_tokens),
            scale=list(stock.scale),
        )
        new.to_k_ip = stock.to_k_ip
        new.to_v_ip = stock.to_v_ip
        return new

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Any = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.sample_scale is None or not isinstance(encoder_hidden_states, tuple):
            return super().__call__(
                attn,
                hidden_states,
                encoder_hidden_states,
                attention_mask,
                temb,
                scale,
                ip_adapter_masks,
            )
        if ip_adapter_masks is not None:
            raise ValueError("per-sample IP-Adapter scales do not support ip_adapter_masks")
        # The stock non-masked path, line for line, with a tensor scale per row.
        residual = hidden_states
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = mask.view(batch_size, attn.heads, -1, mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        for ip_states, row_scale, to_k_ip, to_v_ip in zip(
            ip_hidden_states, self.sample_scale, self.to_k_ip, self.to_v_ip, strict=True
        ):
            if row_scale.shape[0] != batch_size:
                raise ValueError(
                    f"per-sample IP-Adapter scale has {row_scale.shape[0]} rows, "
                    f"the batch has {batch_size}"
                )
            ip_key = to_k_ip(ip_states)
            ip_value = to_v_ip(ip_states)
            ip_key = ip_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_value = ip_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            ip_out = F.scaled_dot_product_attention(
                query, ip_key, ip_value, attn_mask=self.ip_mask, dropout_p=0.0, is_causal=False
            )
            ip_out = ip_out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
            ip_out = ip_out.to(query.dtype)
            hidden_states = hidden_states + row_scale.to(ip_out.dtype) * ip_out

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2)
            hidden_states = hidden_states.reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
