"""Training a non-Plus IP-Adapter on tiny frozen models: only the adapter trains, the file is
the public layout diffusers' ``load_ip_adapter`` reads, and a seed fixes the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from avatarbot_research.ipadapter import (
    ENCODER_FOLDER,
    WEIGHT_NAME,
    IPAdapterOptions,
    train_ip_adapter,
)
from avatarbot_research.ipadapter.trainer import adapter_state, attach, initial_state
from diffusers import StableDiffusionPipeline
from diffusers.models.embeddings import ImageProjection
from safetensors.torch import load_file

from engine.personalizers.instantbooth.frozen import load_frozen
from engine.tiny import tiny_components
from tests.research.test_instantbooth_dataset import make_shapes_dataset


def _cross_attentions(unet: Any) -> list[str]:
    return [n for n in unet.attn_processors if n.endswith("attn2.processor")]


def _train(tmp_path: Path, out: str) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        make_shapes_dataset(data, count=6)
    options = IPAdapterOptions(
        data=data,
        out=tmp_path / out,
        steps=3,
        batch_size=2,
        lr=1e-2,
        drop_rate=0.2,  # every dropout branch has a fair chance in a few samples
        resolution=32,
        log_every=1,
    )
    result = train_ip_adapter(options, load_frozen("tiny"))
    assert result.steps == 3
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    return result.weights


def test_only_the_adapter_trains_and_is_saved_in_the_public_layout(tmp_path: Path) -> None:
    frozen = load_frozen("tiny")
    before = {
        f"{name}.{key}": value.clone()
        for name, module in frozen.modules().items()
        for key, value in module.state_dict().items()
    }
    options = IPAdapterOptions(
        data=make_shapes_dataset(tmp_path / "data", count=6),
        out=tmp_path / "out",
        steps=3,
        batch_size=2,
        lr=1e-2,
        resolution=32,
    )
    weights = train_ip_adapter(options, frozen).weights
    after = {
        f"{name}.{key}": value
        for name, module in frozen.modules().items()
        for key, value in module.state_dict().items()
    }
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert weights == tmp_path / "out" / WEIGHT_NAME
    assert (tmp_path / "out" / ENCODER_FOLDER / "config.json").is_file()
    state = load_file(str(weights))
    cross = int(frozen.unet.config.cross_attention_dim)
    embed = int(frozen.image_encoder.config.projection_dim)
    assert state["image_proj.proj.weight"].shape == (4 * cross, embed)
    names = _cross_attentions(load_frozen("tiny").unet)
    assert sorted(k for k in state if k.startswith("ip_adapter.")) == sorted(
        f"ip_adapter.{2 * i + 1}.{p}.weight"
        for i in range(len(names))
        for p in ("to_k_ip", "to_v_ip")
    )
    init = initial_state(load_frozen("tiny").unet, embed, options.seed)
    assert not torch.equal(state["image_proj.proj.weight"], init["image_proj"]["proj.weight"])
    assert not torch.equal(
        state["ip_adapter.1.to_k_ip.weight"], init["ip_adapter"]["1.to_k_ip.weight"]
    )


def test_the_initial_adapter_copies_the_text_keys_and_round_trips() -> None:
    unet = load_frozen("tiny").unet
    state = initial_state(unet, 32, seed=0)
    for i, name in enumerate(_cross_attentions(unet)):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        assert torch.equal(state["ip_adapter"][f"{2 * i + 1}.to_k_ip.weight"], attn.to_k.weight)
        assert torch.equal(state["ip_adapter"][f"{2 * i + 1}.to_v_ip.weight"], attn.to_v.weight)
    params = attach(unet, state)
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in unet.named_parameters() if "attn2.to_k." in n)
    flat = {f"{group}.{k}": v for group, part in state.items() for k, v in part.items()}
    saved = adapter_state(unet)
    assert saved.keys() == flat.keys()
    assert all(torch.equal(saved[k], flat[k]) for k in flat)


def test_load_ip_adapter_reads_the_weights_and_a_seed_fixes_them(tmp_path: Path) -> None:
    first, second = _train(tmp_path, "a"), _train(tmp_path, "b")
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe: Any = StableDiffusionPipeline(
        **tiny_components(0),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.load_ip_adapter(
        str(first.parent),
        subfolder="",
        weight_name=WEIGHT_NAME,
        image_encoder_folder=ENCODER_FOLDER,
        local_files_only=True,
    )
    assert pipe.image_encoder is not None
    assert isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
    loaded = adapter_state(pipe.unet)
    assert loaded.keys() == a.keys() and all(torch.equal(loaded[k], a[k]) for k in a)
