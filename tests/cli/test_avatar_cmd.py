"""`avatarbot avatar ...` end to end on the tiny engine: create, list, render, usage, delete,
forget-me, as an operator would run them (one process per command, one SQLite file)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from bot.services.ports import EnginePort
from tests.fixtures.services import make_photo


class SharedEngine:
    """The session's tiny engine lent to each command (which closes its engine at exit)."""

    def __init__(self, inner: EnginePort) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def aclose(self) -> None:
        return None


def lend_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: EnginePort, profile: str
) -> None:
    """Each command on ``profile`` with ``engine`` lent, one SQLite file under ``tmp_path``."""
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", profile)
    monkeypatch.setenv("AVATARBOT_ENGINE__DEFAULT_STEPS", "2")
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    monkeypatch.delenv("AVATARBOT_DATA_KEY", raising=False)

    async def build_engine_port(settings: object) -> EnginePort:
        return SharedEngine(engine)  # type: ignore[return-value]

    monkeypatch.setattr("bot.engine_adapter.build_engine_port", build_engine_port)


def assert_tiny_pngs(paths: list[str]) -> None:
    """Each file is a PNG the size the tiny profile renders."""
    for name in paths:
        with Image.open(io.BytesIO(Path(name).read_bytes())) as image:
            assert (image.format, image.size) == ("PNG", (64, 64))


def test_avatar_session(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_engine_port: EnginePort,
) -> None:
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    monkeypatch.setenv("AVATARBOT_ENGINE__DEFAULT_STEPS", "2")
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    monkeypatch.delenv("AVATARBOT_DATA_KEY", raising=False)
    loads: list[str] = []

    async def build_engine_port(settings: object) -> EnginePort:
        loads.append("engine")
        return SharedEngine(tiny_engine_port)  # type: ignore[return-value]

    monkeypatch.setattr("bot.engine_adapter.build_engine_port", build_engine_port)
    photos = []
    for i in range(2):
        path = tmp_path / f"photo{i}.png"
        path.write_bytes(make_photo(i))
        photos.append(str(path))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--log-level", "WARNING", "avatar", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = run("create", "--user", "42", "--name", "Mia", "--kind", "object", *photos)
    assert code == 2 and "--consent" in err and loads == []
    missing = str(tmp_path / "missing.png")
    code, _, err = run("create", "--user", "42", "--name", "Mia", missing, "--consent")
    assert code == 1 and f"cannot read {missing}" in err and loads == []
    code, out, _ = run(
        "create", "--user", "42", "--name", "Mia", "--kind", "object", *photos, "--consent"
    )
    assert code == 0 and "created object avatar “Mia” with 2 photo(s)" in out
    code, out, _ = run("list", "--user", "42")
    assert code == 0 and out.startswith("Mia\tobject\t2 photo(s)")
    assert loads == ["engine"]  # listing needs no engine

    out_dir = tmp_path / "renders"
    code, out, err = run(
        "render", "--user", "42", "--avatar", "mia", "--prompt", "a cat",
        "--count", "2", "--seed", "7", "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    written = out.split()
    # Job 1 was the avatar's creation (its checks and encoding); job 2 the render.
    assert written == [str(out_dir / "job2-seed7.png"), str(out_dir / "job2-seed8.png")]
    assert_tiny_pngs(written)
    assert "render: 100%" in err  # the progress bar, complete
    assert "note: profile tiny runs random weights; these images are noise" in err
    # Each file's likeness on stderr (an object: the tiny CLIP's image similarity).
    assert re.search(r"^job2-seed7\.png: likeness \d{1,3} %$", err, re.MULTILINE), err
    code, out, _ = run("usage", "--user", "42")
    # No --guild: the personal scope (Settings.personal_quotas, 5 a day by default).
    assert code == 0 and out.startswith("1 of 5 renders used today; 4 left")

    # The job's history, as an operator reads it.
    code = main(["--log-level", "WARNING", "job", "show", "2"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("job 2: render for user 42, done")
    assert "attempts  1 counted, 1 in all" in out
    [attempt] = [line for line in out.splitlines() if line.strip().startswith("#")]
    assert attempt.strip().startswith("#1 ") and attempt.rstrip().endswith("done")
    code = main(["--log-level", "WARNING", "job", "show", "99"])
    assert code == 1 and "There is no job 99." in capsys.readouterr().err
    code = main(["--log-level", "WARNING", "job", "workers"])
    assert code == 0 and "no job loop has run" in capsys.readouterr().out

    # Best of k: out of bounds refused before loading an engine; best of 2 keeps one image
    # of two candidates (seeds 3 and 4) and counts as two renders.
    before = len(loads)
    code, _, err = run(
        "render", "--user", "42", "--avatar", "Mia", "--prompt", "x", "--best-of", "5"
    )
    assert code == 2 and "--best-of must be 1 to 4" in err and len(loads) == before
    code, out, err = run(
        "render", "--user", "42", "--avatar", "Mia", "--prompt", "a cat", "--seed", "3",
        "--best-of", "2", "--out", str(out_dir),
    )  # fmt: skip
    assert code == 0, err
    [kept] = out.split()
    assert kept in (str(out_dir / "job3-seed3.png"), str(out_dir / "job3-seed4.png"))
    code, out, _ = run("usage", "--user", "42")
    assert out.startswith("3 of 5 renders used today")

    # Two avatars in one picture: the same one twice is refused before loading an engine;
    # the tiny profile's IP-Adapter shows one avatar, so ``--with`` is refused, uncounted.
    before = len(loads)
    code, _, err = run(
        "render", "--user", "42", "--avatar", "Mia", "--with", " mia ", "--prompt", "x"
    )
    assert code == 2 and "--with must name another avatar" in err and len(loads) == before
    code, _, _ = run(
        "create", "--user", "42", "--name", "Rex", "--kind", "object", photos[0], "--consent"
    )
    assert code == 0
    code, _, err = run(
        "render", "--user", "42", "--avatar", "Mia", "--with", "Rex",
        "--prompt", "the mug from image 1 and the box from image 2",
    )  # fmt: skip
    assert code == 1 and "shows one avatar per picture" in err
    code, out, _ = run("usage", "--user", "42")
    assert out.startswith("3 of 5 renders used today")

    code, _, err = run("render", "--user", "43", "--avatar", "Mia", "--prompt", "a cat")
    assert code == 1 and "no avatar" in err  # another user's avatar does not exist for them
    code, out, _ = run("delete", "--user", "42", "--avatar", "Mia")
    assert code == 0
    code, out, _ = run("forget-me", "--user", "42", "--yes")
    assert code == 0 and "2 job(s), 3 image(s)" in out
    code, out, _ = run("list", "--user", "42")
    assert out.strip() == "user 42 has no avatars"
    code, _, err = run("reencrypt")
    assert code == 2 and "AVATARBOT_DATA_KEY" in err


def test_render_with_a_second_avatar_on_tiny_flux2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tiny_flux2_port: EnginePort,
) -> None:
    lend_engine(monkeypatch, tmp_path, tiny_flux2_port, "tiny-flux2")
    for i, name in enumerate(("Mug", "Box")):
        path = tmp_path / f"{name}.png"
        path.write_bytes(make_photo(10 + i))
        argv = ["create", "--user", "42", "--name", name, "--kind", "object", str(path)]
        assert main(["--log-level", "WARNING", "avatar", *argv, "--consent"]) == 0
    capsys.readouterr()

    out_dir = tmp_path / "renders"
    code = main([
        "--log-level", "WARNING", "avatar", "render", "--user", "42", "--avatar", "Mug",
        "--with", "Box", "--prompt", "the mug from image 1 and the box from image 2",
        "--seed", "3", "--out", str(out_dir),
    ])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # Jobs 1 and 2 created the avatars; job 3 rendered both.
    assert printed.out.split() == [str(out_dir / "job3-seed3.png")]
    with Image.open(out_dir / "job3-seed3.png") as image:
        assert image.format == "PNG"
