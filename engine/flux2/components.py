"""Random-weight FLUX.2 [klein] models: ``tiny`` for tests and ``shaped`` for benchmarks.

Both use the classes of the public ``black-forest-labs/FLUX.2-klein-4B`` repository
(``Flux2Transformer2DModel``, ``AutoencoderKLFlux2``, transformers' ``Qwen3ForCausalLM``, a
``Qwen2TokenizerFast``, ``FlowMatchEulerDiscreteScheduler``) and its pipeline flag
``is_distilled``:

- ``tiny_flux2_components``: shrunk until a 64 px render takes a fraction of a second on a CPU
  (configs after diffusers' own fast test, ``get_dummy_components`` in
  ``tests/pipelines/flux2/test_pipeline_flux2_klein.py``, except that the VAE keeps the real
  one's four blocks, so images are 8x the latents and sizes must be multiples of 16 as for the
  real model). The loader writes them to a folder and reads them back like a download.
- ``shaped_flux2_components``: the real 4B architecture, from the published configs written
  out below, built on the ``meta`` device (no memory, no download); the loader materialises
  them straight on the target device in the target dtype (about 8 B parameters: 16 GB in
  bf16, which would be wasteful to write to disk and read back only to get random numbers).

The Qwen vocabulary is a download, so both use a byte-level tokenizer built here (the shaped
text encoder keeps Qwen3's vocabulary size, so its cost is unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

# The models' own modules: to mypy, diffusers' top-level names are its no-torch dummies.
from diffusers.models.autoencoders.autoencoder_kl_flux2 import AutoencoderKLFlux2
from diffusers.models.transformers.transformer_flux2 import Flux2Transformer2DModel

# transformers 5 has one Qwen2 tokenizer class (Qwen2TokenizerFast is an alias of it).
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

# What the 4B pipeline reads from the text encoder (diffusers' defaults for klein): the hidden
# states after these Qwen3 layers, concatenated per token (3 x 2560 = the transformer's 7680).
# The tiny text encoder has just enough layers for the same three: the tiny profile runs the
# real profile's pipeline settings, and the real profile can load the tiny folder.
KLEIN_4B_TEXT_LAYERS = (9, 18, 27)
# The prompt window: the pipeline pads every prompt (chat template included) to this length.
MAX_SEQUENCE_LENGTH = 512
# Tokens the chat template adds around a prompt: "<|im_start|>user\n", "<|im_end|>\n",
# "<|im_start|>assistant\n<think>\n\n</think>\n\n": 12 with Qwen's vocabulary, 26 with the
# tiny byte-level one; the prompt limit keeps this margin.
CHAT_TEMPLATE_MARGIN = 32

# Qwen3's chat template, reduced to what Flux2KleinPipeline asks of it: one user turn, the
# generation prompt, thinking disabled (an empty think block, as Qwen3's own template writes).
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)
_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def byte_level_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2-style tokenizer over the 256 byte symbols (no merges: one token per byte) with
    Qwen's special tokens and a ChatML chat template. Fully offline and deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_SPECIAL_TOKENS))
    return Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHAT_TEMPLATE,
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def tiny_flux2_components(seed: int = 0) -> dict[str, Any]:
    """The tiny pipeline's modules (random weights, fp32, CPU), ready for
    ``Flux2KleinPipeline(**components)``."""
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=max(KLEIN_4B_TEXT_LAYERS),
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=MAX_SEQUENCE_LENGTH,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()
    torch.manual_seed(seed + 2)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * 4,  # the VAE's latent channels, 2x2-patchified
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16 * len(KLEIN_4B_TEXT_LAYERS),
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    ).eval()
    return {
        "scheduler": flow_match_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer,
        "is_distilled": True,
    }


def flow_match_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.2's published scheduler config (the klein pipeline computes ``mu`` itself from the
    image's token count, which needs dynamic shifting on)."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def shaped_flux2_components(seed: int = 0) -> dict[str, Any]:
    """FLUX.2 [klein] 4B's modules with the published configs of
    ``black-forest-labs/FLUX.2-klein-4B`` (transformer/, vae/, text_encoder/ = Qwen3-4B), built
    on the ``meta`` device: shapes only. ``engine.flux2.loading`` materialises them on the
    target device with seeded random values (``seed`` is used there)."""
    del seed  # the values are drawn when the modules are materialised
    tokenizer = byte_level_tokenizer()
    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=128,
            out_channels=None,
            num_layers=5,
            num_single_layers=20,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=7680,
            timestep_guidance_channels=256,
            mlp_ratio=3.0,
            axes_dims_rope=(32, 32, 32, 32),
            rope_theta=2000,
            eps=1e-6,
            guidance_embeds=False,
        )
        vae = AutoencoderKLFlux2(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            act_fn="silu",
            latent_channels=32,
            norm_num_groups=32,
            sample_size=1024,
            use_quant_conv=True,
            use_post_quant_conv=True,
            mid_block_add_attention=True,
            batch_norm_eps=1e-4,
            batch_norm_momentum=0.1,
            patch_size=(2, 2),
        )
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=151936,
                hidden_size=2560,
                intermediate_size=9728,
                num_hidden_layers=36,
                num_attention_heads=32,
                num_key_value_heads=8,
                head_dim=128,
                hidden_act="silu",
                max_position_embeddings=40960,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000},
                tie_word_embeddings=True,
                attention_bias=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    return {
        "scheduler": flow_match_scheduler(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "transformer": transformer.eval(),
        "is_distilled": True,
    }


def is_meta(components: dict[str, Any]) -> bool:
    """Whether these components are shapes only (built on the ``meta`` device)."""
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            return any(p.is_meta for p in module.parameters())
    return False


@torch.no_grad()
def materialize(
    components: dict[str, Any], *, device: torch.device, dtype: torch.dtype, seed: int
) -> dict[str, Any]:
    """Give meta-built modules storage on ``device`` in ``dtype`` and seeded random values:
    N(0, 0.02) for weights, ones for normalisation scales, zeros for biases, and the VAE's
    latent batch-norm statistics at (mean 0, variance 1). The values only have to be finite
    and of a realistic scale: these models exist for their FLOPs."""
    generator = torch.Generator(device=device).manual_seed(seed)
    built: dict[str, Any] = {}
    for name, value in components.items():
        if not isinstance(value, torch.nn.Module):
            built[name] = value
            continue
        # Cast while still on meta (free), so the device only ever holds the target dtype
        # (torch's own ``to``: diffusers' override warns about float32 modules there are none of).
        module = torch.nn.Module.to(value, dtype=dtype).to_empty(device=device)
        # to_empty gives tied parameters (Qwen3's embeddings and LM head) separate storage:
        # tie them again, or the text encoder would hold 0.4 B parameters twice.
        tie = getattr(module, "tie_weights", None)
        if callable(tie):
            tie()
        for param_name, param in module.named_parameters():
            if param.ndim == 1 and ("norm" in param_name or param_name.endswith(".weight")):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
        for buffer_name, buffer in module.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.fill_(1.0)
            elif buffer_name.endswith("running_mean"):
                buffer.zero_()
        _rebuild_rotary_buffers(module, device)
        built[name] = module.eval()
    return built


def _rebuild_rotary_buffers(module: torch.nn.Module, device: torch.device) -> None:
    """Non-persistent buffers computed at construction (Qwen3's rotary ``inv_freq``) hold
    garbage after ``to_empty``: rebuild each such module from its config (on the CPU: it is a
    few numbers) and copy its buffers over, in float32 as transformers computes them."""
    for child in module.modules():
        if not hasattr(child, "inv_freq") or not hasattr(child, "config"):
            continue
        fresh = type(child)(child.config)
        for name, buffer in fresh.named_buffers(recurse=False):
            setattr(child, name, buffer.to(device))
