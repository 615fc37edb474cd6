"""`avatarbot avatar upscale|vary` on the tiny engine (issue 25): one image of a finished
render re-rendered, waited for and written like a render's."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from bot.services.ports import EnginePort
from tests.cli.test_avatar_cmd import lend_engine
from tests.fixtures.services import make_photo


def sizes(paths: list[str]) -> list[tuple[int, int]]:
    out = []
    for name in paths:
        with Image.open(io.BytesIO(Path(name).read_bytes())) as image:
            out.append(image.size)
    return out


def test_upscale_and_vary(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_engine_port: EnginePort,
) -> None:
    monkeypatch.setenv("AVATARBOT_UPSCALE_UNITS", "2")
    lend_engine(monkeypatch, tmp_path, tiny_engine_port, "tiny")
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_photo(3))

    def run(*argv: str) -> tuple[int, str, str]:
        """One command; its exit status and what it printed."""
        status = main(["--log-level", "WARNING", "avatar", *argv])
        printed = capsys.readouterr()
        return status, printed.out, printed.err

    code, _, err = run(
        "create", "--user", "42", "--name", "Mia", "--kind", "object", str(photo), "--consent"
    )
    assert code == 0, err
    out_dir = str(tmp_path / "renders")
    code, out, err = run(
        "render", "--user", "42", "--avatar", "Mia", "--prompt", "a cat", "--count", "2",
        "--out", out_dir,
    )  # fmt: skip
    assert code == 0, err
    assert sizes(out.split()) == [(64, 64)] * 2

    # Job 1 was the avatar's creation, job 2 the render.
    code, out, err = run("upscale", "--user", "42", "--job", "2", "--index", "2", "--out", out_dir)
    assert code == 0, err
    [upscaled] = out.split()
    assert upscaled.startswith(str(Path(out_dir) / "job3-")) and sizes([upscaled]) == [(128, 128)]
    code, out, err = run(
        "vary", "--user", "42", "--job", "2", "--index", "1", "--strength", "strong",
        "--out", out_dir,
    )  # fmt: skip
    assert code == 0, err
    assert sizes(out.split()) == [(64, 64)] * 2
    code, out, _ = run("usage", "--user", "42")
    assert out.startswith("4 of 5 renders used today")  # personal scope: 1 + the upscale's 2 + 1

    code, _, err = run("upscale", "--user", "43", "--job", "2", "--index", "1")
    assert code == 1 and "Only the member who asked" in err
    code, _, err = run("vary", "--user", "42", "--job", "2", "--index", "5")
    assert code == 1 and "no image 5" in err
