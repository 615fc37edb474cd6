"""The toy world's IP-Adapter baseline on the quick base: the stage trains weights (and skips
when they exist) and the real engine's ``ip-adapter`` personalizer renders with them,
deterministically per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import toyworld
from bench.toyworld_ipadapter import (
    ARM,
    ipadapter_weights,
    render_ipadapter,
    render_ipadapter_arms,
    stage_ipadapter,
)
from bench.toyworld_plan import QUICK, BaselineInputs, BaselineResult, Paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("toyworld-ipadapter")
    code = toyworld.main(
        ["--quick", "--workdir", str(root), "--out", str(root / "out"), "--threads", "1",
         "--stages", "data,vae,unet"]
    )  # fmt: skip
    torch.set_num_threads(threads)
    assert code == 0
    paths = Paths(root)
    info = stage_ipadapter(QUICK, paths, seed=0)
    assert info["steps"] == QUICK.ip_steps
    return paths


def test_the_stage_writes_weights_once(trained: Paths) -> None:
    weights = ipadapter_weights(trained)
    assert weights.is_file()
    assert (weights.parent / "image_encoder" / "config.json").is_file()
    stamp = weights.stat().st_mtime_ns
    assert stage_ipadapter(QUICK, trained, seed=0)["skipped"] is True
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.usefixtures("torch_globals")
def test_the_engine_renders_with_the_weights_deterministically(trained: Paths) -> None:
    from avatarbot_research.toyworld import reference_photos, subject

    sid = json.loads(trained.split.read_text())["heldout"][0]
    refs = {sid: reference_photos(subject(sid), 2, QUICK.size, seed=0)}
    places, seeds = ["beach", "forest"], [0, 1]
    threads = torch.get_num_threads()
    inputs = BaselineInputs([sid], refs, places, seeds)
    full, off = render_ipadapter_arms(QUICK, trained, inputs, (1.0, 0.0))
    assert torch.get_num_threads() == threads  # the tiny profile's one thread is undone
    assert full.arm == ARM and off.arm == f"{ARM}, scale 0"
    assert set(full.images) == {(sid, p, s) for p in places for s in seeds}
    assert all(image.size == (QUICK.size, QUICK.size) for image in full.images.values())
    assert set(full.seconds_per_subject) == {sid}
    again = render_ipadapter_arms(QUICK, trained, inputs, (1.0, 0.0))
    for first, second in zip((full, off), again, strict=True):
        assert all(
            np.array_equal(np.asarray(v), np.asarray(second.images[k]))
            for k, v in first.images.items()
        )
    pixels = {k: np.asarray(v) for k, v in full.images.items()}
    # The adapter is in the loop: its scale changes the pictures; seeds change them too.
    assert any(not np.array_equal(pixels[k], np.asarray(off.images[k])) for k in pixels)
    assert not np.array_equal(pixels[(sid, "beach", 0)], pixels[(sid, "beach", 1)])
    one = render_ipadapter(QUICK, trained, BaselineInputs([sid], refs, ["beach"], [0]))
    assert isinstance(one, BaselineResult) and one.arm == ARM
    assert set(one.images) == {(sid, "beach", 0)}
