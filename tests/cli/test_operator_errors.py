"""Every operator mistake of issue 13 ends in a line or two on stderr, never a traceback.

Each case runs ``python -m bot ...`` as a subprocess, as an operator would, with a clean
``AVATARBOT_*`` environment (offline: no case downloads or loads a model).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_PROFILE = "sd15-ip-adapter-plus-face"
UNREACHABLE_PG = "postgresql+asyncpg://u:secret@127.0.0.1:1/x"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env.update(
        {
            "AVATARBOT_DATA_DIR": str(tmp_path / "data"),
            "AVATARBOT_ENGINE__PROFILE": "tiny",
            "AVATARBOT_ENGINE__OFFLINE": "true",
            # An empty cache: a real profile's weights are missing whatever this machine has.
            "AVATARBOT_ENGINE__CACHE_DIR": str(tmp_path / "hf-cache"),
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def _avatarbot(
    args: list[str], env: dict[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_one_clear_error(result: subprocess.CompletedProcess[str], *named: str) -> None:
    err = result.stderr
    assert result.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, err
    for text in named:
        assert text in err, err


# The commands of issue 13's list: every bad URL on the migrating commands, one on the rest.
DB_UPGRADE = ["db", "upgrade"]
WORKER = ["worker", "--allow-noise"]  # the tiny profile: random weights
BAD_URLS = {
    "nonsense": ("nonsense", "not a database URL"),
    "sync-sqlite": ("sqlite:///{tmp}/sync.db", "synchronous driver"),
    "pg-down": (UNREACHABLE_PG, "cannot reach the database"),
}
DB_CASES = [
    *((DB_UPGRADE, name) for name in BAD_URLS),
    # A worker waits for an unreachable database instead (tests/cli/test_waits_for_database.py).
    *((WORKER, name) for name in BAD_URLS if name != "pg-down"),
    (["db", "current"], "pg-down"),
    (["avatar", "list", "--user", "1"], "sync-sqlite"),
    (["avatar", "render", "--user", "1", "--avatar", "x", "--prompt", "p"], "nonsense"),
    (["job", "workers"], "pg-down"),
]


@pytest.mark.parametrize(
    ("command", "bad"), DB_CASES, ids=[f"{'-'.join(c[:2])}-{b}" for c, b in DB_CASES]
)
def test_bad_database_url_is_one_line(tmp_path: Path, command: list[str], bad: str) -> None:
    url, named = BAD_URLS[bad]
    env = _env(tmp_path, AVATARBOT_DATABASE_URL=url.format(tmp=tmp_path))
    result = _avatarbot(command, env)
    _assert_one_clear_error(result, named, "AVATARBOT_DATABASE_URL")
    assert "secret" not in result.stderr  # the password is never printed


ENGINE_COMMANDS = [
    ["worker"],
    ["avatar", "render", "--user", "1", "--avatar", "x", "--prompt", "p"],
    ["avatar", "create", "--user", "1", "--name", "x", "{photo}", "--consent"],
    ["db", "upgrade"],
    ["photo", "check", "{photo}"],
]


@pytest.mark.parametrize("command", ENGINE_COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_unknown_profile_is_one_line(tmp_path: Path, command: list[str]) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(b"")
    args = [a.format(tmp=tmp_path, photo=photo) for a in command]
    result = _avatarbot(args, _env(tmp_path, AVATARBOT_ENGINE__PROFILE="sd99"))
    _assert_one_clear_error(result, "unknown engine profile 'sd99'", "tiny")


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["avatar", "render", "--user", "1", "--avatar", "x", "--prompt", "p"],
        ["avatar", "create", "--user", "1", "--name", "x", "p.png", "--consent"],
        ["run"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_missing_weights_are_one_line_and_fast(tmp_path: Path, command: list[str]) -> None:
    env = _env(
        tmp_path,
        AVATARBOT_ENGINE__PROFILE=REAL_PROFILE,
        AVATARBOT_DISCORD_TOKEN="fake.token",
        AVATARBOT_DATA_KEY="",
    )
    env.pop("AVATARBOT_DATA_KEY")
    result = _avatarbot(command, env, timeout=30)
    _assert_one_clear_error(result, "missing", f"avatarbot weights download {REAL_PROFILE}")


def test_unknown_setting_names_the_closest(tmp_path: Path) -> None:
    env = _env(tmp_path, AVATARBOT_ENGINE__PROFLE="tiny", AVATARBOT_DATABSE_URL="x")
    result = _avatarbot(["config"], env)
    _assert_one_clear_error(
        result,
        "AVATARBOT_ENGINE__PROFLE (did you mean AVATARBOT_ENGINE__PROFILE?)",
        "AVATARBOT_DATABSE_URL (did you mean AVATARBOT_DATABASE_URL?)",
    )


def test_invalid_setting_value_is_one_line(tmp_path: Path) -> None:
    result = _avatarbot(["config"], _env(tmp_path, AVATARBOT_ENGINE__MAX_BATCH="1000"))
    _assert_one_clear_error(result, "AVATARBOT_ENGINE__MAX_BATCH")


def test_run_refuses_noise_without_the_flag(tmp_path: Path) -> None:
    env = _env(tmp_path, AVATARBOT_DISCORD_TOKEN="fake.token")
    _assert_one_clear_error(_avatarbot(["run"], env), "renders noise", "--allow-noise")


def test_avatar_render_is_validated_before_anything_loads(tmp_path: Path) -> None:
    args = ["avatar", "render", "--user", "1", "--avatar", "x", "--prompt", "p", "--count", "99"]
    result = _avatarbot(args, _env(tmp_path), timeout=10)
    _assert_one_clear_error(result, "--count must be 1 to 4")
    assert not (tmp_path / "data").exists()  # no database was even opened


@pytest.mark.parametrize(
    "command",
    [["avatar", "forget-me", "--user", "1"], ["db", "downgrade", "base"]],
    ids=["forget-me", "downgrade"],
)
def test_destructive_commands_need_yes(tmp_path: Path, command: list[str]) -> None:
    env = _env(tmp_path)
    _assert_one_clear_error(_avatarbot(command, env), "--yes")
    assert not (tmp_path / "data").exists()
    result = _avatarbot([*command, "--yes"], env)
    assert result.returncode == 0, result.stderr


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = _avatarbot(["--version"], _env(tmp_path))
    assert result.returncode == 0
    assert result.stdout.strip() == f"avatarbot {version('avatarbot')}"


def test_config_into_a_closed_pipe(tmp_path: Path) -> None:
    """`avatarbot config | head -1`: the reader leaves early; no BrokenPipe traceback."""
    config = tmp_path / "big.toml"
    words = ", ".join(f'"word{i}"' for i in range(50_000))  # more than a pipe's buffer
    config.write_text(f"prompt_blocklist = [{words}]\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(config), "config"],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(10)
    process.stdout.close()  # more than a pipe's buffer is still to be written
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert process.returncode != 0 or err == ""
