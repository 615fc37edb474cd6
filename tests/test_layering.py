"""The architecture's one-way dependencies, checked in fresh interpreters
(docs/architecture.md#the-layering-rules).

`engine` must not load discord or db; `bot.services` must not load discord or torch-side
libraries; `bot.ui` (shared Discord helpers) must not load a feature's cog or the model stack.
A fresh interpreter per check, so earlier imports in this process cannot hide a leak. And the
scale-out bot (``run_worker=false``), built and set up for real, never imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = {
    "engine": {"discord", "db", "bot"},
    "bot.services": {"discord", "torch", "diffusers", "transformers"},
    "bot.ui": {"torch", "diffusers", "transformers", "bot.cogs"},
    "db": {"discord", "torch", "diffusers", "transformers", "engine"},
    "bot.errors": {"discord", "torch"},
    "bot.config": {"discord", "torch"},
}


def _loaded_after_import(module: str) -> set[str]:
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"pkg = importlib.import_module({module!r})\n"
        "for info in pkgutil.walk_packages(getattr(pkg, '__path__', []), pkg.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        "names = set()\n"
        "for m in sys.modules:\n"
        "    parts = m.split('.')\n"
        "    names.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1))\n"
        "print(json.dumps(sorted(names)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_package_does_not_load_forbidden_modules(module: str) -> None:
    leaked = _loaded_after_import(module) & FORBIDDEN[module]
    assert not leaked, f"importing {module} (and all its submodules) loaded {sorted(leaked)}"


SPLIT_BOT = """
import asyncio, json, sys
import simcord
from bot.app import create_bot
from bot.config import Settings

async def main():
    settings = Settings(
        data_dir=sys.argv[1], database_url=f"sqlite+aiosqlite:///{sys.argv[1]}/bot.db",
        run_worker=False,
    )
    bot = create_bot(settings)
    async with simcord.run(bot) as env:
        guild = env.create_guild(name="g")
        channel = guild.create_text_channel("c")
        member = guild.add_member(env.create_user("m"))
        listed = await member.slash(channel, "avatar list")
        shown = listed.response.content
        engine = bot.services.engine
    heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    print(json.dumps({"heavy": heavy, "shown": shown, "engine": engine is not None}))

asyncio.run(main())
"""


def test_the_scale_out_bot_never_imports_torch(tmp_path: Path) -> None:
    """The bot with ``run_worker=false``, set up on SimCord and answering a command, in a
    fresh interpreter: no torch, diffusers or transformers in ``sys.modules``."""
    out = subprocess.run(
        [sys.executable, "-c", SPLIT_BOT, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"heavy": [], "shown": result["shown"], "engine": False}
    assert result["shown"].startswith("You have no avatar")


# Research code (issue 22): its own distribution, avatarbot_research, which may import the
# runtime; the runtime never imports it, nor research code at its old places in the engine.
RESEARCH_MODULES = {
    "avatarbot_research",
    "engine.toyworld",
    "engine.evaluation",
    "engine.personalizers.instantbooth.trainer",
    "engine.personalizers.instantbooth.dataset",
    "engine.personalizers.instantbooth.validation",
}


def test_the_runtime_never_loads_research_code() -> None:
    """Every module of bot, engine and db imported in one fresh interpreter (but
    ``bot.__main__``, which runs the CLI)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "for name in ('bot', 'engine', 'db'):\n"
        "    pkg = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        if not info.name.endswith('.__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    leaked = sorted(m for m in loaded if m.split(".")[0] == "avatarbot_research") + sorted(
        loaded & RESEARCH_MODULES
    )
    assert not leaked, f"importing bot, engine and db (every submodule) loaded {leaked}"
