"""`avatarbot doctor` as a real subprocess: passes on a fresh setup with the tiny profile, fails
naming the cause for a real profile without weights and for an unreachable database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli.doctor_cmd import token_problem

CLI = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]


def _doctor(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARBOT_", "HF_"))}
    base.update(
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        # Random weights, named explicitly (the default profile is a real one).
        AVATARBOT_ENGINE__PROFILE="tiny",
        # An empty Hugging Face cache: nothing is downloaded, nothing is found.
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    base.update(env)
    return subprocess.run(
        [*CLI, "doctor"],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _lines(proc: subprocess.CompletedProcess[str], status: str) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith(status)]


def test_passes_on_a_fresh_setup_with_the_tiny_profile(tmp_path: Path) -> None:
    proc = _doctor(tmp_path, AVATARBOT_ENGINE__PROFILE="tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not _lines(proc, "fail")
    names = {line.split()[1] for line in proc.stdout.splitlines()[:-1]}
    assert {"python", "torch", "profile", "device", "weights", "safety", "database"} <= names
    # Random weights and no token are warnings, so the last line says so, not "all passed".
    (profile,) = [line for line in proc.stdout.splitlines() if line.split()[1] == "profile"]
    assert profile.startswith("warn") and "noise" in profile and "--allow-noise" in profile
    assert "all checks passed" not in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("doctor: no check failed, ")
    # It changed nothing: the SQLite database is not created by the doctor.
    assert not (tmp_path / "data" / "avatarbot.db").exists()


def test_passes_on_a_migrated_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env["AVATARBOT_DATA_DIR"] = str(tmp_path / "data")
    subprocess.run(
        [*CLI, "db", "upgrade"],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    proc = _doctor(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (database,) = [line for line in proc.stdout.splitlines() if " database " in f" {line} "]
    assert database.startswith("ok") and "(head)" in database


def test_fails_for_a_real_profile_without_weights(tmp_path: Path) -> None:
    proc = _doctor(
        tmp_path,
        AVATARBOT_ENGINE__PROFILE="sd15-ip-adapter-plus-face",
        AVATARBOT_ENGINE__OFFLINE="true",
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    failures = _lines(proc, "fail")
    assert failures and all(" weights " in line for line in failures)
    text = "\n".join(failures)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in text
    assert "h94/IP-Adapter" in text
    assert "run `avatarbot weights download sd15-ip-adapter-plus-face`" in text
    # Nothing was downloaded into the (empty) cache.
    hub = tmp_path / "hf" / "hub"
    assert not hub.exists() or not any(hub.glob("models--*/snapshots/*/*"))


def test_fails_for_an_unreachable_database(tmp_path: Path) -> None:
    proc = _doctor(tmp_path, AVATARBOT_DATABASE_URL="postgresql+asyncpg://u:secret@127.0.0.1:1/x")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (failure,) = _lines(proc, "fail")
    assert " database " in failure and "127.0.0.1" in failure
    assert "secret" not in proc.stdout + proc.stderr


def test_a_bad_token_fails_without_being_printed(tmp_path: Path) -> None:
    token = "not-a-token-at-all"
    proc = _doctor(tmp_path, AVATARBOT_DISCORD_TOKEN=token)
    assert proc.returncode == 1
    (failure,) = _lines(proc, "fail")
    assert " token " in failure
    assert token not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("token", "ok"),
    [
        # The shape of a real token (made up): base64 user id, timestamp, HMAC.
        ("MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbcde.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN", True),
        ("Bot MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbcde.abcdefghijklmnopqrstuvwxyz", False),
        ("abc.def", False),
        ("aGVsbG8.GAbcde.abcdefghijklmnop", False),  # "hello" is not a user id
        ("MTIz.GA+bcde.abc", False),
    ],
)
def test_token_shape(token: str, ok: bool) -> None:
    assert (token_problem(token) is None) is ok


def test_names_a_flux2_folder_without_its_transformer(tmp_path: Path) -> None:
    folder = tmp_path / "klein"
    index = {"transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "X"]}
    (folder / "vae").mkdir(parents=True)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (folder / "transformer").mkdir()
    (folder / "model_index.json").write_text(json.dumps(index))
    proc = _doctor(
        tmp_path,
        AVATARBOT_ENGINE__PROFILE="flux2-klein-4b",
        AVATARBOT_ENGINE__BASE_MODEL=str(folder),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (failure,) = _lines(proc, "fail")
    assert "missing transformer" in failure

    single = tmp_path / "klein.safetensors"
    single.write_bytes(b"weights")
    proc = _doctor(
        tmp_path,
        AVATARBOT_ENGINE__PROFILE="flux2-klein-4b",
        AVATARBOT_ENGINE__BASE_MODEL=str(single),
    )
    assert proc.returncode == 1
    assert "diffusers folder or hub id" in "\n".join(_lines(proc, "fail"))
