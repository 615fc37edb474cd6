"""No noise in production (issue 24, point 2): `run` and `worker` default to a real profile and
refuse a random-weights one without --allow-noise, with the same one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AVATARBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AVATARBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AVATARBOT_LOG_LEVEL", "ERROR")


def test_the_default_profile_has_real_weights() -> None:
    from engine.profiles import resolve_profile

    assert not resolve_profile(Settings.load().engine).is_noise


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["worker"], {}),
        # A bot renders only in embedded mode (AVATARBOT_RUN_WORKER=true, the default).
        (["run"], {"AVATARBOT_DISCORD_TOKEN": "fake.token"}),
    ],
    ids=["worker", "run"],
)
@pytest.mark.parametrize("profile", ["tiny", "sd15-shaped"])
def test_random_weights_are_refused_without_the_flag(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
    env: dict[str, str],
    profile: str,
) -> None:
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", profile)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"avatarbot {command[0]}: profile {profile} has random weights" in err
    assert "AVATARBOT_ENGINE__PROFILE" in err and "--allow-noise" in err
    assert not (tmp_path / "data").exists()  # refused before any database was opened


def test_the_flag_lets_random_weights_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.cli.noise_guard import refuse_noise

    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    settings = Settings.load()
    assert refuse_noise(settings, "worker", allow_noise=True) is None
    assert refuse_noise(settings, "worker", allow_noise=False) == 2


def test_a_bot_that_only_queues_is_not_refused_for_its_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run` with separate workers renders nothing itself: the profile is not its to refuse."""
    from argparse import Namespace

    from pydantic import SecretStr

    from bot.cli import run_cmd

    started: list[Settings] = []

    async def start(given: Settings) -> int:
        started.append(given)
        return 0

    monkeypatch.setattr(run_cmd, "_main", start)
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny")
    settings = Settings.load(run_worker=False, discord_token=SecretStr("x.y.z"))
    assert run_cmd.run(Namespace(allow_noise=False), settings) == 0
    assert started == [settings]
