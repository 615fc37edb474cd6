"""What a member's server installs: the runtime wheel (`pip install .`, distribution avatarbot)
holds bot, engine, db and migrations and no research code; the research code (the toy world,
the evaluation grid, InstantBooth's trainer, the bodies of `avatarbot eval` and `avatarbot
train`) ships only in the avatarbot-research wheel built from research/. Both wheels are
really built (pip, setuptools, no network) from a copy of the checkout, so the check reads
what pip would install, not what the configuration is meant to say."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Where research code lived inside the runtime before it moved to research/ (issue 22), and
# the research package itself: none of it may come back into the runtime wheel.
RESEARCH_IN_RUNTIME = (
    "avatarbot_research/",
    "research/",
    "engine/toyworld/",
    "engine/evaluation/",
    "engine/personalizers/instantbooth/trainer.py",
    "engine/personalizers/instantbooth/dataset.py",
    "engine/personalizers/instantbooth/validation.py",
)


def _checkout_copy(dest: Path) -> Path:
    """The checkout without its hidden folders (.git, .venv, caches) and build leftovers."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.endswith(".egg-info") or n in {"build", "__pycache__"}}
        if Path(folder) == ROOT:
            skip |= {n for n in names if n.startswith(".")}
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _wheel_files(source: Path, out: Path) -> list[str]:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", str(source), "-w", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkout_copy(tmp_path_factory.mktemp("checkout") / "avatarbot")


def test_the_runtime_wheel_holds_no_research_code(
    checkout: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = _wheel_files(checkout, tmp_path_factory.mktemp("runtime-wheel"))
    for present in ("bot/cli/__init__.py", "engine/engine.py", "db/models.py", "migrations/env.py"):
        assert present in files  # the wheel really is the runtime
    leaked = sorted(f for f in files if f.startswith(RESEARCH_IN_RUNTIME))
    assert not leaked, f"research code in the runtime wheel: {leaked}"


def test_the_research_wheel_holds_the_research_code_and_no_runtime(
    checkout: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    files = _wheel_files(checkout / "research", tmp_path_factory.mktemp("research-wheel"))
    for present in (
        "avatarbot_research/toyworld/world.py",
        "avatarbot_research/evaluation/grid.py",
        "avatarbot_research/instantbooth/trainer.py",
        "avatarbot_research/cli/eval_cmd.py",
        "avatarbot_research/cli/train_cmd.py",
        "avatarbot_research/py.typed",
    ):
        assert present in files
    modules = sorted(f for f in files if f.endswith(".py"))
    assert all(f.startswith("avatarbot_research/") for f in modules), modules
    metadata = next(f for f in files if f.endswith(".dist-info/METADATA"))
    assert metadata.startswith("avatarbot_research-")


@pytest.mark.parametrize("module", ["bot.cli.eval_cmd", "bot.cli.train_cmd"])
def test_the_runtime_cli_keeps_only_the_arguments(module: str) -> None:
    """`avatarbot eval` and `avatarbot train` stay registered in the runtime (their --help
    works without the research package) but their bodies are research code."""
    cli = __import__(module, fromlist=["register"])
    own = {
        name
        for name, value in vars(cli).items()
        if inspect.isfunction(value) and value.__module__ == module
    }
    assert own == {"register"}
