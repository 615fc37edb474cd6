"""The architecture's one-way dependencies, checked in fresh interpreters
(docs/architecture.md#the-layering-rules).

`engine` must not load discord or db; `bot.services` must not load discord or torch-side
libraries; `bot.ui` (shared Discord helpers) must not load a feature's cog or the model stack.
A fresh interpreter per check, so earlier imports in this process cannot hide a leak. And the
scale-out bot (``run_worker=false``), built and set up for real, never imports torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

# Tarjan's circles, with its own test that it finds them (bench's import rule uses it too).
from tests.bench.test_bench_imports import circles

FORBIDDEN = {
    "engine": {"discord", "db", "bot"},
    "bot.services": {"discord", "torch", "diffusers", "transformers"},
    "bot.ui": {"torch", "diffusers", "transformers", "bot.cogs"},
    "db": {"discord", "torch", "diffusers", "transformers", "engine", "bot"},
    # The shared kinds sit below every layer: the standard library only.
    "kinds": {"discord", "torch", "sqlalchemy", "pydantic", "PIL", "db", "engine", "bot"},
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


# -- rules read from the import statements ---------------------------------------------------
# A fresh interpreter shows what a package loads, not what it names: an import under
# ``TYPE_CHECKING`` or inside a function ties the layers together all the same (bot.ui.jobs
# named bot.app that way, a circle). These rules read every import statement of the product
# packages, wherever it stands.

PRODUCT = ("bot", "engine", "db", "kinds")


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, root: Path = Path()) -> set[str]:
    """Every module ``path`` (relative to ``root``) imports (``from a.b import c`` names both
    ``a.b`` and ``a.b.c``: ``c`` may be a submodule), relative imports made absolute."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse((root / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_import_reader_sees_every_import_statement(tmp_path: Path) -> None:
    """The static rules can fail: imports under TYPE_CHECKING, inside a function and relative
    ones are all read, relative ones made absolute."""
    package = tmp_path / "bot" / "ui"
    package.mkdir(parents=True)
    source = package / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bot.app import AvatarBot\n"
        "def f():\n"
        "    import db.models\n"
        "from ..cogs import render\n"
        "from . import waker\n"
    )
    found = _imported(source.relative_to(tmp_path), root=tmp_path)
    assert {"bot.app", "db.models", "bot.cogs.render", "bot.ui.waker"} <= found


def _sources(package: str) -> list[Path]:
    return sorted(Path(*package.split(".")).rglob("*.py"))


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# package -> modules its code must not import, in any import statement.
STATIC_FORBIDDEN = {
    # Shared Discord helpers: storage goes through the services, and the bot and its features
    # are built on ui, never the other way round.
    "bot.ui": ("db", "bot.app", "bot.cogs", "bot.cli"),
    "db": ("bot", "engine", "discord"),
    "engine": ("bot", "db", "discord"),
    "kinds": ("bot", "db", "engine", "discord", "sqlalchemy", "torch", "pydantic"),
}


@pytest.mark.parametrize("package", sorted(STATIC_FORBIDDEN))
def test_package_names_no_forbidden_module(package: str) -> None:
    sources = _sources(package)
    assert sources, f"no package {package} in the checkout"
    found = sorted(
        f"{path}: {name}"
        for path in sources
        for name in _imported(path)
        if _within(name, STATIC_FORBIDDEN[package])
    )
    assert not found, f"{package} imports what its layer must not: {found}"


# What the services may import from bot/: themselves and the foundation modules. Operations
# code (metrics) comes in through a port (bot/services/metrics_port.py).
SERVICES_MAY_IMPORT = ("bot.services", "bot.config", "bot.errors")


def test_services_import_nothing_from_bot_outside_services_and_foundation() -> None:
    found = sorted(
        f"{path}: {name}"
        for path in _sources("bot.services")
        for name in _imported(path)
        if _within(name, ("bot",)) and name != "bot" and not _within(name, SERVICES_MAY_IMPORT)
    )
    assert not found, f"bot.services imports from bot/ outside its layer: {found}"


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for package in PRODUCT for path in _sources(package)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_circles_in_product_code() -> None:
    found = circles(_import_graph())
    assert not found, f"import circles (any import statement, TYPE_CHECKING included): {found}"


def test_the_personalizer_interface_does_not_import_the_pipeline() -> None:
    # The last circle, gone: the SD1.5 denoising loop (engine.pipeline) builds on the interface
    # (engine.personalizers.base), never the other way. Checked on the graph the circle test
    # reads, so that test cannot pass on a graph that misses these modules' imports.
    graph = _import_graph()
    assert "engine.personalizers.base" in graph["engine.pipeline"]
    assert "engine.pipeline" not in graph["engine.personalizers.base"]


# -- the shared kinds, defined once and compared as enums --------------------------------------

SHARED_KINDS = ("JobStatus", "JobKind", "AvatarStatus", "SubjectKind", "UnknownPersonalizer")
# Former second definitions, by the names they had.
FORMER_NAMES = ("AvatarKind", "ConceptKind")


def test_the_shared_kinds_are_defined_only_in_kinds() -> None:
    found = sorted(
        f"{path}:{node.lineno}: {node.name}"
        for package in ("bot", "engine", "db", "migrations")
        for path in _sources(package)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.name in (*SHARED_KINDS, *FORMER_NAMES)
    )
    assert not found, f"a shared kind defined again outside kinds/: {found}"


def _kind_values() -> set[str]:
    from kinds import AvatarStatus, JobKind, JobStatus, SubjectKind

    return {str(v) for kind in (JobStatus, JobKind, AvatarStatus, SubjectKind) for v in kind}


def _string_constants(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _string_constants(element)]
    return []


def _names_a_kind(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name.endswith(("status", "kind"))


def test_no_status_or_kind_is_compared_as_a_string() -> None:
    """``job.status == "done"`` keeps working when the enum's value changes and a typo
    compares False forever; the enum cannot drift."""
    values = _kind_values()
    found = []
    for package in ("bot", "engine", "db"):
        for path in _sources(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Compare):
                    continue
                operands = [node.left, *node.comparators]
                if any(_names_a_kind(o) for o in operands) and any(
                    s in values for o in operands for s in _string_constants(o)
                ):
                    found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not found, f"statuses or kinds compared as strings: {found}"
