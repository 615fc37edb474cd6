"""The fast path (engine/acceleration.py) on the CPU: settings, batch buckets, padded photo
slots, and compiled against eager for every personalizer.

Compiled vs eager tolerance: torch.compile fuses and reorders float operations, so images may
differ in the last bits; we accept at most 2/255 on any pixel channel and a mean difference
under 0.05/255. Buckets and photo slots without compiling change nothing: bit-identical.

The compiled engines are built once per module (each compile of the tiny UNet costs seconds
to tens of seconds on a CPU); they compile one bucket only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine import ConceptFeatures, ConceptKind, DiffusionEngine, RenderRequest, create_engine
from engine.acceleration import FastPath, bucket_for, resolve_fast_path
from engine.config import EngineSettings, FastPathSettings
from engine.pipeline import run_batch
from tests.fixtures.engine import make_photo

ALL_ON = FastPathSettings(
    channels_last="on",
    fuse_qkv="on",
    compile="on",
    compile_vae="on",
    batch_buckets=(2,),
    warmup="on",
)


def _req(features: ConceptFeatures | None, personalizer: str, **kw: Any) -> RenderRequest:
    values: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance": 5.0,
        "scheduler": "ddim",
        "identity_strength": 0.6,
        "features": features,
        "personalizer": personalizer,
    }
    values.update(kw)
    return RenderRequest(**values)


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))


# -- settings ----------------------------------------------------------------------------------


def test_auto_is_eager_on_a_cpu_and_on_forces_each_part() -> None:
    cpu = torch.device("cpu")
    assert resolve_fast_path(FastPathSettings(), cpu) == FastPath()
    fast = resolve_fast_path(ALL_ON.model_copy(update={"batch_buckets": (8, 1, 2, 2)}), cpu)
    assert fast.compile and fast.compile_vae and fast.channels_last and fast.fuse_qkv
    assert fast.buckets == (1, 2, 8) and fast.warmup and fast.static_graph
    assert "batch buckets 1/2/8" in fast.describe()
    only_vae = resolve_fast_path(FastPathSettings(compile_vae="on"), cpu)
    assert not only_vae.compile and only_vae.buckets == (1, 2, 4, 8, 16)
    with pytest.raises(ValueError, match="batch_buckets"):
        resolve_fast_path(FastPathSettings(compile="on", batch_buckets=(0,)), cpu)


def test_a_batch_goes_to_the_smallest_bucket_that_holds_it() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert bucket_for(9, (1, 2, 4, 8)) == 9  # larger than every bucket: as it is
    assert bucket_for(3, ()) == 3


# -- buckets without compiling: the same images ----------------------------------------------


def _unet_batch_sizes(engine: DiffusionEngine) -> tuple[list[int], Any]:
    sizes: list[int] = []

    def record(module: Any, args: tuple[Any, ...]) -> None:
        sizes.append(int(args[0].shape[0]))

    return sizes, engine.model.pipe.unet.register_forward_pre_hook(record)


def _run(
    engine: DiffusionEngine,
    samples: Sequence[RenderRequest],
    seeds: Sequence[int],
    *,
    buckets: Sequence[int] = (),
    wanted: Any = None,
) -> Any:
    personalizer = engine.model.personalizers[samples[0].personalizer]

    def work() -> Any:
        with torch.inference_mode():
            return run_batch(
                engine.model.pipe,
                personalizer,
                samples,
                seeds,
                scheduler_config=engine.model.scheduler_config,
                on_step=wanted,
                buckets=buckets,
            )

    return asyncio.run(engine.call(work))


def test_a_padded_batch_renders_the_same_images_and_drops_the_padding(
    tiny_engine: DiffusionEngine,
) -> None:
    features = asyncio.run(tiny_engine.encode([make_photo(1)], ConceptKind.PET))
    samples = [_req(features, "ip-adapter")] * 3
    plain = _run(tiny_engine, samples, [5, 6, 7])
    sizes, hook = _unet_batch_sizes(tiny_engine)
    try:
        padded = _run(tiny_engine, samples, [5, 6, 7], buckets=(1, 4))
    finally:
        hook.remove()
    assert padded.kept == [0, 1, 2]
    assert set(sizes) == {8}  # 4 samples (one of padding) × 2 rows of guidance
    for a, b in zip(plain.images, padded.images, strict=True):
        assert _diff(a, b).max() == 0


def test_cancelling_shrinks_only_to_a_bucket(tiny_engine: DiffusionEngine) -> None:
    samples = [_req(None, "none")] * 4
    sizes, hook = _unet_batch_sizes(tiny_engine)
    try:
        # After the first step only the first sample is still wanted.
        outcome = _run(
            tiny_engine,
            samples,
            [1, 2, 3, 4],
            buckets=(2, 4),
            wanted=lambda done, total: [True, False, False, False],
        )
    finally:
        hook.remove()
    assert sizes == [8, 4, 4]  # 4 samples, then bucket 2 (one row of padding), with guidance
    assert outcome.kept[0] == 0 and len(outcome.images) == len(outcome.kept)
    alone = _run(tiny_engine, samples[:1], [1])
    assert _diff(alone.images[0], outcome.images[0]).max() == 0


def test_masked_photo_slots_change_nothing_and_let_photo_counts_batch_together(
    tiny_engine: DiffusionEngine,
) -> None:
    ip = tiny_engine.model.personalizers["ip-adapter"]
    two = asyncio.run(tiny_engine.encode([make_photo(1), make_photo(2)], ConceptKind.PET))
    three = asyncio.run(tiny_engine.encode([make_photo(3)] * 3, ConceptKind.PET))
    unpadded = _run(tiny_engine, [_req(two, "ip-adapter")], [9])
    assert ip.batch_key(_req(two, "ip-adapter")) != ip.batch_key(_req(three, "ip-adapter"))
    ip._photo_slots = (4,)  # type: ignore[attr-defined]
    try:
        assert ip.batch_key(_req(two, "ip-adapter")) == ip.batch_key(_req(three, "ip-adapter"))
        mixed = _run(tiny_engine, [_req(two, "ip-adapter"), _req(three, "ip-adapter")], [9, 9])
    finally:
        ip._photo_slots = ()  # type: ignore[attr-defined]
    diff = _diff(unpadded.images[0], mixed.images[0])
    assert diff.max() <= 1, "padded photo slots must take no attention weight"
    assert _diff(mixed.images[0], mixed.images[1]).max() > 0  # the other avatar's render


# -- compiled against eager, every personalizer ------------------------------------------------


@pytest.fixture(scope="module", params=["tiny", "tiny-instantbooth", "tiny-flux2"])
def engines(request: pytest.FixtureRequest) -> Iterator[tuple[DiffusionEngine, DiffusionEngine]]:
    settings = EngineSettings(profile=request.param, max_batch=2, gather_window_ms=0)

    async def build() -> tuple[DiffusionEngine, DiffusionEngine]:
        eager = await create_engine(settings)
        compiled = await create_engine(settings.model_copy(update={"fast": ALL_ON}))
        return eager, compiled

    eager, compiled = asyncio.run(build())
    yield eager, compiled
    asyncio.run(eager.aclose())
    asyncio.run(compiled.aclose())


def test_compiled_renders_match_eager_within_tolerance_without_recompiling(
    engines: tuple[DiffusionEngine, DiffusionEngine],
) -> None:
    import torch._dynamo.utils

    eager, compiled = engines
    assert compiled.fast_path.compile and compiled.warmup_seconds > 0
    photos = [make_photo(4), make_photo(5)]
    for name in compiled.personalizers:
        features = None
        if compiled.model.personalizers[name].needs_features:
            features = asyncio.run(eager.encode(photos, ConceptKind.PET, name))
        extra = {"guidance": 1.0, "steps": 2} if name == "flux2-klein" else {}
        request = _req(features, name, count=2, seed=11, **extra)
        graphs = dict(torch._dynamo.utils.counters["stats"])
        fast = asyncio.run(compiled.render(request))
        # Warmed up: a request of a warmed bucket compiles nothing new.
        assert dict(torch._dynamo.utils.counters["stats"]) == graphs, name
        slow = asyncio.run(eager.render(request))
        for a, b in zip(slow.images, fast.images, strict=True):
            diff = _diff(a, b)
            assert diff.max() <= 2 and diff.mean() < 0.05, (name, diff.max(), diff.mean())


def test_the_published_tokenizer_counts_a_prompt_after_renders(
    tiny_engine: DiffusionEngine,
) -> None:
    from tokenizers import Tokenizer

    asyncio.run(tiny_engine.render(_req(None, "none")))  # pads its prompts to the window
    published = Tokenizer.from_str(tiny_engine.tokenizer_json() or "")
    text = "a photo of a cat on the beach"
    assert len(published.encode(text, add_special_tokens=False).ids) == (
        tiny_engine.count_tokens(text)
    )
