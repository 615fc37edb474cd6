"""The output check (engine/safety.py) with the real nudenet detector, no fake: safe photos
pass the default policy, threshold 0 flags every image (the blocking path), scores are kept;
diffusers' safety checker on a tiny random-weight model saved in a model folder's layout; and
it fails closed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.errors import AvatarbotError
from bot.services.ports import EnginePort, OutputPolicy, RenderSpec
from bot.services.results import RenderSettings
from engine.safety import (
    DIFFUSERS_NSFW_SCORE,
    DIFFUSERS_SAFETY_CHECKER,
    NUDENET,
    DiffusersSafetyChecker,
    NudeNetChecker,
    OutputChecker,
    SafetyCheckUnavailable,
    SafetyPolicy,
    has_diffusers_safety_checker,
    safety_checker_folder,
)
from kinds import SubjectKind


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def cat() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="module")
def nudenet() -> NudeNetChecker:
    checker = NudeNetChecker()
    checker.load()
    return checker


def test_safe_photos_pass_the_default_policy(nudenet: NudeNetChecker) -> None:
    verdicts = nudenet.check([astronaut(), cat()])
    assert [v.flagged for v in verdicts] == [False, False]
    assert all(v.checkers == (NUDENET,) for v in verdicts)
    # The detector really ran: it sees the astronaut's face, and records its score.
    assert verdicts[0].scores["FACE_FEMALE"] > 0.5
    assert not any("EXPOSED" in label for v in verdicts for label in v.scores)


def test_threshold_zero_flags_every_image(nudenet: NudeNetChecker) -> None:
    strict = SafetyPolicy(threshold=0.0)
    verdicts = nudenet.check([astronaut(), cat()], strict)
    assert [v.flagged for v in verdicts] == [True, True]
    # Scores are the same whatever the policy: only the decision changes.
    assert verdicts[0].scores == nudenet.check([astronaut()])[0].scores


def test_a_class_it_reports_flags_at_its_score(nudenet: NudeNetChecker) -> None:
    face = nudenet.scores(astronaut())["FACE_FEMALE"]
    assert nudenet.check([astronaut()], SafetyPolicy(face, ("FACE_FEMALE",)))[0].flagged
    assert not nudenet.check([astronaut()], SafetyPolicy(face + 0.01, ("FACE_FEMALE",)))[0].flagged


def test_the_detector_loads_once(nudenet: NudeNetChecker) -> None:
    detector = nudenet._detector
    nudenet.check([cat()])
    nudenet.load()
    assert nudenet._detector is detector


def test_without_nudenet_the_check_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet -> ImportError
    with pytest.raises(SafetyCheckUnavailable, match="nudenet could not load"):
        NudeNetChecker().check([cat()])


def _tiny_safety_checker(folder: Path, *, flag_everything: bool = False) -> Path:
    """A random-weight ``StableDiffusionSafetyChecker`` (tiny CLIP) and its feature extractor,
    saved as in stable-diffusion-v1-5's folder. With ``flag_everything`` its concept
    thresholds are below any cosine similarity, so every image is an NSFW concept."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    model = StableDiffusionSafetyChecker(config).eval()
    if flag_everything:
        with torch.no_grad():
            model.concept_embeds_weights.fill_(-2.0)
    model.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder / "feature_extractor")
    return folder


def test_diffusers_safety_checker_from_a_model_folder(tmp_path: Path) -> None:
    folder = _tiny_safety_checker(tmp_path / "model")
    assert has_diffusers_safety_checker(folder)
    assert safety_checker_folder(str(folder)) == folder
    assert safety_checker_folder(str(tmp_path / "missing")) is None
    assert safety_checker_folder(None) is None  # random weights (tiny)

    checker = OutputChecker(NudeNetChecker(), DiffusersSafetyChecker(folder))
    verdicts = checker.check([astronaut(), cat()])
    assert [v.flagged for v in verdicts] == [False, False]
    assert all(v.checkers == (NUDENET, DIFFUSERS_SAFETY_CHECKER) for v in verdicts)
    assert all(v.scores[DIFFUSERS_NSFW_SCORE] == 0.0 for v in verdicts)


def test_diffusers_safety_checker_flags_on_its_own(tmp_path: Path) -> None:
    folder = _tiny_safety_checker(tmp_path / "model", flag_everything=True)
    checker = OutputChecker(NudeNetChecker(), DiffusersSafetyChecker(folder))
    [verdict] = checker.check([cat()])  # nudenet passes it; the diffusers checker does not
    assert verdict.flagged
    assert verdict.scores[DIFFUSERS_NSFW_SCORE] == 1.0


def test_a_broken_diffusers_safety_checker_fails_closed(tmp_path: Path) -> None:
    folder = _tiny_safety_checker(tmp_path / "model")
    for weights in (folder / "safety_checker").glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    checker = OutputChecker(NudeNetChecker(), DiffusersSafetyChecker(folder))
    with pytest.raises(SafetyCheckUnavailable, match="could not load"):
        checker.check([cat()])


# -- through the adapter: every render comes with one verdict per image ------------------


def _spec(policy: OutputPolicy | None = None, count: int = 2) -> RenderSpec:
    settings = RenderSettings(
        negative_prompt="",
        style="none",
        aspect="square",
        width=64,
        height=64,
        steps=2,
        guidance=6.0,
        count=count,
        seed=3,
        identity_strength=0.7,
        personalizer="ip-adapter",
    )
    return RenderSpec("a mug on a table", "", settings, output_policy=policy)


async def _features(port: EnginePort) -> bytes:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return (await port.encode([photo], SubjectKind.OBJECT, "ip-adapter")).data


async def test_renders_come_with_verdicts(tiny_engine_port: EnginePort) -> None:
    features = await _features(tiny_engine_port)
    passed = await tiny_engine_port.render(_spec(), features)
    assert len(passed.verdicts) == len(passed.pngs) == 2
    assert [v.flagged for v in passed.verdicts] == [False, False]  # tiny renders noise
    assert all(v.checkers == (NUDENET,) for v in passed.verdicts)

    strict = OutputPolicy(threshold=0.0, classes=("FEMALE_BREAST_EXPOSED",))
    flagged = await tiny_engine_port.render(_spec(strict), features)
    assert [v.flagged for v in flagged.verdicts] == [True, True]
    assert flagged.pngs == passed.pngs  # the check decides; it never alters an image


async def test_the_adapter_fails_closed(
    tiny_engine_port: EnginePort, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.engine_adapter import EngineAdapter

    assert isinstance(tiny_engine_port, EngineAdapter)
    features = await _features(tiny_engine_port)
    broken = EngineAdapter(tiny_engine_port.engine, OutputChecker(NudeNetChecker()))
    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(AvatarbotError) as caught:
        await broken.render(_spec(count=1), features)
    assert caught.value.code == "safety_check_unavailable"
    assert "nothing was posted" in caught.value.message
