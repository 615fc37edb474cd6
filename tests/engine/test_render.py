"""The engine on the tiny profile: encode, render, batching, strengths, cancellation, staleness.

"Equal" means bit-identical pixels: on the CPU the engine runs batch-invariant kernels, so a
seed gives the same image whatever it is batched with.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import (
    ConceptFeatures,
    ConceptKind,
    DiffusionEngine,
    InvalidRequest,
    RenderRequest,
    RenderResult,
    StaleFeatures,
    UnknownPersonalizer,
)


def _req(features: ConceptFeatures | None, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 5.0,
        "scheduler": "ddim",
        "identity_strength": 0.6,
        "features": features,
        "personalizer": "ip-adapter" if features is not None else "none",
    }
    values.update(kw)
    return RenderRequest(**values)


def _pixels(result: RenderResult, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index])


@pytest.fixture
async def features(
    tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> ConceptFeatures:
    return await tiny_engine.encode(engine_photos, ConceptKind.PET)


async def test_encode_keeps_one_embedding_per_photo(
    tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    one = await tiny_engine.encode(engine_photos[:1], "object")
    three = await tiny_engine.encode(engine_photos, "object")
    assert one.encoder_id == three.encoder_id == tiny_engine.encoder_id
    assert tiny_engine.encoder_id.startswith("ip-adapter-plus:")
    # Plus: the image encoder's penultimate hidden states, (photos, tokens, width).
    assert three.tensors["image_embeds"].shape == (3, 65, 32)
    assert (one.photo_count, three.photo_count, three.kind) == (1, 3, ConceptKind.OBJECT)
    assert torch.equal(one.tensors["image_embeds"][0], three.tensors["image_embeds"][0])
    again = await tiny_engine.encode(engine_photos, "object")
    assert torch.equal(again.tensors["image_embeds"], three.tensors["image_embeds"])


async def test_render_shapes_seeds_and_determinism(
    tiny_engine: DiffusionEngine, features: ConceptFeatures
) -> None:
    result = await tiny_engine.render(_req(features, seed=11, count=2, width=64, height=96))
    assert result.seeds == [11, 12]
    assert [im.size for im in result.images] == [(64, 96), (64, 96)]
    assert result.is_noise and result.profile == "tiny" and result.personalizer == "ip-adapter"
    assert {"queued", "batch", "batch_images"} <= set(result.timings)
    again = await tiny_engine.render(_req(features, seed=11, count=2, width=64, height=96))
    assert np.array_equal(_pixels(result, 1), _pixels(again, 1))
    assert not np.array_equal(_pixels(result, 0), _pixels(result, 1))


async def test_cached_features_render_like_diffusers_fed_with_the_photos(
    tiny_engine: DiffusionEngine, engine_photos: list[Image.Image]
) -> None:
    """Features stored as bytes and rendered later == diffusers encoding the photos live."""
    stored = (await tiny_engine.encode(engine_photos, "pet")).to_bytes()
    cached = await tiny_engine.render(_req(ConceptFeatures.from_bytes(stored), seed=5))

    def live() -> Image.Image:
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        model = tiny_engine.model
        stock = StableDiffusionPipeline(**model.pipe.components)
        stock.set_progress_bar_config(disable=True)
        stock.scheduler = DDIMScheduler.from_config(model.scheduler_config)
        adapter = model.personalizers["ip-adapter"]
        with torch.inference_mode(), adapter.activated(model.pipe):  # type: ignore[attr-defined]
            stock.set_ip_adapter_scale(0.6)
            try:
                out = stock(
                    "a photo of a cat",
                    ip_adapter_image=[engine_photos],
                    generator=[torch.Generator().manual_seed(5)],
                    num_inference_steps=2,
                    guidance_scale=5.0,
                    height=64,
                    width=64,
                )
            finally:
                stock.set_ip_adapter_scale(1.0)
        return out.images[0]  # type: ignore[no-any-return]

    reference = await tiny_engine.call(live)
    assert np.array_equal(_pixels(cached), np.asarray(reference))


async def test_a_request_renders_the_same_alone_and_batched(
    tiny_engine: DiffusionEngine, features: ConceptFeatures, engine_photos: list[Image.Image]
) -> None:
    other = await tiny_engine.encode(engine_photos[::-1], "pet")
    target = _req(features, seed=42, prompt="a cat on a sofa")
    solo = await tiny_engine.render(target)
    batch = await asyncio.gather(
        tiny_engine.render(_req(other, seed=1, prompt="a dog", negative_prompt="blurry")),
        tiny_engine.render(target),
        tiny_engine.render(_req(features, seed=7, count=2, identity_strength=0.9)),
    )
    assert [r.timings["batch_images"] for r in batch] == [4.0, 4.0, 4.0]
    assert np.array_equal(_pixels(solo), _pixels(batch[1]))
    assert not np.array_equal(_pixels(batch[0]), _pixels(batch[1]))


async def test_without_guidance_a_single_row_still_matches_its_batched_self(
    tiny_engine: DiffusionEngine, features: ConceptFeatures
) -> None:
    # guidance 1: no classifier-free guidance, so a lone request is ONE UNet row.
    target = _req(features, seed=8, guidance=1.0, scheduler="euler_a")
    solo = await tiny_engine.render(target)
    pair = await asyncio.gather(
        tiny_engine.render(target),
        tiny_engine.render(_req(features, seed=9, guidance=1.0, scheduler="euler_a")),
    )
    assert pair[0].timings["batch_images"] == 2.0
    assert np.array_equal(_pixels(solo), _pixels(pair[0]))


async def test_identity_strength_applies_per_sample_inside_a_batch(
    tiny_engine: DiffusionEngine, features: ConceptFeatures
) -> None:
    strengths = (0.0, 0.5, 1.0)
    requests = [_req(features, seed=3, identity_strength=s) for s in strengths]
    batched = await asyncio.gather(*(tiny_engine.render(r) for r in requests))
    assert all(r.timings["batch_images"] == 3.0 for r in batched)
    for request, result in zip(requests, batched, strict=True):
        solo = await tiny_engine.render(request)
        assert np.array_equal(_pixels(solo), _pixels(result)), request.identity_strength
    assert not np.array_equal(_pixels(batched[1]), _pixels(batched[2]))
    # Strength 0 switches the photos off: plain text-to-image with the same seed.
    plain = await tiny_engine.render(_req(None, seed=3))
    assert np.array_equal(_pixels(plain), _pixels(batched[0]))


async def test_cancelling_one_request_mid_batch_drops_its_rows_and_keeps_the_others(
    tiny_engine: DiffusionEngine, features: ConceptFeatures
) -> None:
    import threading

    # A multistep solver: its remembered outputs must shrink with the batch too.
    requests = [_req(features, seed=s, steps=4, scheduler="dpmpp_2m") for s in (21, 22, 23)]
    unet = tiny_engine.model.pipe.unet
    rows: list[int] = []
    cancelled = threading.Event()

    def watch(module: Any, args: Any, kwargs: Any) -> None:
        rows.append(int(args[0].shape[0]))
        if len(rows) == 2:  # hold step 2 until the cancellation has landed
            cancelled.wait(10)

    tasks: list[asyncio.Task[RenderResult]] = []

    def cancel_middle(fraction: float) -> None:
        if not tasks[1].done() and not cancelled.is_set():
            tasks[1].cancel()
            asyncio.get_running_loop().call_soon(cancelled.set)

    hook = unet.register_forward_pre_hook(watch, with_kwargs=True)
    try:
        tasks.append(asyncio.create_task(tiny_engine.render(requests[0], cancel_middle)))
        tasks.extend(asyncio.create_task(tiny_engine.render(r)) for r in requests[1:])
        first, third = await tasks[0], await tasks[2]
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
    finally:
        hook.remove()
    # 3 samples x 2 (classifier-free guidance) rows, then the cancelled one's rows are gone
    # (after step 1 or 2, depending on when the cancellation reached the worker).
    assert rows in ([6, 4, 4, 4], [6, 6, 4, 4])
    assert first.timings["batch_images"] == 3.0
    # The survivors are not disturbed. Not bit-exact here: after the cut the UNet runs 4 rows,
    # and CPU kernels may round differently for that batch size than for the solo run's 2, so a
    # pixel may move by one level; a wrong row selection would change the whole image.
    for request, result in ((requests[0], first), (requests[2], third)):
        solo = _pixels(await tiny_engine.render(request)).astype(int)
        diff = np.abs(solo - _pixels(result).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


async def test_cancelling_before_the_batch_drops_the_request(
    tiny_engine: DiffusionEngine, features: ConceptFeatures, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    seen: list[list[int]] = []
    runner = tiny_engine._runner
    original = runner.run

    def recording_run(samples: Any, seeds: Any, on_step: Any) -> Any:
        seen.append(list(seeds))
        return original(samples, seeds, on_step)

    monkeypatch.setattr(runner, "run", recording_run)
    # Count what reaches the worker's queue, to cancel only once the render waits in it.
    worker = tiny_engine._worker
    enqueue = worker._enqueue
    queued = asyncio.Semaphore(0)

    def counting(job: Any) -> None:
        enqueue(job)
        queued.release()

    monkeypatch.setattr(worker, "_enqueue", counting)
    busy, gate = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        gate.wait(10)

    blocker = asyncio.create_task(tiny_engine.call(hold))
    loop = asyncio.get_running_loop()
    # Every wait is bounded: a hang fails the test.
    assert await asyncio.wait_for(loop.run_in_executor(None, busy.wait, 10), 15)
    await asyncio.wait_for(queued.acquire(), 10)  # the blocker
    doomed = asyncio.create_task(tiny_engine.render(_req(features, seed=901)))
    await asyncio.wait_for(queued.acquire(), 10)  # the render, queued behind the blocker
    doomed.cancel()
    gate.set()
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await doomed
    after = await tiny_engine.render(_req(features, seed=902))
    assert after.seeds == [902]
    assert seen == [[902]]


async def test_stale_features_are_refused_loudly(
    tiny_engine: DiffusionEngine, features: ConceptFeatures
) -> None:
    stale = ConceptFeatures("ip-adapter-plus:0000000000000000", "pet", features.tensors, 3)
    with pytest.raises(StaleFeatures) as info:
        await tiny_engine.render(_req(stale))
    assert info.value.expected == tiny_engine.encoder_id
    with pytest.raises(InvalidRequest):
        await tiny_engine.render(_req(None, personalizer="ip-adapter"))
    with pytest.raises(UnknownPersonalizer):
        await tiny_engine.render(_req(features, personalizer="dreambooth"))


async def test_the_worker_survives_a_failing_request(
    tiny_engine: DiffusionEngine, features: ConceptFeatures
) -> None:
    # Right encoder id, wrong width: the UNet's projection fails on it, inside the worker.
    broken = ConceptFeatures(
        tiny_engine.encoder_id, "pet", {"image_embeds": torch.zeros(3, 65, 31)}, 3
    )
    with pytest.raises(RuntimeError):
        await tiny_engine.render(_req(broken))
    result = await tiny_engine.render(_req(features, seed=77))
    assert result.seeds == [77]


async def test_person_photos_are_cropped_to_the_face(tiny_engine: DiffusionEngine) -> None:
    if tiny_engine.model.detector is None:
        pytest.skip("no face detector (the faces extra is not installed)")
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    as_person = await tiny_engine.encode([astronaut], "person")
    as_object = await tiny_engine.encode([astronaut], "object")
    reports = await tiny_engine.inspect([astronaut], "person")
    face = reports[0].primary_face
    assert face is not None
    cropped = astronaut.crop(face.expanded(0.5, astronaut.size))
    adapter = tiny_engine.model.personalizers["ip-adapter"]
    expected = await tiny_engine.call(lambda: adapter.encode_images([cropped]))  # type: ignore[attr-defined]
    assert torch.equal(as_person.tensors["image_embeds"], expected.cpu())
    assert not torch.equal(as_person.tensors["image_embeds"], as_object.tensors["image_embeds"])


async def test_engine_facts(tiny_engine: DiffusionEngine) -> None:
    assert tiny_engine.personalizers == ["ip-adapter", "none"]
    assert tiny_engine.default_personalizer == "ip-adapter"
    assert tiny_engine.encoder_id_for("none") == "none"
    assert tiny_engine.native_size == 64 and tiny_engine.max_prompt_tokens == 75
    assert tiny_engine.count_tokens("ab c") == 3  # byte-level: a, b</w>, c</w>
    assert str(tiny_engine.device) == "cpu"
