"""With ``--log-format json`` every line on stderr is a JSON object (issue 24): Python
warnings and the model libraries' own log lines included, in a process that loads the engine
as the worker does (``EngineAdapter.create``) at the most verbose level, and in a CLI command
that loads one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.services import make_photo

ROOT = Path(__file__).resolve().parents[2]

_PROCESS = """
import asyncio, logging, warnings
from bot.ops.logs import configure
configure("DEBUG", "json")
from bot.engine_adapter import EngineAdapter
from engine.config import EngineSettings

adapter = asyncio.run(EngineAdapter.create(EngineSettings(profile="tiny")))
warnings.warn("a library's warning", UserWarning, stacklevel=1)
import diffusers.utils.logging, transformers.utils.logging
transformers.utils.logging.get_logger("transformers.probe").warning("transformers says")
diffusers.utils.logging.get_logger("diffusers.probe").warning("diffusers says")
asyncio.run(adapter.aclose())
"""


def test_every_line_is_json_with_warnings_and_library_logs() -> None:
    # Not this test process's environment as it stands: an in-process `avatarbot` command run
    # by an earlier test sets TRANSFORMERS_VERBOSITY/DIFFUSERS_VERBOSITY=error in it.
    quiet = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")
    proc = subprocess.run(
        [sys.executable, "-c", _PROCESS],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in quiet},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    assert plain == []
    records = [json.loads(line) for line in lines]
    said = {(r["logger"], r["level"]): r["message"] for r in records}
    assert "a library's warning" in said[("py.warnings", "WARNING")]
    assert said[("transformers.probe", "WARNING")] == "transformers says"
    assert said[("diffusers.probe", "WARNING")] == "diffusers says"
    assert ("engine.engine", "INFO") in said  # the engine's own lines, as before


def test_a_cli_command_that_loads_the_engine_logs_only_json(tmp_path: Path) -> None:
    """``avatarbot --log-format json -v avatar create`` (the CLI runs the job itself: no
    worker): "loading engine profile" and everything else, one JSON object per line."""
    photos = []
    for i in range(2):
        path = tmp_path / f"photo{i}.png"
        path.write_bytes(make_photo(i))
        photos.append(str(path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARBOT_")}
    env.update(
        AVATARBOT_DATA_DIR=str(tmp_path / "data"),
        AVATARBOT_ENGINE__PROFILE="tiny",
        AVATARBOT_ENGINE__OFFLINE="true",
        PYTHONWARNINGS="always",  # a warning a library raises is shown, as a log record
    )
    argv = ["--log-format", "json", "-v", "avatar", "create", "--user", "42", "--name", "Mia"]
    proc = subprocess.run(
        [sys.executable, "-m", "bot", *argv, "--kind", "object", *photos, "--consent"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == []
    messages = [json.loads(line)["message"] for line in lines]
    assert "loading engine profile tiny" in messages
