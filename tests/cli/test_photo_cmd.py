"""`avatarbot photo check` over the whole hostile corpus, in-process and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main
from bot.services.photo_intake import display_name
from tests.fixtures.photos import CorpusCase


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The verdicts below assume the default photo limits: ignore a developer's environment.
    for key in list(os.environ):
        if key.startswith("AVATARBOT_"):
            monkeypatch.delenv(key)


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["photo", "check", *args])
    return status, capsys.readouterr().out


def test_json_verdict_for_every_corpus_file(
    photo_corpus: list[CorpusCase], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _check(capsys, "--json", *(str(c.path) for c in photo_corpus))
    verdicts = json.loads(out)
    assert status == 1
    assert [v["file"] for v in verdicts] == [str(c.path) for c in photo_corpus]
    for case, verdict in zip(photo_corpus, verdicts, strict=True):
        assert verdict["reason"] == case.expected_reason, (case.name, verdict)
        assert verdict["ok"] is (case.expected_reason is None)
        if verdict["ok"]:
            assert verdict["format"] in ("JPEG", "PNG") and len(verdict["sha256"]) == 64
            assert 0 < verdict["width"] <= 1024 and 0 < verdict["height"] <= 1024
            assert verdict["bytes"] > 0 and verdict["message"] is None
        else:
            assert verdict["message"].startswith(f"`{display_name(case.filename)}` ")


def test_text_output_and_exit_status_when_all_are_accepted(
    photo_corpus: list[CorpusCase], capsys: pytest.CaptureFixture[str]
) -> None:
    by_name = {c.name: c for c in photo_corpus}
    chosen = [by_name[n] for n in ("jpeg_baseline", "heic_phone", "png_rgba")]
    status, out = _check(capsys, *(str(c.path) for c in chosen))
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{chosen[0].path}: ok 640x480 JPEG ")
    assert all(": ok " in line and "sha256=" in line for line in lines)


def test_text_output_neutralises_hostile_filenames(
    photo_corpus: list[CorpusCase], capsys: pytest.CaptureFixture[str]
) -> None:
    by_name = {c.name: c for c in photo_corpus}
    hostile, empty = by_name["control_chars_filename"], by_name["empty"]
    status, out = _check(capsys, str(hostile.path), str(empty.path))
    assert status == 1
    lines = out.split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert all(line.isprintable() for line in lines)  # no ESC, CR, bidi override
    assert "/evil?[2J???gpj.jpg: ok 400x400 JPEG " in lines[0]
    assert lines[1].endswith("empty: `empty.jpg` is empty.")


def test_unreadable_and_oversized_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sparse = tmp_path / "sparse.jpg"
    with sparse.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB that takes no disk: refused from its size, never read
    status, out = _check(
        capsys, "--json", str(tmp_path / "missing.jpg"), str(tmp_path), str(sparse)
    )
    verdicts = json.loads(out)
    assert status == 1
    assert [v["reason"] for v in verdicts] == ["unreadable", "unreadable", "too_large_bytes"]
    assert "No such file" in verdicts[0]["message"]
    assert verdicts[2]["message"] == "`sparse.jpg` is 1024.0 MB, over the 20 MB limit."


def test_as_a_real_subprocess(photo_corpus: list[CorpusCase]) -> None:
    script = Path(sys.executable).with_name("avatarbot")
    assert script.exists(), "the console script is installed with the project"
    by_name = {c.name: c for c in photo_corpus}
    chosen = [by_name[n] for n in ("jpeg_exif_orientation_6", "png_bomb_20000x20000", "svg")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    proc = subprocess.run(
        [str(script), "photo", "check", "--json", *(str(c.path) for c in chosen)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    verdicts = json.loads(proc.stdout)
    assert [v["reason"] for v in verdicts] == [None, "too_many_pixels", "unsupported_format"]
    assert (verdicts[0]["width"], verdicts[0]["height"]) == (600, 400)  # upright
    assert (verdicts[0]["original_width"], verdicts[0]["original_height"]) == (400, 600)


def test_kind_runs_creations_subject_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = Path(__file__).parents[2] / "bot" / "assets" / "samples"
    person_1, person_2, cat = (samples / n for n in ("person-1.jpg", "person-2.jpg", "cat-1.jpg"))
    hopper = Path(__file__).parents[1] / "fixtures" / "faces" / "grace_hopper.jpg"

    # Intake alone says ok to a cat as a person; the subject checks do not.
    status, out = _check(capsys, "--kind", "person", str(person_1), str(person_2), str(cat))
    assert status == 1
    lines = out.splitlines()
    assert lines[0].endswith("(person)") and ": ok " in lines[1]
    assert lines[2].startswith(f"{cat}: no_face: `cat-1.jpg`: no face found.")
    status, out = _check(capsys, "--kind", "pet", str(cat))
    assert status == 0 and out.endswith("(pet)\n")

    # Two people: refused as creation would, in JSON too.
    status, out = _check(
        capsys, "--json", "--kind", "person", str(person_1), str(person_2), str(hopper)
    )
    verdicts = json.loads(out)
    assert status == 1
    assert [(v["ok"], v["reason"]) for v in verdicts] == [
        (True, None),
        (True, None),
        (False, "different_person"),
    ]
    assert verdicts[2]["message"] == (
        "`grace_hopper.jpg` shows a different person than the other photos."
    )
    assert all(v["kind"] == "person" and isinstance(v["warnings"], list) for v in verdicts)
    status, out = _check(capsys, "--json", "--kind", "person", str(person_1), str(hopper))
    assert status == 1
    assert {v["reason"] for v in json.loads(out)} == {"different_person"}
