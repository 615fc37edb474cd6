"""`avatarbot engine encode|render` on the tiny profile, offline, through the real CLI entry."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from engine import ConceptFeatures, ConceptKind
from tests.fixtures.engine import make_photo


@pytest.fixture
def photo_files(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in range(2):
        path = tmp_path / f"photo{seed}.png"
        make_photo(seed).save(path)
        paths.append(path)
    return paths


def test_encode_then_render_offline(
    photo_files: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    features_path = tmp_path / "cat.features"
    encode = ["engine", "encode", *map(str, photo_files), "--kind", "pet"]
    status = main([*encode, "--out", str(features_path), "--profile", "tiny"])
    assert status == 0
    features = ConceptFeatures.from_bytes(features_path.read_bytes())
    assert (features.photo_count, features.kind) == (2, ConceptKind.PET)

    out = tmp_path / "renders"
    render = ["engine", "render", "--features", str(features_path), "--prompt", "a cat"]
    options = ["--seed", "7", "--count", "2", "--steps", "2", "--size", "64x96"]
    status = main([*render, *options, "--out", str(out), "--profile", "tiny", "--offline"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["seed-7.png", "seed-8.png"]
    with Image.open(out / "seed-7.png") as image:
        assert image.size == (64, 96)
    assert "render" in captured.err  # the progress bar
    assert "noise" in captured.err  # the tiny profile says what it renders


def test_render_refuses_corrupt_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.features"
    bad.write_bytes(b"not features at all")
    render = ["engine", "render", "--features", str(bad), "--prompt", "a cat"]
    status = main([*render, "--out", str(tmp_path / "out"), "--profile", "tiny"])
    assert status == 1
    assert "cannot use features" in capsys.readouterr().err


def test_unknown_profile_is_a_clean_error(
    photo_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encode = ["engine", "encode", str(photo_files[0]), "--out", str(tmp_path / "f")]
    status = main([*encode, "--profile", "no-such-profile"])
    assert status == 1
    assert "unknown engine profile" in capsys.readouterr().err
