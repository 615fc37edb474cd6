"""What a new member notices first (issue 13, point 7): the progress message moves and reads
well, a reset time is said once, and the aspect choices say the shape they produce.

Progress moving past 0 % is checked in real time with a worker process
(tests/bot/test_scaleout.py): SimCord's virtual clock does not tick the lease keeper's timer
while the bot's own engine thread renders, so an embedded-mode check cannot be made here."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from discord import app_commands

from bot.cli import build_parser
from bot.cogs.render.cog import ASPECT_CHOICES
from bot.services.prompts import size_for
from bot.ui.transcript import Shown, Step, write_transcript
from tests.fixtures.discord import SIMCORD, World

README = Path(__file__).parents[2] / "README.md"


@pytest.mark.parametrize("native", [256, 512, 768])
def test_aspect_labels_match_the_sizes_produced(native: int) -> None:
    for choice in ASPECT_CHOICES:
        width, height = size_for(choice.value, native, 4096)  # type: ignore[arg-type]
        match = re.search(r"\((\d+):(\d+)\)", choice.name)
        if match is None:
            assert choice.value == "square" and width == height
            continue
        assert abs(width / height - int(match[1]) / int(match[2])) < 0.03, (choice, width, height)


def test_the_demo_transcript_renders_the_progress_markdown_and_says_a_time_once(
    tmp_path,
) -> None:
    resets = datetime(2026, 1, 2, tzinfo=UTC)
    step = Step(title="Render", action="/avatar render")
    step.progress = ["Queued — you're next.", r"Rendering **My\_Mug** — ▰▱ 50%"]
    step.shown.append(
        Shown(
            content=f"No renders left. It resets <t:{int(resets.timestamp())}:R>.",
            ephemeral=True,
        )
    )
    page = write_transcript(tmp_path / "t.html", [step]).read_text()
    assert "Rendering <b>My_Mug</b>" in page and "**" not in page
    assert page.count("2026-01-02 00:00 UTC") == 1
    assert 'resets <span class="mention">at 2026-01-02 00:00 UTC</span>.' in page


@SIMCORD
async def test_member_usage_says_when_it_resets_once(world: World) -> None:
    usage = await world.alice.slash(world.channel, "avatar usage")
    assert len(re.findall(r"<t:\d+", usage.response.content)) == 1, usage.response.content


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _subcommands(sub, f"{prefix} {name}")
                out += nested or [f"{prefix} {name}"]
    return out


def test_the_readme_lists_every_cli_command() -> None:
    readme = README.read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `avatarbot ")]
    listed = set()
    for row in rows:
        command = row.split("`")[1].split()
        for leaf in command[-1].replace("\\|", "|").split("|"):
            listed.add(" ".join([*command[:-1], leaf]))
    missing = [c for c in _subcommands(build_parser(), "avatarbot") if c not in listed]
    assert missing == []
    assert "avatarbot --version" in listed


@SIMCORD
async def test_the_readme_lists_every_slash_command(world: World) -> None:
    table = "\n".join(line for line in README.read_text().splitlines() if line.startswith("| `/"))
    missing = []
    for command in world.bot.tree.walk_commands():
        if isinstance(command, app_commands.Command):
            leaf = command.name
            if not re.search(rf"(?<![\w-]){re.escape(leaf)}(?![\w-])", table):
                missing.append(command.qualified_name)
    assert missing == []
