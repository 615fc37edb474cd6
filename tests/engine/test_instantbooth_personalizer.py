"""The ``instantbooth`` personalizer on the tiny models: encode, cached features, prepare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from avatarbot_research.instantbooth.validation import validation_pipeline
from PIL import Image

from engine.errors import CorruptFeatures, MissingWeights, StaleFeatures
from engine.personalizers import personalizer_factory
from engine.personalizers.base import DenoiseBatch, LoadContext
from engine.personalizers.instantbooth.frozen import load_frozen
from engine.personalizers.instantbooth.personalizer import InstantBoothPersonalizer
from engine.types import ConceptFeatures, ConceptKind, RenderRequest


@pytest.fixture(scope="module")
def pipe() -> Any:
    return validation_pipeline(load_frozen("tiny"))


def _context(pipe: Any, **options: Any) -> LoadContext:
    return LoadContext(
        pipe=pipe,
        options=options,
        device=torch.device("cpu"),
        dtype=torch.float32,
        offline=True,
        cache_dir=None,
        workdir="/nonexistent",
        seed=0,
    )


@pytest.fixture(scope="module")
def booth(pipe: Any) -> InstantBoothPersonalizer:
    made = personalizer_factory("instantbooth")(_context(pipe, random="tiny"))
    assert isinstance(made, InstantBoothPersonalizer)
    return made


def _photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8)) for i in range(n)
    ]


def _render(pipe: Any, booth: InstantBoothPersonalizer, requests: list[RenderRequest]) -> Any:
    """What the engine's pipeline does with a personalizer, for one batch."""
    samples = [r for r in requests for _ in range(r.count)]
    prompts = [r.prompt for r in samples]
    pos, neg = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True, [""] * len(prompts))
    batch = DenoiseBatch(samples, True, pos, neg, torch.device("cpu"), torch.float32)
    for r in requests:
        booth.check(r)
    prepared = booth.prepare(pipe, batch)
    seeds = [s for r in requests for s in r.seeds]
    with prepared.context:
        return pipe(
            prompt_embeds=prepared.prompt_embeds,
            negative_prompt_embeds=prepared.negative_prompt_embeds,
            num_inference_steps=2,
            guidance_scale=5.0,
            height=64,
            width=64,
            output_type="np",
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        ).images


def test_encode_pools_photos_as_the_paper_says(booth: InstantBoothPersonalizer) -> None:
    photos = _photos(3)
    features = booth.encode(photos, ConceptKind.PERSON)
    p = booth.config.num_patch_tokens
    assert features.encoder_id == booth.encoder_id and features.photo_count == 3
    token, patches = features.tensors["concept_token"], features.tensors["patch_tokens"]
    assert token.shape == (32,) and patches.shape == (3 * p, 32)
    assert token.dtype == patches.dtype == torch.float16
    singles = [booth.encode([photo], ConceptKind.PERSON) for photo in photos]
    mean = torch.stack([s.tensors["concept_token"].float() for s in singles]).mean(dim=0)
    assert torch.allclose(token.float(), mean, atol=2e-3)
    concatenated = torch.cat([s.tensors["patch_tokens"] for s in singles])
    assert torch.allclose(patches.float(), concatenated.float(), atol=2e-3)
    # One more photo: one more photo's worth of patch tokens and another average.
    more = booth.encode([*photos, *_photos(1, seed=9)], ConceptKind.PERSON)
    assert more.tensors["patch_tokens"].shape[0] == 4 * p
    assert not torch.allclose(more.tensors["concept_token"], token)


def test_face_boxes_crop_the_encoders_view(booth: InstantBoothPersonalizer) -> None:
    from engine.subject_checks import FaceBox

    photo = _photos(1)[0].resize((200, 200))
    whole = booth.encode([photo], ConceptKind.PERSON)
    face = FaceBox(left=20, top=20, right=60, bottom=60, score=1.0)
    cropped = booth.encode([photo], ConceptKind.PERSON, face_boxes=[face])
    assert not torch.equal(whole.tensors["concept_token"], cropped.tensors["concept_token"])
    by_hand = booth.encode([photo.crop((0, 0, 100, 100))], ConceptKind.PERSON)
    assert torch.equal(by_hand.tensors["patch_tokens"], cropped.tensors["patch_tokens"])


def test_cached_features_render_like_live_ones(pipe: Any, booth: InstantBoothPersonalizer) -> None:
    live = booth.encode(_photos(2), ConceptKind.PET)
    cached = ConceptFeatures.from_bytes(live.to_bytes())
    request = {"prompt": "my cat on a sofa", "personalizer": "instantbooth", "seed": 5}
    a = _render(pipe, booth, [RenderRequest(**request, features=live)])
    b = _render(pipe, booth, [RenderRequest(**request, features=cached)])
    assert np.array_equal(a, b)
    # The features matter: another concept renders another image.
    other = booth.encode(_photos(2, seed=4), ConceptKind.PET)
    c = _render(pipe, booth, [RenderRequest(**request, features=other)])
    assert not np.allclose(a, c, atol=1e-4)


def test_batch_mixes_photo_counts_and_knobs(pipe: Any, booth: InstantBoothPersonalizer) -> None:
    one = booth.encode(_photos(1), ConceptKind.PERSON)
    three = booth.encode(_photos(3, seed=2), ConceptKind.PERSON)
    r1 = RenderRequest("a person skiing", personalizer="instantbooth", seed=1, features=one)
    r2 = RenderRequest(
        "a person reading",
        personalizer="instantbooth",
        seed=2,
        count=2,
        features=three,
        extra={"alpha": 0.8, "beta": 0.6},
    )
    batched = _render(pipe, booth, [r1, r2])
    alone = [_render(pipe, booth, [r1]), _render(pipe, booth, [r2])]
    assert np.allclose(batched[0], alone[0][0], atol=1e-5)
    assert np.allclose(batched[1:], alone[1], atol=1e-5)
    # identity strength reaches the adapters (β), α the concept token.
    weak = RenderRequest(
        "a person skiing", personalizer="instantbooth", seed=1, features=one, identity_strength=0
    )
    assert not np.allclose(_render(pipe, booth, [weak]), alone[0], atol=1e-4)


def test_stale_and_malformed_features_are_refused(booth: InstantBoothPersonalizer) -> None:
    good = booth.encode(_photos(1), ConceptKind.PERSON)
    stale = ConceptFeatures("instantbooth-v1-0000", ConceptKind.PERSON, good.tensors, 1)
    with pytest.raises(StaleFeatures):
        booth.check(RenderRequest("x", personalizer="instantbooth", features=stale))
    wrong = ConceptFeatures(booth.encoder_id, ConceptKind.PERSON, good.tensors, photo_count=2)
    with pytest.raises(CorruptFeatures, match="patch_tokens"):
        booth.check(RenderRequest("x", personalizer="instantbooth", features=wrong))
    with pytest.raises(ValueError, match="beta"):
        booth.check(
            RenderRequest("x", personalizer="instantbooth", features=good, extra={"beta": 9.0})
        )


def test_weights_folder_loads_and_missing_weights_say_how(
    tmp_path: Path, pipe: Any, booth: InstantBoothPersonalizer
) -> None:
    booth.model.save_pretrained(tmp_path / "weights")
    loaded = personalizer_factory("instantbooth")(_context(pipe, weights=tmp_path / "weights"))
    assert loaded.encoder_id == booth.encoder_id
    photos = _photos(2)
    assert torch.equal(
        loaded.encode(photos, ConceptKind.OBJECT).tensors["patch_tokens"],
        booth.encode(photos, ConceptKind.OBJECT).tensors["patch_tokens"],
    )
    with pytest.raises(MissingWeights, match="avatarbot train instantbooth"):
        personalizer_factory("instantbooth")(_context(pipe))
    with pytest.raises(MissingWeights, match=r"config\.json"):
        personalizer_factory("instantbooth")(_context(pipe, weights=tmp_path / "nowhere"))
