"""`avatarbot eval` end to end on the tiny engine: the grid, its files, the face, CLIP and toy
metrics, references from a stored avatar, and operator mistakes as one line with status 2.

Every command borrows the session's tiny engine (``create_engine`` is patched to lend it), so
no test loads a model of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.cli import main
from bot.services.ports import EnginePort
from tests.fixtures.services import face_photo, make_photo


class _Lent:
    """The session's engine lent to one command (which closes its engine at exit)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def eval_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_engine_port: EnginePort
) -> list[str]:
    """The tiny profile's environment; returns the profiles engines were asked for."""
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    monkeypatch.setenv("AVATARBOT_ENGINE__DEFAULT_STEPS", "2")
    monkeypatch.delenv("AVATARBOT_DATABASE_URL", raising=False)
    monkeypatch.delenv("AVATARBOT_DATA_KEY", raising=False)
    asked: list[str] = []

    async def create_engine(settings: Any) -> _Lent:
        asked.append(settings.profile)
        return _Lent(tiny_engine_port.engine)  # type: ignore[attr-defined]

    monkeypatch.setattr("engine.engine.create_engine", create_engine)
    return asked


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", "eval", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _folder(path: Path, photos: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in photos.items():
        (path / name).write_bytes(data)
    return path


def _astronauts(tmp_path: Path) -> Path:
    """scikit-image's astronaut twice: as taken, and mirrored at another size."""
    import io

    photo = face_photo()
    with Image.open(io.BytesIO(photo)) as image:
        mirrored = io.BytesIO()
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((400, 400)).save(mirrored, "PNG")
    return _folder(tmp_path / "refs", {"a.jpg": photo, "b.png": mirrored.getvalue()})


def test_person_grid_with_baseline_writes_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], eval_env: list[str]
) -> None:
    refs, out = _astronauts(tmp_path), tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("an astronaut on the moon\n\n", encoding="utf-8")
    code, stdout, err = _eval(
        capsys, "--photos", str(refs), "--prompt", "a photo of a person", "--prompts",
        str(prompts), "--strength", "0.3", "--strength", "1.0", "--seeds", "2", "--baseline",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert eval_env == ["tiny"]
    assert "12/12" in err  # the progress bar
    assert "random weights" in err
    assert stdout.splitlines()[-3:] == [
        str(out / "results.json"), str(out / "results.md"), str(out / "contact_sheet.png")
    ]  # fmt: skip

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (results["profile"], results["kind"], results["metric"]) == ("tiny", "person", "face")
    # dlib finds the astronaut's face in both references.
    assert [r["face"] for r in results["references"]] == [True, True]
    assert results["settings"]["prompts"] == ["a photo of a person", "an astronaut on the moon"]
    renders = results["renders"]
    keys = {(r["personalizer"], r["strength"], r["prompt_index"], r["seed"]) for r in renders}
    assert len(renders) == len(keys) == 12
    expected_rows = [("none", None), ("ip-adapter", 0.3), ("ip-adapter", 1.0)]
    assert {(p, s) for p, s, _, _ in keys} == set(expected_rows)
    assert {(i, seed) for _, _, i, seed in keys} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for render in renders:
        # Noise has no face: no score, counted as such, not a crash.
        assert render["identity"] is None and render["clip_text"] is None
        with Image.open(out / render["file"]) as image:
            assert image.size == (64, 64)
    rows = [(a["personalizer"], a["strength"]) for a in results["aggregates"]]
    assert rows == expected_rows
    for entry in results["aggregates"]:
        assert (entry["renders"], entry["found"], entry["not_found"]) == (4, 0, 4)
        assert entry["found_rate"] == 0.0 and entry["identity_mean"] is None

    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "| ip-adapter | 0.3 | 4 | – | – | 0% |" in markdown and "no face" in markdown
    with Image.open(out / "contact_sheet.png") as sheet:
        # references, baseline and two strengths; a column per prompt and seed
        assert sheet.width > 4 * 64 and sheet.height > 4 * 64


def _tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from engine.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
        "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    vision = {
        "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
        "num_hidden_layers": 2, "image_size": 32, "patch_size": 8,
    }  # fmt: skip
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"height": 32, "width": 32}
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size).save_pretrained(folder)
    return folder


def test_clip_scores_with_a_local_clip_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], eval_env: list[str]
) -> None:
    """Random CLIP weights: the scores mean nothing; the plumbing is what is checked."""
    photos = {f"p{i}.png": make_photo(i, size=256) for i in range(2)}
    refs, out = _folder(tmp_path / "refs", photos), tmp_path / "out"
    clip = _tiny_clip(tmp_path / "clip")
    code, _, err = _eval(
        capsys, "--photos", str(refs), "--kind", "object", "--prompt", "a red mug",
        "--seeds", "1", "--clip", str(clip), "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["metric"] is None and results["clip"] == str(clip)
    [render] = results["renders"]
    assert render["identity"] is None
    assert -1.0 <= render["clip_text"] <= 1.0 and -1.0 <= render["clip_image"] <= 1.0
    [entry] = results["aggregates"]
    assert entry["clip_text_mean"] == pytest.approx(render["clip_text"])
    assert entry["clip_image_mean"] == pytest.approx(render["clip_image"])


def test_the_toy_metric_is_looked_up_lazily(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], eval_env: list[str]
) -> None:
    photos = {f"p{i}.png": make_photo(i, size=128) for i in range(2)}
    refs, out = _folder(tmp_path / "refs", photos), tmp_path / "out"
    code, _, err = _eval(
        capsys, "--photos", str(refs), "--kind", "object", "--metric", "toy",
        "--prompt", "a toy", "--seeds", "1", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["metric"].startswith("toy")  # the toy world's metric, by its own name
    [render] = results["renders"]
    assert render["identity"] is None or 0.0 <= render["identity"] <= 1.0
    assert isinstance(render["scene"], str)


def test_references_from_a_stored_avatar(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    eval_env: list[str],
    tiny_engine_port: EnginePort,
) -> None:
    async def build_engine_port(settings: object) -> EnginePort:
        return _Lent(tiny_engine_port)  # type: ignore[return-value]

    monkeypatch.setattr("bot.engine_adapter.build_engine_port", build_engine_port)
    photos = []
    for i in range(2):
        photos.append(tmp_path / f"photo{i}.png")
        photos[-1].write_bytes(make_photo(i))
    argv = ["avatar", "create", "--user", "42", "--name", "Mug", "--kind", "object"]
    assert main(["--log-level", "WARNING", *argv, *map(str, photos), "--consent"]) == 0
    capsys.readouterr()

    out = tmp_path / "out"
    code, _, err = _eval(
        capsys, "--avatar", "mug", "--user", "42", "--prompt", "a mug", "--seeds", "1",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["kind"] == "object" and len(results["references"]) == 2
    assert results["source"] == "avatar 'mug' of user 42"
    code, _, err = _eval(
        capsys, "--avatar", "Rex", "--user", "42", "--prompt", "x", "--out", str(out)
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Rex" in err, err


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    photos = _folder(tmp_path / "photos", {"p0.png": make_photo(0, size=128)})
    _folder(tmp_path / "empty", {"notes.txt": b"no photos here"})
    _folder(tmp_path / "broken", {"p0.jpg": b"not a jpeg"})
    ok = ["--photos", str(photos), "--kind", "object", "--prompt", "a mug"]
    return {
        "no photos": (["--photos", str(tmp_path / "empty"), "--prompt", "x"], "no photos in"),
        "not a folder": (["--photos", str(tmp_path / "nowhere"), "--prompt", "x"], "not a folder"),
        "unreadable photo": (["--photos", str(tmp_path / "broken"), "--prompt", "x"], "p0.jpg"),
        "no face": (["--photos", str(photos), "--prompt", "x"], "no face found"),
        "unknown personalizer": ([*ok, "--personalizer", "dreambooth"], "'dreambooth'"),
        "prompt too long": ([*ok, "--prompt", "cat " * 100], "too long"),
        "missing CLIP folder": ([*ok, "--clip", str(tmp_path / "clip")], "CLIP"),
        "no prompt": (["--photos", str(photos)], "no prompts"),
        "strength": ([*ok, "--strength", "1.5"], "--strength"),
        "avatar without user": (["--avatar", "Mia", "--prompt", "x"], "--user"),
        "unknown profile": ([*ok, "--profile", "sd99"], "sd99"),
        "bad size": ([*ok, "--size", "100x64"], "--size"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no photos", "not a folder", "unreadable photo", "no face", "unknown personalizer",
        "prompt too long", "missing CLIP folder", "no prompt", "strength", "avatar without user",
        "unknown profile", "bad size",
    ],
)  # fmt: skip
def test_operator_mistakes_are_one_line_and_status_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], eval_env: list[str]
) -> None:
    argv, named = _bad_inputs(tmp_path)[case]
    code, _, err = _eval(capsys, *argv, "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("avatarbot eval: ") and named in err, err
    assert "Traceback" not in err
