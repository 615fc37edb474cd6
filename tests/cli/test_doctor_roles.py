"""`avatarbot doctor --role worker|bot` checks what that process needs; the last line never says
"all checks passed" beside a warning (issue 24, points 2 and 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli.doctor_cmd import Check, Role, run_checks, summary
from bot.config import Settings
from engine.config import EngineSettings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbcde.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
KEY = "A" * 43 + "="
ENGINE_CHECKS = {"torch", "profile", "device", "weights", "faces", "safety", "screen"}


def _checks(tmp_path: Path, role: Role | None, **values: object) -> dict[str, Check]:
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(profile="tiny", offline=True),
        **values,  # type: ignore[arg-type]
    )
    return {c.name: c for c in run_checks(settings, role)}


def test_a_worker_needs_the_engine_and_no_token(tmp_path: Path) -> None:
    checks = _checks(tmp_path, "worker", data_key=KEY)
    assert ENGINE_CHECKS | {"python", "database", "data key", "token"} == checks.keys()
    assert checks["token"].status == "ok"
    holding = _checks(tmp_path, "worker", data_key=KEY, discord_token=TOKEN)["token"]
    assert holding.status == "fail" and "worker.env" in holding.fix


def test_a_bot_that_only_queues_needs_its_token_and_the_database(tmp_path: Path) -> None:
    checks = _checks(tmp_path, "bot", run_worker=False)
    assert checks.keys() == {"python", "database", "data key", "token"}
    assert checks["token"].status == "fail" and "AVATARBOT_DISCORD_TOKEN" in checks["token"].fix
    assert _checks(tmp_path, "bot", run_worker=False, discord_token=TOKEN)["token"].status == "ok"


def test_a_bot_that_renders_also_needs_the_engine(tmp_path: Path) -> None:
    checks = _checks(tmp_path, "bot", run_worker=True, discord_token=TOKEN)
    assert checks.keys() >= ENGINE_CHECKS and checks["token"].status == "ok"


def test_no_role_checks_everything_and_only_warns_on_a_missing_token(tmp_path: Path) -> None:
    checks = _checks(tmp_path, None)
    assert ENGINE_CHECKS | {"python", "database", "data key", "token"} == checks.keys()
    assert checks["token"].status == "warn"


def test_random_weights_are_a_warning_and_real_ones_are_not(tmp_path: Path) -> None:
    assert _checks(tmp_path, "worker")["profile"].status == "warn"
    real = Settings(data_dir=tmp_path, engine=EngineSettings(offline=True))
    [profile] = [c for c in run_checks(real, "worker") if c.name == "profile"]
    assert profile.status == "ok" and "sd15-ip-adapter-plus-face" in profile.detail


@pytest.mark.parametrize(
    ("failed", "warned", "expected"),
    [
        (0, 0, "doctor: all checks passed"),
        (0, 1, "doctor: no check failed, 1 warning (exit 0)"),
        (0, 2, "doctor: no check failed, 2 warnings (exit 0)"),
        (1, 0, "doctor: 1 check failed, 0 warnings (exit 1)"),
        (2, 3, "doctor: 2 checks failed, 3 warnings (exit 1)"),
    ],
)
def test_the_last_line_counts_failures_and_warnings(
    failed: int, warned: int, expected: str
) -> None:
    assert summary(failed, warned) == expected


def test_a_worker_host_with_the_example_env_file_passes(tmp_path: Path) -> None:
    """deploy/worker.env.example as an operator fills it in, blank token line included, on the
    tiny profile: no check fails, and the empty token is neither required nor "set"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATARBOT_", "HF_"))}
    env.update(
        AVATARBOT_DISCORD_TOKEN="",
        AVATARBOT_DATA_KEY=KEY,
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        AVATARBOT_ENGINE__PROFILE="tiny",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "doctor", "--role", "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if line.startswith("fail")]
    (token,) = [line for line in lines if line.split()[1] == "token"]
    assert token.startswith("ok") and "a worker needs none" in token


def test_the_exit_rule_is_said_once_and_the_same_in_the_readme() -> None:
    from bot.cli.doctor_cmd import EXIT_RULE

    readme = " ".join((REPO / "README.md").read_text().split()).lower()
    assert readme.count(EXIT_RULE) == 2  # "Deploying" and "Watching it"
    for older in ("exits 0 only when all pass", "exit status is 0 when nothing fails"):
        assert older not in readme


def test_an_unknown_profile_is_one_failed_line_naming_the_setting(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, engine=EngineSettings(profile="sd99"))
    [profile] = [c for c in run_checks(settings, "worker") if c.name == "profile"]
    assert profile.status == "fail" and "sd99" in profile.detail
    assert profile.fix == "set AVATARBOT_ENGINE__PROFILE"
