"""`./dev setup` picks the torch build for the machine (issue 24, point 4): the CUDA build where
nvidia-smi runs and lists a GPU, the CPU-only build otherwise. scripts/torch-build.sh is run
with a PATH holding only a fake nvidia-smi (or none)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "torch-build.sh"
CPU = "cpu https://download.pytorch.org/whl/cpu"
CUDA = "cuda https://download.pytorch.org/whl/cu128"
BASH = shutil.which("bash") or "/bin/bash"

# What nvidia-smi -L prints, and its exit status, on each kind of machine.
GPU_BOX = 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0a1b2c3d)"'
NO_DRIVER = (
    'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9'
)
NO_DEVICE = 'echo "No devices found."'


def _choose(tmp_path: Path, nvidia_smi: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    fakes = tmp_path / "bin"
    fakes.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        fake = fakes / "nvidia-smi"
        fake.write_text(f"#!{BASH}\n{nvidia_smi}\n")
        fake.chmod(0o755)
    return subprocess.run(
        [BASH, str(SCRIPT)],
        env={"PATH": str(fakes), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("nvidia_smi", "expected"),
    [(GPU_BOX, CUDA), (None, CPU), (NO_DRIVER, CPU), (NO_DEVICE, CPU)],
    ids=["gpu", "no-nvidia-smi", "no-driver", "no-device"],
)
def test_the_build_follows_the_gpu(tmp_path: Path, nvidia_smi: str | None, expected: str) -> None:
    proc = _choose(tmp_path, nvidia_smi)
    assert (proc.returncode, proc.stdout.strip()) == (0, expected), proc.stderr


def test_the_operator_can_force_a_build(tmp_path: Path) -> None:
    assert _choose(tmp_path, GPU_BOX, AVATARBOT_TORCH_BUILD="cpu").stdout.strip() == CPU
    assert _choose(tmp_path, None, AVATARBOT_TORCH_BUILD="cuda").stdout.strip() == CUDA
    wrong = _choose(tmp_path, None, AVATARBOT_TORCH_BUILD="rocm")
    assert wrong.returncode == 2 and "cpu or cuda" in wrong.stderr and not wrong.stdout


@pytest.mark.parametrize(
    ("nvidia_smi", "index", "said", "spec"),
    [
        (GPU_BOX, "https://download.pytorch.org/whl/cu128", "CUDA build, roughly 3.5 GB", ""),
        (NO_DRIVER, "https://download.pytorch.org/whl/cpu", "CPU-only build, about 0.2 GB", "+cpu"),
    ],
    ids=["gpu", "cpu"],
)
def test_dev_setup_installs_the_chosen_build_and_says_which(
    tmp_path: Path, nvidia_smi: str, index: str, said: str, spec: str
) -> None:
    """``./dev setup`` against a venv whose python only records what it is asked (torch
    absent): torch comes pinned from the chosen index, before the project, with one line."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    python = venv / "bin" / "python"
    python.write_text(
        f"#!{BASH}\n"
        f'echo "$*" >> {calls}\n'
        # `python -c 'import torch'`: not installed yet.
        '[ "$1" = -c ] && [ "$2" = "import torch" ] && exit 1\n'
        "exit 0\n"
    )
    python.chmod(0o755)
    _choose(tmp_path, nvidia_smi)  # writes the fake nvidia-smi
    proc = subprocess.run(
        [BASH, str(REPO / "dev"), "setup"],
        env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "AVATARBOT_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stderr and "torch 2.13.0" in proc.stderr
    pip = [line for line in calls.read_text().splitlines() if line.startswith("-m pip install")]
    # Linux (CI): the CPU build by its local label, so PyPI's CUDA torch never stands in.
    assert pip[1] == f"-m pip install -q torch==2.13.0{spec} --extra-index-url {index}"
    assert "-c constraints.txt" in pip[2]  # the project after torch


def test_dev_installs_torch_from_the_chosen_index() -> None:
    """./dev asks the script and passes its index to pip; the CUDA index is the one the
    Dockerfile and the README use."""
    dev = (REPO / "dev").read_text()
    assert "scripts/torch-build.sh" in dev
    assert '--extra-index-url "$index"' in dev
    assert (
        "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128"
        in (REPO / "Dockerfile").read_text()
    )
