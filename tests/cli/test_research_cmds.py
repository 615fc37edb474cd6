"""`avatarbot eval` and `avatarbot train` on a server without the research package
(avatarbot-research): their help still works, and running one says how to install the package
in one line on stderr with exit status 2, before anything loads. Each case runs in a fresh
interpreter where importing ``avatarbot_research`` fails as it does when it is not installed
(``None`` in ``sys.modules``). With the package, tests/research/ runs both commands for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_RESEARCH = (
    "import sys\n"
    "sys.modules['avatarbot_research'] = None\n"
    "from bot.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _avatarbot(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AVATARBOT_DATA_DIR": str(tmp_path / "data"),
        "AVATARBOT_ENGINE__PROFILE": "tiny",
    }
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RESEARCH, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["eval", "--photos", "refs", "--out", "out"], "eval"),
        (["train", "instantbooth", "--data", "data", "--out", "out", "--profile", "tiny"], "train"),
    ],
)
def test_without_the_research_package_the_command_says_how_to_install_it(
    argv: list[str], command: str, tmp_path: Path
) -> None:
    done = _avatarbot(argv, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"avatarbot {command}: needs the research package, which is not installed: "
        "pip install . ./research (from the avatarbot checkout)"
    ]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["eval", "--help"], "--personalizer"), (["train", "instantbooth", "--help"], "--steps")],
)
def test_without_the_research_package_the_help_still_works(
    argv: list[str], option: str, tmp_path: Path
) -> None:
    done = _avatarbot(argv, tmp_path)
    assert done.returncode == 0, done.stderr
    assert option in done.stdout
    assert "pip install . ./research" in " ".join(done.stdout.split())  # how to get the body
