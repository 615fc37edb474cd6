"""`avatarbot config` shows guidance and steps as renders use them (issue 24: it showed the
setting's ``default_guidance`` 6.0 where tiny-flux2 renders at 1.0)."""

from __future__ import annotations

import json

import pytest

from bot.cli import main


def _engine(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["config"]) == 0
    shown: dict[str, object] = json.loads(capsys.readouterr().out)["engine"]
    return shown


@pytest.mark.parametrize(
    ("profile", "guidance", "steps"), [("tiny", 6.0, 4), ("tiny-flux2", 1.0, 4)]
)
def test_config_shows_the_profile_s_guidance_and_steps_when_unset(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    profile: str,
    guidance: float,
    steps: int,
) -> None:
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", profile)
    monkeypatch.delenv("AVATARBOT_ENGINE__DEFAULT_GUIDANCE", raising=False)
    monkeypatch.delenv("AVATARBOT_ENGINE__DEFAULT_STEPS", raising=False)
    shown = _engine(capsys)
    assert (shown["default_guidance"], shown["default_steps"]) == (guidance, steps)


def test_config_shows_the_operator_s_guidance_and_steps_when_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AVATARBOT_ENGINE__PROFILE", "tiny-flux2")
    monkeypatch.setenv("AVATARBOT_ENGINE__DEFAULT_GUIDANCE", "3.5")
    monkeypatch.setenv("AVATARBOT_ENGINE__DEFAULT_STEPS", "9")
    shown = _engine(capsys)
    assert (shown["default_guidance"], shown["default_steps"]) == (3.5, 9)
