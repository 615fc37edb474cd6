"""The flux2-klein personalizer on the tiny-flux2 profile: cached reference latents, seeds,
batching, buckets, two subjects, cancellation, and the engine end to end.

"Equal" means bit-identical pixels: on the CPU the FLUX.2 pipeline runs batch-invariant
kernels, so a seed gives the same image whatever it is batched with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import (
    ConceptFeatures,
    ConceptKind,
    DiffusionEngine,
    EngineSettings,
    InvalidRequest,
    RenderRequest,
    StaleFeatures,
    create_engine,
)
from engine.flux2.personalizer import FEATURE_KEY, Flux2KleinPersonalizer, load_flux2_personalizer
from engine.personalizers.base import BatchOutcome, LoadContext
from engine.subject_checks import FaceBox
from tests.fixtures.engine import make_photo


@pytest.fixture(scope="module")
def engine() -> Iterator[DiffusionEngine]:
    # A gather window long enough for concurrently submitted requests to share a batch.
    settings = EngineSettings(profile="tiny-flux2", offline=True, max_batch=8, gather_window_ms=60)
    built = asyncio.run(create_engine(settings))
    yield built
    asyncio.run(built.aclose())


@pytest.fixture(scope="module")
def person(engine: DiffusionEngine) -> ConceptFeatures:
    photos = [make_photo(seed) for seed in range(3)]
    return asyncio.run(engine.encode(photos, ConceptKind.PERSON, "flux2-klein"))


@pytest.fixture(scope="module")
def pet(engine: DiffusionEngine) -> ConceptFeatures:
    photos = [make_photo(seed) for seed in (10, 11)]
    return asyncio.run(engine.encode(photos, ConceptKind.PET, "flux2-klein"))


def _personalizer(engine: DiffusionEngine) -> Flux2KleinPersonalizer:
    personalizer = engine.model.personalizers["flux2-klein"]
    assert isinstance(personalizer, Flux2KleinPersonalizer)
    return personalizer


def _req(features: ConceptFeatures, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {
        "prompt": "a photo of the person from image 1",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 1.0,
        "scheduler": "euler",
        "personalizer": "flux2-klein",
        "features": features,
    }
    values.update(kw)
    return RenderRequest(**values)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _run(
    engine: DiffusionEngine,
    samples: Sequence[RenderRequest],
    seeds: Sequence[int],
    *,
    on_step: Callable[[int, int], Sequence[bool]] | None = None,
    buckets: Sequence[int] = (),
) -> BatchOutcome:
    """``run_batch`` on the model's thread, as the worker calls it."""
    personalizer, model = _personalizer(engine), engine.model

    def work() -> BatchOutcome:
        with torch.inference_mode():
            return personalizer.run_batch(
                model.pipe,
                samples,
                seeds,
                scheduler_config=model.scheduler_config,
                on_step=on_step,
                buckets=buckets,
            )

    result: BatchOutcome = asyncio.run(engine.call(work))
    return result


def test_encode_keeps_each_photos_reference_latents(
    engine: DiffusionEngine, person: ConceptFeatures
) -> None:
    latents = person.tensors[FEATURE_KEY]
    # 64 px references on the tiny VAE (8x), 2x2-patchified: 4 latent channels x 4 = 16.
    assert latents.shape == (3, 16, 4, 4) and person.photo_count == 3
    assert person.encoder_id == engine.encoder_id_for("flux2-klein")
    assert person.encoder_id.startswith("flux2-vae-64:")
    one = asyncio.run(engine.encode([make_photo(1)], "person", "flux2-klein"))
    assert torch.equal(one.tensors[FEATURE_KEY][0], latents[1])  # independent of the others


def test_a_persons_reference_is_cropped_around_the_face(engine: DiffusionEngine) -> None:
    personalizer = _personalizer(engine)
    photo = make_photo(5, size=256)
    face = FaceBox(left=150, top=150, right=190, bottom=190, score=2.0)
    whole, cropped = personalizer.reference_image(photo), personalizer.reference_image(photo, face)
    assert whole.size == cropped.size == (64, 64)
    expected = photo.crop((110, 110, 230, 230)).resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(_pixels(cropped), _pixels(expected))


def test_renders_use_the_cached_latents_never_the_vae_encoder(
    engine: DiffusionEngine, person: ConceptFeatures, pet: ConceptFeatures, monkeypatch: Any
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the VAE encoder ran during a render")

    monkeypatch.setattr(engine.model.pipe.vae, "encode", refuse)
    first = asyncio.run(engine.render(_req(person, seed=7)))
    other = asyncio.run(engine.render(_req(pet, seed=7)))
    again = asyncio.run(engine.render(_req(person, seed=7)))
    assert first.images[0].size == (64, 64) and first.is_noise
    assert np.array_equal(_pixels(first.images[0]), _pixels(again.images[0]))
    # The references do reach the model: another avatar, another image.
    assert not np.array_equal(_pixels(first.images[0]), _pixels(other.images[0]))


def test_stale_features_are_refused(
    engine: DiffusionEngine, person: ConceptFeatures, pet: ConceptFeatures
) -> None:
    stale = ConceptFeatures("flux2-vae-64:0000000000000000", ConceptKind.PET, dict(pet.tensors), 2)
    with pytest.raises(StaleFeatures):
        asyncio.run(engine.render(_req(stale)))
    with pytest.raises(StaleFeatures):
        asyncio.run(engine.render(_req(person, extra_subjects=(stale,))))


def test_sizes_must_be_multiples_of_16(engine: DiffusionEngine, person: ConceptFeatures) -> None:
    with pytest.raises(InvalidRequest, match="multiples of 16"):
        asyncio.run(engine.render(_req(person, width=72)))
    with pytest.raises(InvalidRequest, match=r"own FLUX\.2 pipeline"):
        _personalizer(engine).prepare(engine.model.pipe, None)  # type: ignore[arg-type]


def test_identity_strength_picks_how_many_photos_are_seen(
    engine: DiffusionEngine, person: ConceptFeatures, pet: ConceptFeatures
) -> None:
    personalizer = _personalizer(engine)
    counts = {
        s: personalizer.reference_count(_req(person, identity_strength=s))
        for s in (0.0, 0.3, 0.34, 0.5, 0.7, 1.0)
    }
    assert counts == {0.0: 1, 0.3: 1, 0.34: 2, 0.5: 2, 0.7: 3, 1.0: 3}
    # Different reference counts, different token layouts: they never share a batch.
    low, high = _req(person, identity_strength=0.3), _req(person, identity_strength=1.0)
    assert personalizer.batch_key(low) != personalizer.batch_key(high)
    # Two subjects: one reference each, first subject first ("image 1", "image 2").
    both = _req(person, extra_subjects=(pet,), identity_strength=1.0)
    refs = personalizer.references(both)
    assert len(refs) == 2
    assert torch.equal(refs[0], person.tensors[FEATURE_KEY][0])
    assert torch.equal(refs[1], pet.tensors[FEATURE_KEY][0])


def test_two_subjects_render(
    engine: DiffusionEngine, person: ConceptFeatures, pet: ConceptFeatures
) -> None:
    prompt = "the person from image 1 walking the dog from image 2 on a beach"
    both = asyncio.run(engine.render(_req(person, extra_subjects=(pet,), prompt=prompt, count=2)))
    alone = asyncio.run(engine.render(_req(person, prompt=prompt, count=2, identity_strength=0.3)))
    assert engine.max_subjects("flux2-klein") == 2 and len(both.images) == 2
    assert not np.array_equal(_pixels(both.images[0]), _pixels(alone.images[0]))


def test_a_seed_gives_the_same_image_alone_or_batched(
    engine: DiffusionEngine, person: ConceptFeatures, pet: ConceptFeatures
) -> None:
    mates = [
        _req(person, seed=3, prompt="a portrait"),
        _req(person, seed=40, prompt="a knight in armor"),
        _req(person, seed=41, prompt="an astronaut on the moon", identity_strength=0.7),
        _req(person, seed=42, prompt="a watercolor painting"),
    ]

    async def together() -> list[Any]:
        return list(await asyncio.gather(*(engine.render(r) for r in mates)))

    batched = asyncio.run(together())
    assert [r.timings["batch_images"] for r in batched] == [4.0, 4.0, 4.0, 4.0]
    alone = asyncio.run(engine.render(mates[0]))
    assert np.array_equal(_pixels(batched[0].images[0]), _pixels(alone.images[0]))
    # The scheduler field names Stable Diffusion schedulers: FLUX.2 ignores it.
    other = asyncio.run(engine.render(_req(person, seed=3, prompt="a portrait", scheduler="ddim")))
    assert np.array_equal(_pixels(other.images[0]), _pixels(alone.images[0]))


def test_bucket_padding_returns_only_the_real_images(
    engine: DiffusionEngine, person: ConceptFeatures
) -> None:
    samples = [_req(person, prompt=f"a photo number {i}") for i in range(3)]
    plain = _run(engine, samples, [5, 6, 7])
    padded = _run(engine, samples, [5, 6, 7], buckets=(1, 2, 4, 8))
    assert padded.kept == [0, 1, 2] and len(padded.images) == 3
    for a, b in zip(plain.images, padded.images, strict=True):
        assert np.array_equal(_pixels(a), _pixels(b))


def test_cancelling_every_sample_interrupts_denoising(
    engine: DiffusionEngine, person: ConceptFeatures, monkeypatch: Any
) -> None:
    transformer = engine.model.pipe.transformer
    calls: list[int] = []
    handle = transformer.register_forward_hook(lambda *args: calls.append(1))
    steps: list[tuple[int, int]] = []

    def cancel_after_first(done: int, total: int) -> list[bool]:
        steps.append((done, total))
        return [False, False]

    try:
        samples = [_req(person, steps=4), _req(person, steps=4)]
        outcome = _run(engine, samples, [1, 2], on_step=cancel_after_first)
    finally:
        handle.remove()
    assert outcome.images == [] and outcome.kept == []
    assert steps == [(1, 4)] and len(calls) == 1


def test_progress_reports_every_step_and_partial_cancels_run_on(
    engine: DiffusionEngine, person: ConceptFeatures
) -> None:
    steps: list[int] = []

    def keep_second(done: int, total: int) -> list[bool]:
        steps.append(done)
        return [False, True]

    outcome = _run(
        engine, [_req(person, steps=3), _req(person, steps=3)], [1, 2], on_step=keep_second
    )
    assert steps == [1, 2, 3]
    assert outcome.kept == [0, 1] and len(outcome.images) == 2  # the worker drops position 0


def test_the_personalizer_needs_a_flux2_profile() -> None:
    context = LoadContext(
        pipe=object(),
        options={},
        device=torch.device("cpu"),
        dtype=torch.float32,
        offline=True,
        cache_dir=None,
        workdir="/tmp",
    )
    with pytest.raises(InvalidRequest, match=r"FLUX\.2"):
        load_flux2_personalizer(context)


async def test_engine_end_to_end_encode_then_render() -> None:
    """The brief's path: a fresh tiny-flux2 engine, encode a person, render from the features
    after a round trip through bytes (as they are stored), with progress."""
    engine = await create_engine(EngineSettings(profile="tiny-flux2", offline=True))
    try:
        assert engine.default_personalizer == "flux2-klein" and engine.is_noise
        assert (engine.native_size, engine.default_steps, engine.default_guidance) == (64, 4, 1.0)
        photos = [make_photo(seed) for seed in range(2)]
        features = await engine.encode(photos, "person", "flux2-klein")
        stored = ConceptFeatures.from_bytes(features.to_bytes())
        progress: list[float] = []
        request = RenderRequest(
            prompt="a photo of the person from image 1 as an astronaut",
            personalizer="flux2-klein",
            features=stored,
            width=64,
            height=64,
            steps=2,
            guidance=1.0,
            seed=9,
        )
        result = await engine.render(request, progress.append)
        assert result.profile == "tiny-flux2" and result.personalizer == "flux2-klein"
        assert [im.size for im in result.images] == [(64, 64)] and result.seeds == [9]
        assert progress and progress[-1] == pytest.approx(1.0)
    finally:
        await engine.aclose()
