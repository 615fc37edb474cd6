"""InstantBooth's model on tiny random models: adapters, concept token, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from avatarbot_research.instantbooth.validation import validation_pipeline

from engine.personalizers.instantbooth.adapters import AdapterState
from engine.personalizers.instantbooth.conditioning import Concept, build_conditioning, knobs
from engine.personalizers.instantbooth.config import InstantBoothConfig
from engine.personalizers.instantbooth.encoders import ConceptMLP, Head, pooled_patches
from engine.personalizers.instantbooth.frozen import FrozenModels, load_frozen
from engine.personalizers.instantbooth.model import InstantBoothModel, concept_features
from engine.personalizers.instantbooth.prompts import (
    identifier_ids,
    identifier_positions,
    inject_concept,
    tokenize,
)


@pytest.fixture(scope="module")
def frozen() -> FrozenModels:
    return load_frozen("tiny")


@pytest.fixture(scope="module")
def pipe(frozen: FrozenModels) -> Any:
    return validation_pipeline(frozen)


def _model(frozen: FrozenModels, seed: int = 0, gate: float = 0.0) -> InstantBoothModel:
    torch.manual_seed(seed)
    model = InstantBoothModel.for_unet(frozen.unet, frozen.image_encoder).eval()
    with torch.no_grad():
        for adapter in model.adapters.values():
            adapter.gate.fill_(gate)  # type: ignore[union-attr]
    return model


def _concept(model: InstantBoothModel, frozen: FrozenModels, photos: int = 2) -> Concept:
    g = torch.Generator().manual_seed(7)
    pixels = torch.randn(photos, 3, 32, 32, generator=g)
    with torch.no_grad():
        tokens, patches = model.encode_pixels(frozen.image_encoder, pixels)
    token, flat = concept_features(tokens, patches)
    return Concept(token, flat, "object")


def _render(
    pipe: Any, cond: Any = None, hooks: Any = None, prompts: Any = None, seed: int = 100
) -> np.ndarray:
    n = len(prompts) if prompts is not None else cond.prompt_embeds.shape[0]
    kwargs: dict[str, Any] = {
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "height": 64,
        "width": 64,
        "output_type": "np",
        "generator": [torch.Generator().manual_seed(seed + i) for i in range(n)],
    }
    if cond is None:
        return pipe(prompt=prompts, **kwargs).images
    kwargs.update(
        prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative_prompt_embeds
    )
    if hooks is None or cond.adapter_state is None:
        return pipe(**kwargs).images
    with hooks.active(cond.adapter_state):
        return pipe(**kwargs).images


def _cond(pipe: Any, model: InstantBoothModel, concepts: list[Any], **kw: Any) -> Any:
    n = len(concepts)
    kw.setdefault("alphas", [0.4] * n)
    kw.setdefault("betas", [1.0] * n)
    return build_conditioning(
        pipe, model.config, ["a toy on a table"] * n, concepts, do_cfg=True, **kw
    )


def test_gate_zero_reproduces_the_frozen_model_exactly(pipe: Any, frozen: FrozenModels) -> None:
    model = _model(frozen, gate=0.0)
    cond = _cond(pipe, model, [_concept(model, frozen)] * 2, inject=False)
    plain = _render(pipe, prompts=cond.prompts)
    hooks = model.install(frozen.unet)
    try:
        assert np.array_equal(_render(pipe, cond, hooks), plain)
        # The same comparison can fail: an open gate changes the image.
        opened = _model(frozen, gate=0.5)
        hooks.remove()
        hooks = opened.install(frozen.unet)
        assert not np.allclose(_render(pipe, cond, hooks), plain, atol=1e-4)
    finally:
        hooks.remove()
    # Removed hooks leave the UNet as it was.
    assert np.array_equal(_render(pipe, prompts=cond.prompts), plain)


def test_beta_is_per_sample_inside_a_batch(pipe: Any, frozen: FrozenModels) -> None:
    model = _model(frozen, gate=0.5)
    concept = _concept(model, frozen)
    hooks = model.install(frozen.unet)
    try:
        both = _render(pipe, _cond(pipe, model, [concept, concept], betas=[1.0, 0.0]), hooks)
        on = _render(pipe, _cond(pipe, model, [concept], betas=[1.0]), hooks)
        off = _render(pipe, _cond(pipe, model, [concept], betas=[0.0]), hooks, seed=101)
        off_100 = _render(pipe, _cond(pipe, model, [concept], betas=[0.0]), hooks)
    finally:
        hooks.remove()
    assert not np.allclose(on[0], off_100[0], atol=1e-4)  # β matters for this sample
    # Each sample of the batch renders as it does alone with its own β and seed.
    assert np.allclose(both[0], on[0], atol=1e-5)
    assert np.allclose(both[1], off[0], atol=1e-5)


def test_cfg_state_leaves_the_unconditional_half_alone() -> None:
    patches = [torch.ones(3, 4), torch.ones(5, 4)]
    state = AdapterState.build(patches, [0.3, 0.6], cfg=True)
    assert state.total_rows == 4 and state.rows.tolist() == [2, 3]
    assert state.beta.tolist() == pytest.approx([0.3, 0.6])
    assert state.mask is not None and state.mask.sum(dim=1).tolist() == [3, 5]
    both = AdapterState.build(patches, [0.3, 0.6], cfg=True, uncond_patches=True)
    assert both.rows.tolist() == [0, 1, 2, 3]
    none = AdapterState.build([patches[0], None], [1.0, 1.0])
    assert none.rows.tolist() == [0] and none.mask is None


def test_concept_token_lands_on_the_identifier_and_is_renormalised(pipe: Any) -> None:
    tok = pipe.tokenizer
    ident = identifier_ids(tok, "sks")
    ids = tokenize(tok, ["a photo of sks object", "no identifier here"])
    positions = identifier_positions(ids, ident)
    assert len(positions[0]) == len(ident) and positions[1] == []
    assert ids[0, positions[0]].tolist() == ident
    embeds = torch.randn(2, ids.shape[1], 32)
    concepts = torch.randn(2, 32) * 10
    raw = inject_concept(embeds, positions, concepts)
    assert torch.equal(raw[0, positions[0][0]], concepts[0])
    assert torch.equal(raw[1], embeds[1])
    others = [i for i in range(ids.shape[1]) if i not in positions[0]]
    assert torch.equal(raw[0, others], embeds[0, others])
    scaled = inject_concept(embeds, positions, concepts, alpha=0.4)
    for p in positions[0]:
        assert float(scaled[0, p].norm()) == pytest.approx(0.4 * float(embeds[0, p].norm()), 1e-5)
        cos = torch.nn.functional.cosine_similarity(scaled[0, p], concepts[0], dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)
    # Per row: None keeps that row's raw vector (as trained), a number renormalises.
    both = torch.stack([embeds[0], embeds[0]])
    mixed = inject_concept(both, [positions[0]] * 2, concepts[[0, 0]], alpha=[None, 0.4])
    assert torch.equal(mixed[0], raw[0])
    assert torch.equal(mixed[1], scaled[0])


def test_knobs_from_request() -> None:
    config = InstantBoothConfig()
    assert knobs(config) == (0.4, 0.3)
    assert knobs(config, {"alpha": 0.8, "beta": 0.1}, identity_strength=1.0) == (0.8, 0.1)
    assert knobs(config, identity_strength=0.7) == pytest.approx((0.4, 0.3))
    assert knobs(config, identity_strength=0.0) == (0.4, 0.0)
    with pytest.raises(ValueError, match="beta"):
        knobs(config, {"beta": -1.0})
    # The evaluations' switch: the concept token without renormalisation.
    assert knobs(config, {"raw_concept": 1.0, "beta": 0.5}) == (None, 0.5)
    assert knobs(config, {"raw_concept": 0.0}) == (0.4, 0.3)


def test_encoder_ids_of_published_configs_do_not_change() -> None:
    # image_encoder_trained came later: at its default it stays out of the canonical JSON,
    # so weights saved before it keep their encoder id (and avatars their cached features).
    config = InstantBoothConfig()
    assert "image_encoder_trained" not in config.canonical_json()
    tuned = config.model_copy(update={"image_encoder_trained": True})
    assert '"image_encoder_trained":true' in tuned.canonical_json()
    assert tuned.encoder_id("d") != config.encoder_id("d")
    # So did concept_source (issue 27): the default config's id is the one published before.
    assert "concept_source" not in config.canonical_json()
    assert config.encoder_id("d") == "instantbooth-v1-ede9adbff6c07a40"
    patches = config.model_copy(update={"concept_source": "patches"})
    assert '"concept_source":"patches"' in patches.canonical_json()
    assert patches.encoder_id("d") != config.encoder_id("d")


def test_concept_source_round_trips_and_old_configs_load(tmp_path: Path) -> None:
    config = InstantBoothConfig(concept_source="patches")
    config.save(tmp_path / "new")
    assert InstantBoothConfig.load(tmp_path / "new") == config
    # A config.json written before the field existed reads as the global image embedding.
    data = json.loads(InstantBoothConfig().save(tmp_path / "old").read_text())
    del data["concept_source"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    assert InstantBoothConfig.load(tmp_path / "old").concept_source == "image_embeds"
    with pytest.raises(ValueError, match="concept_source"):
        InstantBoothConfig(concept_source="cls")  # type: ignore[arg-type]


def test_old_weights_load_with_their_encoder_id(tmp_path: Path, frozen: FrozenModels) -> None:
    model = _model(frozen, seed=4)
    model.save_pretrained(tmp_path / "w")
    config = tmp_path / "w" / "config.json"
    data = json.loads(config.read_text())
    del data["concept_source"]  # as saved before issue 27
    config.write_text(json.dumps(data))
    loaded = InstantBoothModel.from_pretrained(tmp_path / "w")
    assert isinstance(loaded.concept, Head)
    assert loaded.encoder_id == model.encoder_id


def test_patch_concept_head_pools_the_patch_tokens(frozen: FrozenModels) -> None:
    torch.manual_seed(0)
    model = InstantBoothModel.for_unet(
        frozen.unet, frozen.image_encoder, concept_source="patches"
    ).eval()
    assert isinstance(model.concept, ConceptMLP)
    hidden = torch.randn(2, model.config.num_patch_tokens, model.config.image_hidden_size)
    pooled = pooled_patches(hidden)
    assert pooled.shape == (2, 2 * model.config.image_hidden_size)
    assert torch.allclose(pooled[0, : hidden.shape[-1]], hidden[0, 1:].mean(dim=0))
    assert torch.equal(pooled[1, hidden.shape[-1] :], hidden[1, 0])
    # The global embedding is not used: only the patch tokens decide the token.
    embeds = torch.randn(2, model.config.image_embed_dim)
    with torch.no_grad():
        token = model.concepts(embeds, hidden)
        assert token.shape == (2, model.config.text_hidden_size)
        assert torch.equal(token, model.concepts(torch.zeros_like(embeds), hidden))
        assert not torch.allclose(token, model.concepts(embeds, hidden.flip(0)))


def test_more_photos_average_the_token_and_concatenate_patches(frozen: FrozenModels) -> None:
    model = _model(frozen)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens, patches = model.encode_pixels(frozen.image_encoder, pixels)
        one_token, one_patches = concept_features(tokens[:1], patches[:1])
        token, flat = concept_features(tokens, patches)
    p = model.config.num_patch_tokens
    assert one_patches.shape == (p, 32) and flat.shape == (3 * p, 32)
    assert torch.allclose(token, tokens.mean(dim=0)) and not torch.allclose(token, one_token)
    assert torch.equal(flat[:p], one_patches) and torch.equal(flat[2 * p :], patches[2])


def test_save_load_render_round_trip(tmp_path: Path, pipe: Any, frozen: FrozenModels) -> None:
    model = _model(frozen, seed=3, gate=0.3)
    concept = _concept(model, frozen)
    model.save_pretrained(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "config.json",
        "instantbooth.safetensors",
    ]
    loaded = InstantBoothModel.from_pretrained(tmp_path / "w").eval()
    assert loaded.encoder_id == model.encoder_id
    assert loaded.config == model.config
    images = []
    for m in (model, loaded):
        hooks = m.install(frozen.unet)
        try:
            images.append(_render(pipe, _cond(pipe, m, [concept]), hooks))
        finally:
            hooks.remove()
    assert np.array_equal(images[0], images[1])
    # Other weights, other encoder id: cached features would be stale.
    assert _model(frozen, seed=4).encoder_id != model.encoder_id
    cfg = InstantBoothConfig.load(tmp_path / "w").model_copy(update={"alpha": 0.5})
    assert cfg.encoder_id(loaded.weights_digest) != loaded.encoder_id


def test_weights_for_another_unet_are_refused(tmp_path: Path, frozen: FrozenModels) -> None:
    model = _model(frozen)
    spec = model.config.adapters[0].model_copy(update={"block": "down_blocks.9.x"})
    wrong = InstantBoothModel(model.config.model_copy(update={"adapters": (spec,)}))
    with pytest.raises(ValueError, match="another UNet layout"):
        wrong.install(frozen.unet)
    (tmp_path / "w").mkdir()
    model.config.save(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match=r"instantbooth\.safetensors"):
        InstantBoothModel.from_pretrained(tmp_path / "w")
